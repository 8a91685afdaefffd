"""BlockGCN: official state_dict layout, outputs equal to the reference fixtures, the features/head
contract, the raw-joints input, the persistent-homology encoding (against ``torch_topological`` when
it is installed, and against a plain Kruskal MST always), training on NTU and NW-UCLA shapes.

Fixture tests run once per ``*.pt`` anywhere under ``$CSRE_REFERENCE_DIR/encoders`` whose ``encoder``
field is ``blockgcn``, each built from the fixture's own ``kwargs`` (held-out cases included). The official
forward is ``(x, y_onehot, joint)``: ``y_onehot`` is only passed through, ``joint`` is stacked after
``x`` as 3 extra channels, which is how :class:`models.blockgcn.BlockGCN` takes it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.adjacency import hop_distance, spatial_graph
from models.blockgcn import BlockGCN, StructureElementLayer, TopologyEncoding, rips_h0_deaths
from models.registry import encoder_class
from tests.conftest import fixture_params, require_fixture
from tests.models import (assert_outputs_match, encoder_fixture_paths, load_fixture, parameters_without_gradient,
                          perturb_parameters, state)

FAMILY = "encoders (blockgcn)"
FIXTURES = fixture_params(encoder_fixture_paths({"blockgcn"}), FAMILY)
HAS_TORCH_TOPOLOGICAL = importlib.util.find_spec("torch_topological") is not None


def build(fx: dict) -> BlockGCN:
    return BlockGCN(**fx["kwargs"])


def model_input(fx: dict) -> Tensor:
    """The official ``(x, [y_onehot], joint)`` as one tensor: ``cat([x, joint], channels)``."""
    names = fx["input_names"]
    assert names[0] == "x" and set(names) <= {"x", "y_onehot", "joint"}, names
    inputs = dict(zip(names, fx["inputs"]))
    x = inputs["x"]
    return torch.cat([x, inputs["joint"]], 1) if "joint" in inputs else x


def run(model: BlockGCN, x: Tensor, train: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
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
def test_seeded_init_matches_official(path: Path | None) -> None:
    """Same seed, same random draws in the same order: the initial state equals the official bit for bit."""
    fx = load_fixture(require_fixture(path, FAMILY))
    torch.manual_seed(fx["seed"])
    ours = build(fx).state_dict()
    mismatched = [k for k, v in ours.items() if not torch.equal(v, fx["state_dict"][k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"


@pytest.mark.reference
@pytest.mark.parametrize("path", FIXTURES)
def test_hops_match_official(path: Path | None) -> None:
    """``hops`` (official plain attribute) is a non-persistent buffer equal to the official tensor."""
    fx = load_fixture(require_fixture(path, FAMILY))
    model = build(fx)
    buffers = dict(model.named_buffers())
    hops = {k: v for k, v in fx["non_state_tensors"].items() if k.endswith(".hops")}
    assert hops, "fixture lists no hops"
    for name, ref in hops.items():
        assert name in buffers and name not in model.state_dict(), name
        assert torch.equal(buffers[name], ref), name


@pytest.mark.reference
@pytest.mark.parametrize("which", ["init", "perturbed"])
@pytest.mark.parametrize("path", FIXTURES)
def test_outputs_match_official(path: Path | None, which: str) -> None:
    """Under the scale-aware rule of :func:`tests.models.output_mismatches`."""
    fx = load_fixture(require_fixture(path, FAMILY))
    ref = fx if which == "init" else fx["perturbed"]
    assert not ref.get("eval_extra"), "fixture lists extras this test cannot compute"
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
            torch.manual_seed(0)  # same dropout masks for both calls
            direct = model(x)
            torch.manual_seed(0)
            split = model.head(model.features(x), x.shape[-1])
        assert torch.equal(direct, split), f"train={train}"


# ---------------------------------------------------------------------------------------------
# Persistent homology: own implementation == torch_topological


def kruskal_deaths(points: Tensor) -> list[float]:
    """Sorted MST edge lengths of one point cloud (P, D), zero lengths dropped: a plain reference."""
    dist = torch.cdist(points, points).tolist()
    P = len(dist)
    root = list(range(P))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    out = []
    for d, i, j in sorted((dist[i][j], i, j) for i in range(P) for j in range(i + 1, P)):
        a, b = find(i), find(j)
        if a != b:
            root[a] = b
            if d != 0:
                out.append(d)
    return out


def point_clouds(seed: int = 0) -> Tensor:
    """A batch of (V, V)-shaped point clouds with ties and coincident points in some samples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 25, 25, generator=g)
    x[1, 3] = x[1, 7]  # one coincident pair -> one zero-length bar
    x[2, 5:9] = x[2, 4]  # five coincident points -> four zero-length bars
    x[3] = torch.round(x[3] * 2) / 2  # many equal distances
    return x


def test_rips_h0_is_the_minimum_spanning_tree() -> None:
    pts = point_clouds()
    deaths, kept = rips_h0_deaths(pts)
    assert deaths.shape == kept.shape == (5, 24)
    for b in range(len(pts)):
        ours = deaths[b][kept[b]].tolist()
        assert ours == sorted(ours) and not kept[b][:24 - len(ours)].any()  # zero-length bars come first
        assert ours == pytest.approx(kruskal_deaths(pts[b]), abs=0, rel=0), b
    assert kept.sum(1).tolist() == [24, 23, 20, 24, 24]


