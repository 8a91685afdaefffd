"""Adjacency matrices: structure, normalisation, k-hop helpers, and equality with the graphs the
official encoders stored in the reference fixtures (CTR-GCN ``PA`` at init, 2s-AGCN's fixed ``A``,
Hyperformer/BlockGCN ``hops``, InfoGCN ``A_vector``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import adjacency as adj
from models.graph import LAYOUTS
from tests.conftest import fixture_params, require_fixture
from tests.models import encoder_fixture_paths, load_fixture

GRAPHS = list(adj.GRAPH_NAMES)
FAMILY = "encoders (ctrgcn, agcn)"
FIXTURES = fixture_params(encoder_fixture_paths(["ctrgcn", "agcn"]), FAMILY)


@pytest.mark.parametrize("name", GRAPHS)
def test_spatial_subsets(name: str) -> None:
    g = adj.spatial_graph(name)
    V = g.num_node
    assert g.A.shape == (3, V, V) and g.A.dtype == torch.float64
    assert V == (25 if name.startswith("ntu") else 20)
    assert len(g.inward) == V - 1  # a tree
    identity, inward, outward = g.A
    assert torch.equal(identity, torch.eye(V, dtype=torch.float64))
    # inward and outward are the same edges in opposite directions; together they are symmetric
    assert torch.equal(inward != 0, (outward != 0).T)
    assert torch.equal(g.A_binary, g.A_binary.T) and g.A_binary.diagonal().eq(0).all()
    assert torch.equal(g.A_binary, ((inward + outward) != 0).double())
    # columns are normalised: each sums to 1, or to 0 for a joint without such an edge
    for sub in (inward, outward):
        sums = sub.sum(0)
        assert torch.allclose(sums[sums != 0], torch.ones_like(sums[sums != 0]), rtol=0, atol=1e-15)
    # every joint but the root sends one inward edge (to its parent): only the root's column is empty
    assert (inward.sum(0) == 0).sum() == 1


@pytest.mark.parametrize("name", ["ntu", "ucla"])
def test_edges_come_from_the_layout(name: str) -> None:
    layout = LAYOUTS[name]
    assert adj.inward_edges(name) == layout.edges
    assert adj.reroot(layout.edges, layout.root) == layout.edges  # CTR-GCN's inward points to the root


def test_hyperformer_ntu_variant_rewires_two_hand_joints() -> None:
    ctr, hyp = set(adj.inward_edges("ntu")), set(adj.inward_edges("ntu_hyperformer"))
    assert ctr - hyp == {(21, 22), (23, 24)} and hyp - ctr == {(21, 7), (23, 11)}
    assert adj.hop_distance(adj.spatial_graph("ntu").A).max() == 12
    assert adj.hop_distance(adj.spatial_graph("ntu_hyperformer").A).max() == 11


@pytest.mark.parametrize("name", GRAPHS)
def test_hops_and_k_hop_helpers_agree(name: str) -> None:
    g = adj.spatial_graph(name)
    V = g.num_node
    hops = adj.hop_distance(g.A)
    assert hops.dtype == torch.long and torch.equal(hops, hops.T) and hops.diagonal().eq(0).all()
    assert torch.equal(hops == 1, g.A_binary != 0)
    assert (hops[~torch.eye(V, dtype=torch.bool)] > 0).all()  # connected
    assert torch.equal(adj.k_adjacency(g.A_binary, 0), torch.eye(V, dtype=torch.float64))
    for k in range(1, int(hops.max()) + 2):
        assert torch.equal(adj.k_adjacency(g.A_binary, k) != 0, hops == k), k
    eye = torch.eye(V, dtype=torch.bool)
    for s in (1, 2, 3):
        expected = ((hops <= s) & ~eye) | (eye if s >= 2 else torch.zeros_like(eye))  # A^2 has i->j->i
        assert torch.equal(adj.k_scale_graph(s, g.A_binary) != 0, expected), s
    with_self = adj.k_adjacency(g.A_binary, 2, with_self=True, self_factor=3)
    assert torch.equal(with_self.diagonal(), torch.full((V,), 3.0, dtype=torch.float64))


def test_symmetric_normalisation() -> None:
    g = adj.spatial_graph("ntu_hyperformer")
    A = g.A_binary + 2 * torch.eye(25, dtype=torch.float64)
    norm = adj.normalize_adjacency_matrix(A)
    assert norm.dtype == torch.float32 and torch.equal(norm, norm.T)
    d = A.sum(1)
    i, j = g.inward[0]
    assert norm[i, j].item() == pytest.approx(1 / (d[i] * d[j]).sqrt().item())


def test_reroot() -> None:
    edges = adj.reroot(adj.inward_edges("ntu"), 1)  # InfoGCN's NTU tree hangs from joint 2
    assert set(edges) ^ set(adj.inward_edges("ntu")) == {(1, 20), (20, 1)}
    with pytest.raises(ValueError, match="tree"):
        adj.reroot([(0, 1), (1, 2), (2, 0)], 0)


def test_build_graph_validates() -> None:
    assert adj.build_graph("ucla", {"labeling_mode": "spatial", "scale": 2}, 20).num_node == 20
    with pytest.raises(ValueError, match="25 joints"):
        adj.build_graph("ntu", None, 20)
    with pytest.raises(TypeError):
        adj.build_graph("ntu", {"layout": "x"}, 25)


# ---------------------------------------------------------------------------------------------
# Against the graphs stored in the fixtures


@pytest.mark.reference
@pytest.mark.parametrize("path", FIXTURES)
def test_adjacency_equals_fixture(path: Path | None) -> None:
    """CTR-GCN: every ``gcn1.PA`` at init is the graph A; 2s-AGCN: every fixed ``gcn1.A`` is (bit for bit)."""
    fx = load_fixture(require_fixture(path, FAMILY))
    kw = fx["kwargs"]
    A = adj.build_graph(kw["graph"], kw.get("graph_args"), kw["num_point"]).A.float()
    stored = {k: v for k, v in fx["state_dict"].items() if k.endswith("gcn1.PA") and fx["encoder"] == "ctrgcn"}
    stored |= {k: v for k, v in fx["non_state_tensors"].items() if k.endswith("gcn1.A")}
    if not stored:  # CTR-GCN with adaptive=False keeps A outside the state_dict
        pytest.skip(f"{path.name} stores no graph (neither PA nor non_state_tensors)")
    assert len(stored) == 10
    for key, value in stored.items():
        assert torch.equal(value, A), key


def _other_fixtures(encoder: str) -> list[Path]:
    return encoder_fixture_paths([encoder])


@pytest.mark.reference
@pytest.mark.parametrize("encoder, suffix", [("hyperformer", "vit1.attn.hops"), ("blockgcn", "gcn1.hops")])
def test_hop_distances_equal_fixture(encoder: str, suffix: str) -> None:
    """For the next encoders: their ``hops`` are the shortest-path distances of the Hyperformer NTU graph."""
    paths = _other_fixtures(encoder)
    if not paths:
        pytest.skip(f"no {encoder} fixtures")
    for path in paths:
        fx = load_fixture(path)
        if fx["kwargs"].get("num_point", 25) != 25:
            continue
        hops = adj.hop_distance(adj.spatial_graph("ntu_hyperformer").A)
        stored = {k: v for k, v in fx["non_state_tensors"].items() if k.endswith(suffix)}
        assert stored, path.name
        for key, value in stored.items():
            assert torch.equal(value, hops), f"{path.name}: {key}"


@pytest.mark.reference
def test_infogcn_input_graph_equals_fixture() -> None:
    """For InfoGCN: ``A_vector = I - A_outward_binary^k`` on the NTU tree rooted at joint 2 (index 1)."""
    paths = _other_fixtures("infogcn")
    if not paths:
        pytest.skip("no infogcn fixtures")
    for path in paths:
        fx = load_fixture(path)
        if fx["kwargs"].get("num_point", 25) != 25:
            continue
        outward = adj.edge_matrix(adj.reroot(adj.inward_edges("ntu"), 1), 25).T  # A[child, parent] = 1
        expected = torch.eye(25, dtype=torch.float64) - torch.linalg.matrix_power(outward, fx["kwargs"]["k"])
        assert torch.equal(fx["non_state_tensors"]["A_vector"].double(), expected), path.name
