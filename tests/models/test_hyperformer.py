"""Hyperformer: official state_dict layout, outputs equal to the reference fixtures, the features/head
contract, hop distances and body-part partitions, training on NTU and NW-UCLA shapes.

Fixture tests run once per ``*.pt`` anywhere under ``$CSRE_REFERENCE_DIR/encoders`` whose ``encoder``
field is ``hyperformer``, each built from the fixture's own ``kwargs`` (held-out cases included). The official
forward also takes the one-hot label (``input_names == ['x', 'y_onehot']``); it is only passed
through, so only ``x`` is fed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.adjacency import hop_distance, spatial_graph
from models.hyperformer import DEFAULT_JOINT_LABELS, Hyperformer
from models.registry import encoder_class
from tests.conftest import fixture_params, require_fixture
from tests.models import assert_outputs_match, encoder_fixture_paths, load_fixture, state

FAMILY = "encoders (hyperformer)"
FIXTURES = fixture_params(encoder_fixture_paths({"hyperformer"}), FAMILY)

NTU_PARTS = [0, 4, 2, 2, 2, 2, 1, 1, 2, 2, 1, 1, 2, 3, 3, 3, 2, 3, 3, 3, 1, 0, 1, 0, 1]
UCLA_PARTS = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]


def build(fx: dict) -> Hyperformer:
    return Hyperformer(**fx["kwargs"])


def model_input(fx: dict) -> Tensor:
    assert fx["input_names"][0] == "x" and set(fx["input_names"]) <= {"x", "y_onehot"}, fx["input_names"]
    return fx["inputs"][0]


def run(model: Hyperformer, x: Tensor, train: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(feature map, logits, extras: none) through the public API."""
    model.train(train)
    with torch.no_grad():
        feats = model.features(x)
        return feats, model.head(feats, x.shape[-1]), {}


# ---------------------------------------------------------------------------------------------
# Against the official implementation


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
def test_hops_match_official(path: Path | None) -> None:
    """The official keeps ``hops`` as a plain attribute; ours is a non-persistent buffer with the same values."""
    fx = load_fixture(require_fixture(path, FAMILY))
    model = build(fx)
    buffers = dict(model.named_buffers())
    hops = {k: v for k, v in fx["non_state_tensors"].items() if k.endswith("attn.hops")}
    assert len(hops) == 10
    for name, ref in hops.items():
        assert name not in model.state_dict()
        assert torch.equal(buffers[name], ref), name


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
    """Init (attention switched off) and perturbed (attention, hop and body-part terms on) states, under
    the scale-aware rule of :func:`tests.models.output_mismatches`."""
    fx = load_fixture(require_fixture(path, FAMILY))
    ref = fx if which == "init" else fx["perturbed"]
    assert not ref.get("eval_extra"), "Hyperformer has no extra outputs (y is only passed through)"
    assert_outputs_match(build(fx), model_input(fx), fx, which, run)


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
            assert torch.equal(model(x), model.head(model.features(x), x.shape[-1])), f"train={train}"


# ---------------------------------------------------------------------------------------------
# Shapes, gradients, configurations

SHAPES = {  # name: (N, C, T, V, M), layout, num_class
    "ntu": ((2, 3, 64, 25, 2), "ntu", 60),
    "ucla": ((2, 3, 52, 20, 1), "ucla", 10),
}


