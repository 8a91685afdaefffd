"""Encoders (CTR-GCN, 2s-AGCN, HCN): official state_dict layout, outputs equal to the reference fixtures,
the features/head contract, and training on NTU and NW-UCLA shapes.

Fixture tests run once per ``*.pt`` anywhere under ``$CSRE_REFERENCE_DIR/encoders`` whose ``encoder``
field is implemented here; the model is built from the fixture's own ``kwargs``, so held-out cases
(other layouts, other arguments) are checked the same way. A fixture of an encoder no test module
handles fails :func:`test_every_fixture_is_checked`. See ``encoders/README.md`` beside the fixtures
for their format; the tolerance rule is :func:`tests.models.output_mismatches`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.agcn import AGCN
from models.ctrgcn import CTRGCN
from models.encoder import Encoder
from models.hcn import HCN
from models.units import MultiScaleTemporalConv, UnitTCN
from tests.conftest import fixture_params, require_fixture
from tests.models import (FIXTURE_FAMILIES, all_fixture_paths, assert_outputs_match, encoder_fixture_paths,
                          fixture_encoder, load_fixture, output_mismatches, parameters_without_gradient, perturb_parameters,
                          state)

ENCODERS: dict[str, type[Encoder]] = {"ctrgcn": CTRGCN, "agcn": AGCN, "hcn": HCN}
FAMILY = "encoders (ctrgcn, agcn, hcn)"
FIXTURES = fixture_params(encoder_fixture_paths(ENCODERS), FAMILY)

def build(fx: dict) -> Encoder:
    return ENCODERS[fx["encoder"]](**fx["kwargs"])


def model_input(fx: dict) -> Tensor:
    assert fx["input_names"] == ["x"], f"unexpected forward inputs {fx['input_names']}"
    return fx["inputs"][0]


def extras(model: Encoder, feats: Tensor, num_person: int) -> dict[str, Tensor]:
    """The outputs a fixture may list under ``eval_extra``, computed through the public API."""
    if isinstance(model, HCN):
        return {"person_max_feature": model.person_max(feats, num_person)}
    return {}


def run(model: Encoder, x: Tensor, train: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(feature map, logits, extras) through the public API."""
    model.train(train)
    with torch.no_grad():
        feats = model.features(x)
        return feats, model.head(feats, x.shape[-1]), extras(model, feats, x.shape[-1])


# ---------------------------------------------------------------------------------------------
# Against the official implementations


@pytest.mark.reference
@pytest.mark.parametrize("path", FIXTURES)
def test_state_dict_layout(path: Path | None) -> None:
    fx = load_fixture(require_fixture(path, FAMILY))
    model = build(fx)
    ours, ref = model.state_dict(), fx["state_dict"]
    assert list(ours) == fx["state_dict_keys"] == list(ref)
    for k, v in ours.items():
        assert (v.shape, v.dtype) == (ref[k].shape, ref[k].dtype), k
    model.load_state_dict(ref, strict=True)
    assert sum(p.numel() for p in model.parameters()) == fx["num_params"]


