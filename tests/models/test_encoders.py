"""Encoders (CTR-GCN, 2s-AGCN, HCN): official state_dict layout, outputs equal to the reference fixtures,
the features/head contract, and training on NTU and NW-UCLA shapes.

Fixture tests run once per ``*.pt`` anywhere under ``$CSRE_REFERENCE_DIR/encoders`` whose ``encoder``
field is implemented here; the model is built from the fixture's own ``kwargs``, so held-out cases
(other layouts, other arguments) are checked the same way. A fixture of an encoder no test module
handles fails :func:`test_every_fixture_is_checked`. See ``encoders/README.md`` beside the fixtures
for their format and for the tolerance rules used by :func:`assert_close`.
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
from tests.models import (FIXTURE_FAMILIES, all_fixture_paths, encoder_fixture_paths, fixture_encoder,
                          load_fixture, parameters_without_gradient, perturb_parameters)

ENCODERS: dict[str, type[Encoder]] = {"ctrgcn": CTRGCN, "agcn": AGCN, "hcn": HCN}
FAMILY = "encoders (ctrgcn, agcn, hcn)"
FIXTURES = fixture_params(encoder_fixture_paths(ENCODERS), FAMILY)

EVAL_TOL, TRAIN_TOL = 1e-5, 1e-4
# The encoder issue's element-wise tolerance (|ours - ref| <= ATOL + RTOL·|ref| for every element), required
# on top of the README rule for eval logits, the eval feature map (``eval_feature``/``eval_feature_head``)
# and train logits.
ISSUE_ATOL, ISSUE_RTOL = 1e-5, 1e-4
STRICT = ("eval_logits", "eval_feature", "eval_feature_head", "train_logits")


def assert_close(ours: Tensor, ref: Tensor, tol: float, what: str, *, strict: bool = False) -> None:
    """The fixtures' scale-aware rule: max|ours - ref| <= tol * max(1, max|ref|); with ``strict`` also
    the issue's element-wise rule (atol 1e-5, rtol 1e-4), which is tighter where entries are small
    but others large (init eval logits reach 1e3..1e6)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    ours = ours.detach()
    err = (ours - ref).abs().max().item()
    bound = tol * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{what}: max abs diff {err:.3g} > {bound:.3g} (README rule)"
    if strict:
        torch.testing.assert_close(ours, ref, atol=ISSUE_ATOL, rtol=ISSUE_RTOL,
                                   msg=lambda m: f"{what} (issue tolerance atol={ISSUE_ATOL}, rtol={ISSUE_RTOL}): {m}")


def compare(ours: Tensor, ref: dict, key: str, tol: float, which: str) -> None:
    """:func:`assert_close` of ``ours`` against ``ref[key]``, strict for the outputs listed in :data:`STRICT`."""
    assert_close(ours, ref[key], tol, f"{which} {key}", strict=key in STRICT)


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


def run(model: Encoder, x: Tensor, train: bool) -> tuple[Tensor, Tensor]:
    model.train(train)
    with torch.no_grad():
        feats = model.features(x)
        return feats, model.head(feats, x.shape[-1])


def state(fx: dict, which: str) -> dict[str, Tensor]:
    sd = dict(fx["state_dict"])
    if which == "perturbed":
        sd.update(fx["perturbed"]["overrides"])
    return sd


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
    fx = load_fixture(require_fixture(path, FAMILY))
    ref = fx if which == "init" else fx["perturbed"]
    model = build(fx)
    model.load_state_dict(state(fx, which), strict=True)
    x = model_input(fx)
    M = x.shape[-1]

    feats, logits = run(model, x, train=False)
    compare(logits, ref, "eval_logits", EVAL_TOL, which)
    if "eval_feature" in ref:
        compare(feats, ref, "eval_feature", EVAL_TOL, which)
    if "eval_feature_head" in ref:
        compare(feats[:1], ref, "eval_feature_head", EVAL_TOL, which)
    ours_extra = extras(model, feats, M)
    assert set(ref.get("eval_extra", {})) <= set(ours_extra), "fixture lists extras this test cannot compute"
    for name, value in ref.get("eval_extra", {}).items():
        assert_close(ours_extra[name], value, EVAL_TOL, f"{which} eval_extra[{name}]")

    if "train_logits" in ref or "train_feature_head" in ref:
        feats, logits = run(model, x, train=True)  # BatchNorm on batch statistics
        if "train_logits" in ref:
            compare(logits, ref, "train_logits", TRAIN_TOL, which)
        if "train_feature_head" in ref:
            compare(feats[:1], ref, "train_feature_head", TRAIN_TOL, which)


def test_assert_close_applies_both_rules() -> None:
    """The README rule scales with the largest entry; the issue's rule is element-wise."""
    ref = torch.tensor([1e3, 0.0, -2.0])
    off_small = ref + torch.tensor([0.0, 1e-3, 0.0])  # 1e-3 on a zero entry: README bound is 1e-2
    assert_close(off_small, ref, EVAL_TOL, "readme only")
    with pytest.raises(AssertionError, match="issue tolerance"):
        assert_close(off_small, ref, EVAL_TOL, "strict", strict=True)
    assert_close(ref * (1 + 5e-6), ref, EVAL_TOL, "relative", strict=True)  # within both rules
    with pytest.raises(AssertionError, match="README rule"):
        assert_close(ref + 0.1, ref, EVAL_TOL, "both", strict=True)
    assert set(STRICT) == {"eval_logits", "eval_feature", "eval_feature_head", "train_logits"}


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