@pytest.mark.parametrize("shape_name", SHAPES)
def test_trains_on_dataset_shapes(shape_name: str) -> None:
    """Forward/backward on both datasets' shapes; the attention terms are switched on so every
    parameter (rpe, w1, alpha, pe_proj included) gets a non-zero gradient."""
    shape, graph, num_class = SHAPES[shape_name]
    N, _, T, V, M = shape
    torch.manual_seed(0)
    model = Hyperformer(num_class=num_class, num_point=V, num_person=M, graph=graph).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.alpha", "attn.rpe", "attn.w1")):
                p.add_(0.1 * torch.randn_like(p))
    x = 0.5 * torch.randn(shape)
    feats = model.features(x)
    assert feats.shape == (N * M, model.out_channels, T // 4, V) and model.out_channels == 216
    logits = model.head(feats, M)
    assert logits.shape == (N, num_class)
    assert (model.num_class, model.num_person) == (num_class, M)
    torch.nn.functional.cross_entropy(logits, torch.arange(N) % num_class).backward()
    assert torch.isfinite(logits).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_parameter_count() -> None:
    model = Hyperformer(num_class=60, num_point=25, num_person=2, graph="ntu")
    assert sum(p.numel() for p in model.parameters()) == 2_729_194


def test_dropout_only_in_the_head_and_forward_is_head_of_features() -> None:
    torch.manual_seed(0)
    model = Hyperformer(num_class=10, num_point=20, num_person=1, graph="ucla", drop_out=0.5, num_of_heads=3).train()
    assert isinstance(model.drop_out, torch.nn.Dropout)
    x = torch.randn(2, 3, 16, 20, 1)
    with torch.no_grad():
        torch.manual_seed(1)
        direct = model(x)
        torch.manual_seed(1)
        split = model.head(model.features(x), 1)
    assert torch.equal(direct, split)


def test_ntu_means_hyperformers_hand_graph() -> None:
    """The official repository's NTU graph attaches hand tip and thumb to the hand: its hops (max 11)
    differ from CTR-GCN's NTU graph (max 12), which would change ``rpe``'s shape."""
    ntu = Hyperformer(graph="ntu")
    alias = Hyperformer(graph="ntu_hyperformer")
    expected = hop_distance(spatial_graph("ntu_hyperformer").A)
    assert torch.equal(ntu.l1.vit1.attn.hops, expected) and torch.equal(alias.l1.vit1.attn.hops, expected)
    assert not torch.equal(expected, hop_distance(spatial_graph("ntu").A))
    assert ntu.l1.vit1.attn.rpe.shape == (12, 216)
    ucla = Hyperformer(num_class=10, num_point=20, num_person=1, graph="ucla")
    assert ucla.l1.vit1.attn.rpe.shape == (int(hop_distance(spatial_graph("ucla").A).max()) + 1, 216)
    assert "l1.vit1.attn.hops" not in ntu.state_dict()


def test_joint_label_defaults_to_the_official_partitions() -> None:
    assert Hyperformer(graph="ntu").joint_label == tuple(NTU_PARTS) == DEFAULT_JOINT_LABELS[25]
    ucla = Hyperformer(num_class=10, num_point=20, num_person=1, graph="ucla")
    assert ucla.joint_label == tuple(UCLA_PARTS) == DEFAULT_JOINT_LABELS[20]
    explicit = Hyperformer(num_class=10, num_point=20, num_person=1, graph="ucla", joint_label=[0] * 10 + [1] * 10)
    assert explicit.joint_label == (0,) * 10 + (1,) * 10


def test_body_part_embedding_is_the_projected_part_mean() -> None:
    torch.manual_seed(0)
    vit = Hyperformer(num_class=10, num_point=20, num_person=1, graph="ucla", num_of_heads=3).l2.vit1
    x = torch.randn(2, 72, 4, 20)
    parts = torch.tensor(UCLA_PARTS)
    means = torch.stack([x[..., parts == g].mean(-1) for g in range(3)], dim=-1)  # (N, C, T, G)
    e = vit.pe_proj(means)[..., parts]  # (N, dim, T, V)
    torch.testing.assert_close(vit.pe_proj(x @ vit.part_mean)[..., vit.joint_part], e)


@pytest.mark.parametrize("kwargs, message", [
    (dict(graph=None), "graph is required"),
    (dict(graph="kinetics"), "unknown graph"),
    (dict(graph="ucla"), "20 joints"),
    (dict(joint_label=[0, 1, 2]), "25"),
    (dict(joint_label=[0] * 24 + [2]), "every part id"),
    (dict(num_point=18, graph="ntu"), "25 joints"),
    (dict(num_of_heads=9, graph="ntu", graph_args={"labeling_mode": "uniform"}), "labeling_mode"),
])
def test_arguments_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hyperformer(**kwargs)


def test_unknown_keywords_are_rejected() -> None:
    """No catch-all ``**kwargs`` (the official has one): a typo is an error, not silently ignored."""
    with pytest.raises(TypeError, match="num_of_head"):
        Hyperformer(num_of_head=3)
    with pytest.raises(TypeError, match="foo"):
        Hyperformer(foo=1)


def test_registered() -> None:
    assert encoder_class("hyperformer") is Hyperformer