def library_topology(points: Tensor, pl: StructureElementLayer) -> Tensor:
    """The official ``Topo`` tail with torch_topological: VietorisRipsComplex(dim=0) -> make_tensor -> layer."""
    from torch_topological.nn import VietorisRipsComplex
    from torch_topological.nn.data import make_tensor
    from torch_topological.nn.layers import StructureElementLayer as LibraryLayer

    layer = LibraryLayer(pl.n_elements)
    layer.load_state_dict(pl.state_dict())
    return layer(make_tensor(VietorisRipsComplex(dim=0)(points)))


@pytest.mark.skipif(not HAS_TORCH_TOPOLOGICAL, reason="torch_topological not installed (optional cross-check)")
@pytest.mark.parametrize("batch", ["generic", "with_zero_length_bars"])
def test_topology_equals_torch_topological(batch: str) -> None:
    from torch_topological.nn import VietorisRipsComplex

    torch.manual_seed(0)
    pl = StructureElementLayer(64)
    with torch.no_grad():  # move the structure elements into the data's range
        pl.sharpness.mul_(torch.rand(64, 2))
    pts = point_clouds()
    if batch == "generic":
        pts = pts[[0, 4]]
    else:  # every sample has a zero-length bar: the library's diagrams are shorter than V - 1
        pts = pts[[1, 2]]
    deaths, kept = rips_h0_deaths(pts)
    for b, info in enumerate(VietorisRipsComplex(dim=0)(pts)):
        lib = sorted(info[0].diagram[:, 1].tolist())
        assert deaths[b][kept[b]].tolist() == lib
        assert info[0].diagram[:, 0].eq(0).all()

    topo = TopologyEncoding()
    topo.pl.load_state_dict(pl.state_dict())
    ours = topo.pl(deaths, kept, torch.arange(24) >= 24 - kept.sum(1).max())
    ref = library_topology(pts, pl)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(not HAS_TORCH_TOPOLOGICAL, reason="torch_topological not installed (optional cross-check)")
def test_topology_encoding_equals_official_topo_on_joints() -> None:
    """The whole official ``Topo`` (person mean, time-mean differences, norm, batch min-max, library)."""
    g = torch.Generator().manual_seed(3)
    joint = 0.5 * torch.randn(4, 3, 16, 25, 2, generator=g)
    joint[1, ..., 1] = 0  # one-person sample
    joint[2, :, :, 4] = joint[2, :, :, 6]  # coincident joints: a zero-length bar and a library pad row
    torch.manual_seed(0)
    topo = TopologyEncoding()
    a = joint.permute(0, 4, 1, 2, 3).contiguous().mean(1)  # official Topo, step by step
    a = (a.unsqueeze(-1) - a.unsqueeze(-2)).mean(-3)
    a = torch.norm(a, 2, dim=1)
    a = (a - torch.min(a)) / (torch.max(a) - torch.min(a))
    ref = library_topology(a, topo.pl)
    torch.testing.assert_close(topo(joint), ref, rtol=1e-6, atol=1e-5)


def test_topology_gradients_are_finite_with_padding() -> None:
    """Pad rows count exactly 1 and carry no gradient (the library's nansum gives NaN gradients there)."""
    torch.manual_seed(0)
    topo = TopologyEncoding()
    joint = torch.randn(3, 3, 8, 25, 1)
    joint[0, :, :, 2] = joint[0, :, :, 3]
    joint.requires_grad_(True)
    out = topo(joint)
    out.sum().backward()
    assert all(torch.isfinite(t).all() for t in (out, joint.grad, topo.pl.centres.grad, topo.pl.sharpness.grad))
    deaths, kept = rips_h0_deaths(torch.rand(2, 6, 6))
    rows = torch.ones(5, dtype=torch.bool)
    no_bars = topo.pl(deaths, torch.zeros_like(kept), rows)  # every row a pad row
    torch.testing.assert_close(no_bars, torch.full((2, 64), 5.0), rtol=0, atol=0)
    assert topo.pl(deaths, torch.zeros_like(kept), ~rows).eq(0).all()  # absent rows count 0


def test_topology_is_batch_dependent_and_zero_range_safe() -> None:
    """Official min-max over the whole batch: a sample's encoding depends on the rest of the batch."""
    torch.manual_seed(0)
    topo = TopologyEncoding()
    joint = torch.randn(2, 3, 8, 25, 2)
    alone = topo(joint[:1])
    scaled = joint.clone()
    scaled[1] *= 3
    assert torch.equal(topo(joint[:1] * 2), alone)  # scale-invariant per batch
    assert not torch.allclose(topo(scaled)[:1], alone)
    zero = topo(torch.zeros(2, 3, 8, 25, 2))  # official: 0/0 = NaN (and the library would crash)
    assert torch.isfinite(zero).all() and zero.eq(0).all()


