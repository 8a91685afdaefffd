"""Encoders (CTR-GCN, 2s-AGCN, HCN): official state_dict layout, outputs equal to the reference fixtures,
the features/head contract, and training on NTU and NW-UCLA shapes.

Fixture tests run once per ``*.pt`` under ``$CSRE_REFERENCE_DIR/encoders`` whose ``encoder`` field is
implemented here; the model is built from the fixture's own ``kwargs``, so held-out cases (other
layouts, other arguments) are checked the same way. See ``encoders/README.md`` beside the fixtures
for their format and for the tolerance rule used by :func:`assert_close`.
"""

from __future__ import annotations

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
from tests.models import encoder_fixture_paths, load_fixture

ENCODERS: dict[str, type[Encoder]] = {"ctrgcn": CTRGCN, "agcn": AGCN, "hcn": HCN}
FAMILY = "encoders (ctrgcn, agcn, hcn)"
FIXTURES = fixture_params(encoder_fixture_paths(ENCODERS), FAMILY)

EVAL_TOL, TRAIN_TOL = 1e-5, 1e-4


def assert_close(ours: Tensor, ref: Tensor, tol: float, what: str) -> None:
    """The fixtures' scale-aware rule: max|ours - ref| <= tol * max(1, max|ref|)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.detach() - ref).abs().max().item()
    bound = tol * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{what}: max abs diff {err:.3g} > {bound:.3g}"


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
    assert_close(logits, ref["eval_logits"], EVAL_TOL, f"{which} eval_logits")
    if "eval_feature" in ref:
        assert_close(feats, ref["eval_feature"], EVAL_TOL, f"{which} eval_feature")
    if "eval_feature_head" in ref:
        assert_close(feats[:1], ref["eval_feature_head"], EVAL_TOL, f"{which} eval_feature_head")
    ours_extra = extras(model, feats, M)
    assert set(ref.get("eval_extra", {})) <= set(ours_extra), "fixture lists extras this test cannot compute"
    for name, value in ref.get("eval_extra", {}).items():
        assert_close(ours_extra[name], value, EVAL_TOL, f"{which} eval_extra[{name}]")

    if "train_logits" in ref or "train_feature_head" in ref:
        feats, logits = run(model, x, train=True)  # BatchNorm on batch statistics
        if "train_logits" in ref:
            assert_close(logits, ref["train_logits"], TRAIN_TOL, f"{which} train_logits")
        if "train_feature_head" in ref:
            assert_close(feats[:1], ref["train_feature_head"], TRAIN_TOL, f"{which} train_feature_head")


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
    shape, graph, num_class = SHAPES[shape_name]
    torch.manual_seed(0)
    model = make(name, shape, graph, num_class).train()
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
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


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