@pytest.mark.reference
@pytest.mark.parametrize("path", FIXTURES)
def test_seeded_init_matches_official(path: Path | None) -> None:
    """Same seed, same random draws in the same order: the initial state equals the official bit for bit."""
    fx = load_fixture(require_fixture(path, FAMILY))
    torch.manual_seed(fx["seed"])
    ours = build(fx).state_dict()
    mismatched = [k for k, v in ours.items() if not torch.equal(v, fx["state_dict"][k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"


@pytest.mark.reference
@pytest.mark.parametrize("which", ["init", "perturbed"])
@pytest.mark.parametrize("path", FIXTURES)
def test_outputs_match_official(path: Path | None, which: str) -> None:
    """Eval and train-mode outputs under the scale-aware rule of :func:`tests.models.output_mismatches`."""
    fx = load_fixture(require_fixture(path, FAMILY))
    ref = fx if which == "init" else fx["perturbed"]
    assert set(ref.get("eval_extra", {})) <= {"person_max_feature"}, "fixture lists extras this test cannot compute"
    assert_outputs_match(build(fx), model_input(fx), fx, which, run)


@pytest.mark.reference
@pytest.mark.parametrize("path", fixture_params(all_fixture_paths(), "encoders (any)"))
def test_every_fixture_is_checked(path: Path | None) -> None:
    """Every ``*.pt`` under ``encoders/`` (recursively) is readable, names an encoder some test module
    handles, and is among that module's fixture params: a new fixture can never go unchecked."""
    path = require_fixture(path, "encoders (any)")
    error = None
    try:
        load_fixture(path)
    except Exception as e:  # noqa: BLE001 - any reason is reported
        error = f"{path}: cannot be loaded as a fixture ({type(e).__name__}: {e})"
    if error:
        pytest.fail(error)
    name = fixture_encoder(path)
    assert name is not None, f"{path}: no 'encoder' field (str); is this an encoder fixture?"
    assert name in FIXTURE_FAMILIES, (
        f"{path}: encoder {name!r} is not checked by any test (known: {', '.join(sorted(FIXTURE_FAMILIES))}); "
        f"add it to tests.models.FIXTURE_FAMILIES and a test module")
    module = importlib.import_module(FIXTURE_FAMILIES[name])
    covered = [p.values[0] for p in module.FIXTURES]
    assert path in covered, f"{path}: encoder {name!r}, but not among {module.__name__}.FIXTURES"


class _Chaotic(torch.nn.Module):
    """A toy model whose output float32 rounding moves by O(1): sin of a huge multiple of the input."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain))


def _toy_run(model: _Chaotic, x: Tensor, train: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    feats = x * model.gain  # magnitude up to ~1e3 x gain: a large, well-conditioned map
    return feats, torch.sin(feats * 1e4), {}  # logits: ill-conditioned


def test_the_rule_scales_with_the_output_and_widens_only_for_rounding() -> None:
    x = torch.linspace(-1e3, 1e3, 40).reshape(4, 10)
    model = _Chaotic(1.0)
    feats, logits, _ = _toy_run(model.double(), x.double(), False)
    # another "CPU": the exact (float64) values; eval_feature at 1e3 moves by 1e-3 element-wise,
    # more than any fixed atol of 1e-5 allows, yet within 1e-5 of its scale
    ref = {"eval_feature": (feats + 1e-3).float(), "eval_logits": logits.float()}
    assert output_mismatches(_Chaotic(1.0), x, ref, _toy_run) == []
    # beyond the scale: fails, and says why
    ref_off = dict(ref, eval_feature=(feats * (1 + 1e-4)).float())
    (problem,) = output_mismatches(_Chaotic(1.0), x, ref_off, _toy_run)
    assert problem.startswith("eval_feature: max abs diff") and "tol x max(1, max|ref|)" in problem
    # the logits are sin(1e4 x): float32 rounding alone moves them by O(1), measured against float64,
    # so only a wrong model fails there (gain 1.001 changes the well-conditioned map as well)
    wrong = output_mismatches(_Chaotic(1.001), x, ref, _toy_run)
    assert any(p.startswith("eval_feature:") for p in wrong)
    assert "float32 rounding" in output_mismatches(_Chaotic(1.0), x, dict(ref, eval_logits=ref["eval_logits"] + 10),
                                                   _toy_run)[0]


def _middle_convolution(model: torch.nn.Module) -> torch.nn.Module:
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert convs, f"{type(model).__name__} has no convolution"
    return convs[len(convs) // 2]


def _first_subset_graph(model: torch.nn.Module, num_point: int) -> tuple[str, Tensor] | None:
    """The first (K >= 2, V, V) parameter or buffer whose first two subsets differ (CTR-GCN ``PA``,
    2s-AGCN ``A``), or None."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.ndim == 3 and t.shape[0] >= 2 and t.shape[1:] == (num_point, num_point) and not torch.equal(t[0], t[1]):
            return name, t
    return None


@pytest.mark.reference
@pytest.mark.parametrize("error", ["conv_weights_x_1.001", "two_graph_subsets_swapped"])
@pytest.mark.parametrize("path", fixture_params(all_fixture_paths(), "encoders (any)"))
def test_the_comparison_catches_small_errors(path: Path | None, error: str) -> None:
    """The scale-aware rule that lets the reference move between CPUs still fails an encoder that is
    slightly wrong: one convolution's weights scaled by 1 + 1e-3, or two graph subsets swapped, in
    the loaded perturbed (non-degenerate) state."""
    fx = load_fixture(require_fixture(path, "encoders (any)"))
    module = importlib.import_module(FIXTURE_FAMILIES[fx["encoder"]])
    model, x = module.build(fx), module.model_input(fx)
    model.load_state_dict(state(fx, "perturbed"), strict=True)
    with torch.no_grad():
        if error == "conv_weights_x_1.001":
            _middle_convolution(model).weight.mul_(1 + 1e-3)
        else:
            found = _first_subset_graph(model, fx["kwargs"].get("num_point", 25))
            if found is None:
                pytest.skip(f"{fx['encoder']} has no subset-partitioned graph")
            name, A = found
            A.copy_(A[[1, 0, *range(2, A.shape[0])]])
    problems = output_mismatches(model, x, fx["perturbed"], module.run, train_seed=fx["seed"])
    assert problems, f"{error}: every output of {path.name} still passes the comparison"


def test_fixture_discovery_is_recursive_and_flags_unknown_encoders(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "encoders"
    (root / "held_out" / "ucla").mkdir(parents=True)
    nested, unknown, broken = root / "held_out" / "ucla" / "hcn_x.pt", root / "stgcn_ntu60.pt", root / "broken.pt"
    torch.save({"encoder": "hcn"}, nested)
    torch.save({"encoder": "stgcn"}, unknown)
    broken.write_text("not a fixture")
    monkeypatch.setenv("CSRE_REFERENCE_DIR", str(tmp_path))
    assert all_fixture_paths() == sorted([nested, unknown, broken])
    assert encoder_fixture_paths({"hcn"}) == [nested] and encoder_fixture_paths({"ctrgcn"}) == []
    assert (fixture_encoder(unknown), fixture_encoder(broken)) == ("stgcn", None)
    assert [p.id for p in fixture_params(all_fixture_paths(), "x")] == [
        "encoders/broken.pt", "encoders/held_out/ucla/hcn_x.pt", "encoders/stgcn_ntu60.pt"]
    with pytest.raises(AssertionError, match="'stgcn' is not checked by any test"):
        test_every_fixture_is_checked(unknown)
    with pytest.raises(pytest.fail.Exception, match="cannot be loaded as a fixture"):
        test_every_fixture_is_checked(broken)
    with pytest.raises(AssertionError, match="not among tests.models.test_encoders.FIXTURES"):
        test_every_fixture_is_checked(nested)  # collected before the directory existed
    with pytest.raises(KeyError, match="FIXTURE_FAMILIES"):
        encoder_fixture_paths({"stgcn"})


@pytest.mark.reference
@pytest.mark.parametrize("path", FIXTURES)
def test_forward_is_head_of_features(path: Path | None) -> None:
    fx = load_fixture(require_fixture(path, FAMILY))
    model = build(fx)
    model.load_state_dict(state(fx, "perturbed"), strict=True)
    x = model_input(fx)
    for train in (False, True):
        model.train(train)
        with torch.no_grad():
            torch.manual_seed(0)  # same dropout masks for both calls
            direct = model(x)
            torch.manual_seed(0)
            split = model.head(model.features(x), x.shape[-1])
        assert torch.equal(direct, split), f"train={train}"


# ---------------------------------------------------------------------------------------------
# Shapes, gradients, configurations

SHAPES = {  # name: (N, C, T, V, M), layout, num_class
    "ntu": ((2, 3, 64, 25, 2), "ntu", 60),
    "ucla": ((2, 3, 52, 20, 1), "ucla", 10),
}


def make(name: str, shape: tuple[int, ...], graph: str, num_class: int) -> Encoder:
    _, C, T, V, M = shape
    if name == "hcn":
        return HCN(in_channel=C, num_joint=V, num_person=M, window_size=T, num_class=num_class)
    return ENCODERS[name](num_class=num_class, num_point=V, num_person=M, graph=graph, in_channels=C)


@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("name", ENCODERS)
def test_trains_on_dataset_shapes(name: str, shape_name: str) -> None:
    """Forward/backward on both datasets' shapes; after :func:`perturb_parameters` (at the official init
    CTR-GCN's alpha = 0 zeroes the gradients of conv1/conv2/conv4) every parameter gets a finite,
    non-zero gradient. ``tests/models/test_gin_built.py`` does the same for models built from gin."""
    shape, graph, num_class = SHAPES[shape_name]
    torch.manual_seed(0)
    model = perturb_parameters(make(name, shape, graph, num_class)).train()
    x = 0.5 * torch.randn(shape)
    feats = model.features(x)
    N, _, T, V, M = shape
    expected_tv = (T // 16, T // 16) if name == "hcn" else (T // 4, V)
    assert feats.shape == (N * M, model.out_channels, *expected_tv)
    logits = model.head(feats, M)
    assert logits.shape == (N, num_class)
    assert (model.num_class, model.num_person) == (num_class, M)
    torch.nn.functional.cross_entropy(logits, torch.arange(N) % num_class).backward()
    assert torch.isfinite(logits).all()
    missing = parameters_without_gradient(model)
    assert not missing, f"parameters without a finite, non-zero gradient: {missing[:5]}"


@pytest.mark.parametrize("name, expected", [("ctrgcn", 1_446_672), ("agcn", 3_469_510), ("hcn", 2_647_868)])
def test_parameter_counts(name: str, expected: int) -> None:
    model = make(name, SHAPES["ntu"][0], "ntu", 60)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_fixed_graphs_are_buffers_outside_the_state_dict() -> None:
    agcn = AGCN(graph="ntu")
    assert "l1.gcn1.A" in dict(agcn.named_buffers()) and "l1.gcn1.A" not in agcn.state_dict()
    static = CTRGCN(graph="ntu", adaptive=False)
    keys = static.state_dict().keys()
    assert "l1.gcn1.PA" not in keys and "l1.gcn1.A" not in keys and "l1.gcn1.alpha" in keys
    torch.testing.assert_close(static.l1.gcn1.A, CTRGCN(graph="ntu").l1.gcn1.PA.detach(), rtol=0, atol=0)


def test_ctrgcn_accepts_flat_single_person_input() -> None:
    torch.manual_seed(0)
    model = CTRGCN(num_class=5, num_point=20, num_person=1, graph="ucla").eval()
    x = torch.randn(2, 3, 16, 20, 1)
    flat = x[..., 0].permute(0, 2, 3, 1).reshape(2, 16, 20 * 3)  # (N, T, V·C), as the official 3-D path
    with torch.no_grad():
        torch.testing.assert_close(model(flat), model(x), rtol=0, atol=0)


def test_ctrgcn_dropout_only_in_the_head() -> None:
    model = CTRGCN(graph="ntu", drop_out=0.5)
    assert isinstance(model.drop_out, torch.nn.Dropout) and "drop_out" not in str(list(model.state_dict()))


def test_hcn_merges_persons_with_elementwise_max() -> None:
    feats = torch.randn(3 * 2, 4, 2, 2)  # (N·M, C, T', W'), rows (n, m)
    merged = HCN.person_max(feats, 2)
    torch.testing.assert_close(merged, torch.max(feats[0::2], feats[1::2]), rtol=0, atol=0)
    torch.testing.assert_close(HCN.person_max(feats, 1), feats, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(graph=None), "graph is required"),
    (dict(graph="kinetics"), "unknown graph"),
    (dict(graph="ucla", num_point=25), "20 joints"),
    (dict(graph="ntu", graph_args={"labeling_mode": "uniform"}), "labeling_mode"),
])
def test_graph_arguments_are_validated(kwargs: dict, message: str) -> None:
    for cls in (CTRGCN, AGCN):
        with pytest.raises(ValueError, match=message):
            cls(**kwargs)


def test_multiscale_tcn_shapes_and_residual() -> None:
    x = torch.randn(2, 12, 8, 5)
    assert MultiScaleTemporalConv(12, 24, kernel_size=5, stride=2, dilations=(1, 2))(x).shape == (2, 24, 4, 5)
    with_res = MultiScaleTemporalConv(12, 24, stride=2, dilations=(1, 2), residual=True)
    assert "residual.conv.weight" in with_res.state_dict()
    no_res = MultiScaleTemporalConv(12, 12, dilations=(1, 2), residual=False)
    assert not any(k.startswith("residual") for k in no_res.state_dict())
    with pytest.raises(ValueError, match="multiple"):
        MultiScaleTemporalConv(12, 10, dilations=(1, 2))
    assert UnitTCN(12, 6, kernel_size=9, stride=2)(x).shape == (2, 6, 4, 5)