# ---------------------------------------------------------------------------------------------
# Inputs, persons, shapes, gradients, configurations

SHAPES = {  # name: (N, C, T, V, M), layout, num_class
    "ntu": ((2, 3, 64, 25, 2), "ntu", 60),
    "ucla": ((2, 3, 52, 20, 1), "ucla", 10),
}


def make(shape: tuple[int, ...], graph: str, num_class: int, **kw) -> BlockGCN:
    _, C, _, V, M = shape
    return BlockGCN(num_class=num_class, num_point=V, num_person=M, graph=graph, in_channels=C, **kw)


@pytest.mark.parametrize("with_joints", [True, False], ids=["with-joints", "joints-from-x"])
@pytest.mark.parametrize("shape_name", SHAPES)
def test_trains_on_dataset_shapes(shape_name: str, with_joints: bool) -> None:
    """Forward/backward on both datasets' shapes; after :func:`perturb_parameters` (constant-initialised
    tensors made non-degenerate, as the fixtures' perturbed state) every parameter, the topology
    branch included, gets a finite, non-zero gradient."""
    shape, graph, num_class = SHAPES[shape_name]
    torch.manual_seed(0)
    model = perturb_parameters(make(shape, graph, num_class)).train()
    x = 0.5 * torch.randn(shape)
    if with_joints:
        x = torch.cat([x - x[:, :, :, :1], x], 1)
    feats = model.features(x)
    N, _, T, V, M = shape
    assert feats.shape == (N * M, model.out_channels, T // 4, V)
    logits = model.head(feats, M)
    assert logits.shape == (N, num_class)
    assert (model.num_class, model.num_person, model.out_channels) == (num_class, M, 256)
    torch.nn.functional.cross_entropy(logits, torch.arange(N) % num_class).backward()
    assert torch.isfinite(logits).all()
    missing = parameters_without_gradient(model)
    assert not missing, f"parameters without a finite, non-zero gradient: {missing[:5]}"


def test_parameter_count_and_registry() -> None:
    model = encoder_class("blockgcn")(graph="ntu")
    assert isinstance(model, BlockGCN)
    assert sum(p.numel() for p in model.parameters()) == 1_372_780


def test_raw_joints_channels() -> None:
    """Channels [in_channels:] feed only the topology; without them x itself is the joints."""
    torch.manual_seed(0)
    model = make((2, 3, 16, 20, 1), "ucla", 5).eval()
    x = torch.randn(2, 3, 16, 20, 1)
    joint = torch.randn(2, 3, 16, 20, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([x, x], 1)), model(x), rtol=0, atol=0)
        with_joint = model(torch.cat([x, joint], 1))
        assert not torch.allclose(with_joint, model(x))
        feats = model.features(torch.cat([x, joint], 1))
        topo = model.topology(joint)
    assert feats.shape == (2, 256, 4, 20) and topo.shape == (2, 64)
    with pytest.raises(ValueError, match="3 or 6"):
        model(torch.randn(2, 4, 16, 20, 1))


@pytest.mark.parametrize("M", [1, 2, 3])
def test_topology_rows_tile_samples_like_the_official(M: int) -> None:
    """``repeat(M, 1)``: feature row r (ordered (n, m)) gets the topology of sample r mod N."""
    torch.manual_seed(0)
    model = make((3, 3, 8, 25, M), "ntu", 4).eval()
    topo = torch.randn(3, 64)
    rows = model.t0(topo, M)[:, :, 0, 0]  # (M·N, 128)
    expected = torch.relu(model.t0.bn(model.t0.mlp(topo)))
    for r in range(3 * M):
        torch.testing.assert_close(rows[r], expected[r % 3], rtol=0, atol=1e-6)
    x = torch.randn(3, 6, 8, 25, M)
    assert model.features(x).shape == (3 * M, 256, 2, 25)


def test_graph_hops_and_options() -> None:
    model = BlockGCN(graph="ntu", alpha=True, window_size=300, joint_label=[0] * 25, adaptive=False, num_set=5)
    hops = hop_distance(spatial_graph("ntu_hyperformer").A)  # BlockGCN's 'ntu' graph
    assert torch.equal(model.l1.gcn1.hops, hops) and not torch.equal(hops, hop_distance(spatial_graph("ntu").A))
    assert model.l1.gcn1.rpe.shape == (3, 8, int(hops.max()) + 1)
    assert "l1.gcn1.alpha" in model.state_dict()  # official: created (unused by the forward)
    assert "l1.gcn1.hops" not in model.state_dict()
    ucla = BlockGCN(num_point=20, num_person=1, graph="ucla")
    assert torch.equal(ucla.l3.gcn1.hops, hop_distance(spatial_graph("ucla").A))
    with pytest.raises(ValueError, match="graph is required"):
        BlockGCN()
    with pytest.raises(ValueError, match="20 joints"):
        BlockGCN(graph="ucla")


def test_dropout_only_in_the_head() -> None:
    model = BlockGCN(graph="ntu", drop_out=0.5)
    assert isinstance(model.drop_out, torch.nn.Dropout) and "drop_out" not in str(list(model.state_dict()))
