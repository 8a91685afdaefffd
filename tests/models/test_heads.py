"""Competitor heads (models/heads): SkeletonGCL and FR-Head.

* SkeletonGCL: the l10 graph read through the hooks equals a recomputation from l10's input (the
  official pre-alpha ``conv4`` output of CTR-GCN, the raw ``A1·A2`` of 2s-AGCN), the averaging and
  flattening on a hand case, the official projection init (and its RNG draws), the loss equals
  :func:`models.csre.csre_infonce` on the projected graph (CSRE's machinery, reused), the frozen
  projection of the official run.
* FR-Head: the prototype momentum update and the FN / FP calibration on a 3-class hand case worked
  out in closed form, every version against :func:`reference_renovate` (a slow per-sample,
  per-class loop), the stage taps and their shapes, official checkpoint names, DDP prototypes.
* Both: every parameter gets a gradient, the loss goes down on a toy problem (small CTR-GCN with
  NW-UCLA shapes), eval == encoder, export loads strictly, state_dict round trip, unsupported
  encoders, the gin files.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.agcn import AGCN
from models.csre import CSREOutput, csre_infonce, fixed_draws
from models.ctrgcn import CTRGCN
from models.encoder import Encoder
from models.hcn import HCN
from models.heads import HEADS, FRHead, SkeletonGCL
from models.heads.frhead import VERSIONS, Renovate, STRenovate
from tests.conftest import REPO
from tests.models import parameters_without_gradient, perturb_parameters

K, V, T = 10, 20, 16  # NW-UCLA classes and joints, a short window
SMALL = dict(K_pos=2, K_hard=4, K_rand=4)  # bank sizes for 3 samples per class


def make_encoder(name: str, num_person: int = 1, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    cls = {"ctrgcn": CTRGCN, "agcn": AGCN}[name]
    return cls(num_class=K, num_point=V, num_person=num_person, graph="ucla")


def toy_labels(n_per_class: int = 3) -> Tensor:
    return torch.arange(n_per_class * K) % K


def toy_data(n_per_class: int = 3, M: int = 1, seed: int = 0, noise: float = 0.1) -> tuple[Tensor, Tensor]:
    """A separable synthetic set: a class-specific joint pattern moving at a class-specific speed."""
    g = torch.Generator().manual_seed(seed)
    labels = toy_labels(n_per_class)
    base = torch.randn(K, 3, 1, V, 1, generator=g)
    t = torch.linspace(0, 1, T).view(1, 1, T, 1, 1)
    speed = torch.arange(1, K + 1, dtype=torch.float).view(K, 1, 1, 1, 1)
    pattern = base * torch.cos(2 * math.pi * speed * t / 4)  # (K, 3, T, V, 1)
    x = pattern[labels] + noise * torch.randn(labels.numel(), 3, T, V, M, generator=g)
    return x, labels


def build_head(kind: str, encoder: Encoder, n_per_class: int = 3, **kw) -> nn.Module:
    labels = toy_labels(n_per_class)
    if kind == "skeletongcl":
        return SkeletonGCL(encoder, labels.numel(), labels, **{**SMALL, **kw})
    return FRHead(encoder, labels.numel(), labels, input_shape=(3, T, V, encoder.num_person), **kw)


def prefill(model: SkeletonGCL, labels: Tensor, seed: int = 1) -> None:
    """Fill every bank slot with a random unit vector, so every anchor passes the gate."""
    g = torch.Generator().manual_seed(seed)
    bank = model.banks["graph"]
    bank.update(F.normalize(torch.randn(bank.size, bank.dim, generator=g), dim=1), labels, torch.arange(bank.size))


HEAD_KINDS = ("skeletongcl", "frhead")
ENCODER_KINDS = ("ctrgcn", "agcn")


# ---------------------------------------------------------------------------------------------
# Construction


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_unsupported_encoders_raise_a_clear_error(kind: str) -> None:
    hcn = HCN(num_class=K, num_joint=V, num_person=1, in_channel=3, window_size=T)
    with pytest.raises(ValueError, match=r"CTR-GCN.*2s-AGCN.*got HCN"):
        build_head(kind, hcn)


def test_registry_and_interface_are_uniform() -> None:
    assert HEADS == {"skeletongcl": SkeletonGCL, "frhead": FRHead}
    for cls in (SkeletonGCL, FRHead):
        params = list(inspect.signature(cls).parameters.values())
        assert [p.name for p in params[:3]] == ["encoder", "num_samples", "labels"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:])
        assert {"input_shape", "seed"} <= {p.name for p in params}  # what the trainer passes


#: --temperature of each command in OliverHxh/SkeletonGCL script/<family>/single_modality/<file>.sh
#: (cbd78de), streams in the order joint, bone, joint_motion, bone_motion
OFFICIAL_SCRIPTS = {
    ("ctrgcn", "ntu60_xsub"): ("ctr/single_modality/ntu_ctr_xsub.sh", (0.8, 0.5, 0.5, 0.5)),
    ("ctrgcn", "ntu60_xview"): ("ctr/single_modality/ntu_ctr_xview.sh", (0.8, 0.5, 1.0, 0.8)),
    ("ctrgcn", "ntu120_xsub"): ("ctr/single_modality/ntu120_ctr_xsub.sh", (0.8, 0.5, 0.8, 1.0)),
    ("ctrgcn", "ntu120_xset"): ("ctr/single_modality/ntu120_ctr_xset.sh", (0.5, 0.5, 0.5, 0.5)),
    ("agcn", "ntu60_xsub"): ("agcn/single_modality/ntu_agcn_xsub.sh", (0.5, 1.0, 0.5, 1.0)),
    ("agcn", "ntu60_xview"): ("agcn/single_modality/ntu_agcn_xview.sh", (0.8, 0.8, 1.0, 0.5)),
    ("agcn", "ntu120_xsub"): ("agcn/single_modality/ntu120_agcn_xsub.sh", (1.0, 1.0, 0.5, 0.5)),
    ("agcn", "ntu120_xset"): ("agcn/single_modality/ntu120_agcn_xset.sh", (0.8, 0.5, 1.0, 0.5)),
    # the NW-UCLA scripts pass no --temperature: main.py's default 0.8
    ("ctrgcn", "ucla"): ("ctr/single_modality/ucla_agcn.sh", (0.8, 0.8, 0.8, 0.8)),
    ("agcn", "ucla"): ("agcn/single_modality/ucla_agcn.sh", (0.8, 0.8, 0.8, 0.8)),
}


@pytest.mark.parametrize("encoder, benchmark", sorted(OFFICIAL_SCRIPTS))
def test_skeletongcl_temperature_is_the_official_scripts_per_cell(encoder, benchmark) -> None:
    enc = make_encoder(encoder)
    labels = toy_labels(3)
    kw = dict(K_pos=2, K_hard=4, K_rand=4)
    script, taus = OFFICIAL_SCRIPTS[encoder, benchmark]
    for stream, tau in zip(("joint", "bone", "joint_motion", "bone_motion"), taus):
        got = SkeletonGCL(enc, 30, labels, stream=stream, benchmark=benchmark, **kw).tau
        assert got == tau, f"{encoder} {benchmark} {stream}: tau {got}, official {tau} (script/{script})"
    assert SkeletonGCL(enc, 30, labels, stream="bone", benchmark=benchmark, tau=0.7, **kw).tau == 0.7  # a bound value wins


def test_skeletongcl_temperature_without_a_script_is_main_py_default() -> None:
    enc, labels, kw = make_encoder("ctrgcn"), toy_labels(3), dict(K_pos=2, K_hard=4, K_rand=4)
    assert SkeletonGCL(enc, 30, labels, **kw).tau == 0.8  # no benchmark given
    assert SkeletonGCL(enc, 30, labels, stream="bone", benchmark="my_dataset", **kw).tau == 0.8
    with pytest.raises(ValueError, match="unknown stream 'depth'"):
        SkeletonGCL(enc, 30, labels, stream="depth", **kw)


def test_skeletongcl_validates_like_csre() -> None:
    enc = make_encoder("ctrgcn")
    labels = toy_labels(3)
    with pytest.raises(ValueError, match="can never pass the gate"):  # 3 samples per class < K_pos
        SkeletonGCL(enc, 30, labels, K_pos=4, K_hard=4, K_rand=4)
    SkeletonGCL(enc, 30, labels, K_pos=4, K_hard=4, K_rand=4, small_classes="skip")
    with pytest.raises(ValueError, match="tau"):
        SkeletonGCL(enc, 30, labels, tau=0, **SMALL)
    with pytest.raises(ValueError, match="num_samples"):
        SkeletonGCL(enc, 31, labels, **SMALL)


def test_frhead_validates_its_arguments() -> None:
    enc = make_encoder("ctrgcn")
    with pytest.raises(ValueError, match="input_shape"):
        FRHead(enc, 30, toy_labels())
    with pytest.raises(ValueError, match="version"):
        FRHead(enc, 30, toy_labels(), input_shape=(3, T, V, 1), version="V9")
    with pytest.raises(ValueError, match="one weight per stage"):
        FRHead(enc, 30, toy_labels(), input_shape=(3, T, V, 1), stage_weights=(1.0,))
    with pytest.raises(ValueError, match="no blocks"):
        FRHead(enc, 30, toy_labels(), input_shape=(3, T, V, 1), stages=("l11",), stage_weights=(1.0,))
    with pytest.raises(ValueError, match="labels must lie"):
        FRHead(enc, 30, toy_labels() + K, input_shape=(3, T, V, 1))


# ---------------------------------------------------------------------------------------------
# SkeletonGCL: the graph, the projection, the loss


def _l10_input(encoder: Encoder, x: Tensor) -> Tensor:
    seen = []
    h = encoder.l10.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        encoder.features(x)
    finally:
        h.remove()
    return seen[0]


def official_graph(encoder: Encoder, x: Tensor, M: int) -> Tensor:
    """The official ``model.forward``'s second output, recomputed from l10's input."""
    h = _l10_input(encoder, x)  # (N·M, C, T', V)
    gcn = encoder.l10.gcn1
    N = h.shape[0] // M
    if isinstance(encoder, CTRGCN):
        graphs = []
        for conv in gcn.convs:  # CTRGC.forward up to the graph it returns (before alpha)
            x1, x2 = conv.conv1(h).mean(-2), conv.conv2(h).mean(-2)
            graphs.append(conv.conv4(torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))))
        g = torch.stack(graphs, 1)  # (N·M, 3, C, V, V)
        C = g.shape[2]
        return g.view(N, M, -1, C, V, V).mean(1).mean(2).view(N, -1)
    NM, C, Tq, _ = h.shape
    graphs = [torch.matmul(gcn.conv_a[i](h).permute(0, 3, 1, 2).contiguous().view(NM, V, gcn.inter_c * Tq),
                           gcn.conv_b[i](h).view(NM, gcn.inter_c * Tq, V)) for i in range(gcn.num_subset)]
    return torch.stack(graphs, 1).view(N, M, -1, V, V).mean(1).view(N, -1)


@pytest.mark.parametrize("name", ENCODER_KINDS)
def test_graph_feature_equals_the_official_graph(name: str) -> None:
    M = 2  # two persons: the person mean is exercised
    enc = perturb_parameters(make_encoder(name, num_person=M))
    model = build_head("skeletongcl", enc).train()
    x = torch.randn(3, 3, T, V, M)
    with torch.no_grad():
        fmap, graph = model.features_and_graph(x)
        ref = official_graph(enc, x, M)
        assert torch.allclose(fmap, enc.features(x), atol=1e-6)
    assert graph.shape == (3, 3 * V * V) == ref.shape
    assert torch.allclose(graph, ref, rtol=1e-5, atol=1e-6)
    assert model.trans.in_features == 3 * V * V and model.trans.out_features == 256


def test_graph_feature_averaging_and_flattening_by_hand() -> None:
    """CTR-GCN: mean over persons, then channels; 2s-AGCN: over persons; subset-major flattening."""
    N, M, C, Vs = 2, 2, 3, 2
    # g_k[n*M + m, c, u, v] = 1000 k + 100 n + 10 m + c + 0.1 (2 u + v)
    idx = {d: torch.arange(s, dtype=torch.float64) for d, s in zip("nmcuv", (N, M, C, Vs, Vs))}
    base = (100 * idx["n"].view(N, 1, 1, 1, 1) + 10 * idx["m"].view(1, M, 1, 1, 1) + idx["c"].view(1, 1, C, 1, 1)
            + 0.1 * (2 * idx["u"].view(1, 1, 1, Vs, 1) + idx["v"].view(1, 1, 1, 1, Vs)))
    subsets = [(1000 * k + base).view(N * M, C, Vs, Vs) for k in range(3)]
    for name in ENCODER_KINDS:
        model = build_head("skeletongcl", make_encoder(name))
        given = subsets if name == "ctrgcn" else [s[:, 0] for s in subsets]  # 2s-AGCN: (N·M, V, V)
        out = model.graph_feature(given, M)
        assert out.shape == (N, 3 * Vs * Vs)
        for n in range(N):
            for k in range(3):
                for u in range(Vs):
                    for v in range(Vs):
                        # mean over m of 10 m = 5; mean over c of c = 1 (CTR-GCN) or c = 0 only (2s-AGCN)
                        expected = 1000 * k + 100 * n + 5 + (1 if name == "ctrgcn" else 0) + 0.1 * (2 * u + v)
                        got = out[n, k * Vs * Vs + u * Vs + v].item()
                        assert got == pytest.approx(expected, abs=1e-9), (name, n, k, u, v)
    with pytest.raises(RuntimeError, match="expected 3 graphs"):
        model.graph_feature(subsets[:2], M)


def test_projection_has_the_official_init_and_random_draws() -> None:
    enc = make_encoder("ctrgcn")
    torch.manual_seed(5)
    model = build_head("skeletongcl", enc)
    after = torch.get_rng_state()
    torch.manual_seed(5)  # the official: InfoNCEGraph built right after the model
    ref = nn.Linear(3 * V * V, 256)
    nn.init.normal_(ref.weight, 0, math.sqrt(2.0 / K))
    assert torch.equal(torch.get_rng_state(), after)  # CSRE's placeholder projection drew nothing
    assert torch.equal(model.trans.weight, ref.weight)
    assert torch.equal(model.trans.bias, torch.zeros(256))
    assert model.trans.weight.std().item() == pytest.approx(math.sqrt(2.0 / K), rel=0.02)
    assert not hasattr(model, "global_proj") and model.branches == ("graph",)


@pytest.mark.parametrize("name", ENCODER_KINDS)
def test_loss_is_csre_infonce_on_the_projected_graph(name: str) -> None:
    enc = perturb_parameters(make_encoder(name))
    labels = toy_labels(3)
    model = build_head("skeletongcl", enc, tau=0.5, weight=2.0).train()
    prefill(model, labels)
    bank = model.banks["graph"]
    before = bank.features.clone()
    x, _ = toy_data(3)
    idx = torch.tensor([0, 4, 9, 13, 21, 27])
    y = labels[idx]
    g = torch.Generator().manual_seed(3)
    pos = torch.randint(0, 30, (6, 2), generator=g)  # recorded draws (any rows; not used: hardest positives)
    neg = torch.stack([torch.nonzero(labels != c).flatten()[torch.randperm(27, generator=g)[:4]] for c in y])
    model.inject_draws("graph", pos=pos, neg=neg)
    out = model(x[idx], y, idx)
    assert isinstance(out, CSREOutput) and set(out.terms) == {"graph"} and bool(out.valid["graph"].all())

    with torch.no_grad():
        _, graph = model.features_and_graph(x[idx])
        z = F.normalize(model.trans(graph), dim=1)
        after = before.clone()
        after[idx] = z
        assert torch.allclose(bank.features, after, atol=1e-6)  # written before the comparison
        ref = csre_infonce(z, after, bank.labels, bank.filled, y, **SMALL, tau=0.5, draw=fixed_draws(pos, neg))
    assert out.terms["graph"].item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert out.contrastive.item() == pytest.approx(2.0 * ref.loss.item(), rel=1e-5)
    assert out.terms["graph"].item() > 0


def test_projection_is_frozen_by_default_as_in_the_official_run() -> None:
    enc = perturb_parameters(make_encoder("ctrgcn"))
    model = build_head("skeletongcl", enc).train()
    assert not model.trans.weight.requires_grad and not model.trans.bias.requires_grad
    assert "trans.weight" in model.state_dict()  # restored from checkpoints all the same
    prefill(model, toy_labels())
    x, y = toy_data(3)
    out = model(x[:6], y[:6], torch.arange(6))
    out.contrastive.backward()
    assert model.trans.weight.grad is None
    # the contrast reaches the topology modules of l10 (pre-alpha graph: conv1, conv2, conv4)
    for conv in enc.l10.gcn1.convs:
        for sub in (conv.conv1, conv.conv2, conv.conv4):
            assert sub.weight.grad is not None and sub.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# FR-Head: the hand case and the slow reference


def reference_renovate(f: Tensor, labels: Tensor, logits: Tensor, avg_f: Tensor, *, alp: float = 0.125,
                       tmp: float = 0.125, mom: float = 0.9, version: str = "V0", pred_threshold: float = 0.0,
                       use_p_map: bool = True) -> tuple[float, Tensor]:
    """RenovateNet after ``cl_fc``, written out per sample and per class in float64.

    Returns (loss, updated prototypes (h, K)).
    """
    f, logits, avg_f = f.double(), logits.double(), avg_f.double()
    N, K_ = logits.shape
    p = torch.softmax(logits, 1)
    pred = [int(logits[n].argmax()) for n in range(N)]
    y = [int(v) for v in labels]

    def mean_of(rows: list[int]) -> Tensor:
        return sum((f[n] for n in rows), torch.zeros_like(f[0])) / max(len(rows), 1)

    def unit(v: Tensor) -> Tensor:
        return v / (v.norm() + 1e-12)

    proto, mu_fn, mu_fp, has_fn, has_fp = [], [], [], [], []
    for k in range(K_):
        tp = [n for n in range(N) if y[n] == k and pred[n] == k and p[n, k] > pred_threshold]
        fn = [n for n in range(N) if y[n] == k and pred[n] != k]
        fp = [n for n in range(N) if y[n] != k and pred[n] == k]
        proto.append(mom * avg_f[:, k] + (1 - mom) * mean_of(tp) if tp else avg_f[:, k])
        mu_fn.append(mean_of(fn))
        mu_fp.append(mean_of(fp))
        has_fn.append(1.0 if fn else 0.0)
        has_fp.append(1.0 if fp else 0.0)

    def ce(z: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in z)) - z[target]

    total = 0.0
    for n in range(N):
        fz = unit(f[n])
        s_mem = [float(fz @ unit(proto[k])) for k in range(K_)]
        z_fn, z_fp = list(s_mem), list(s_mem)
        is_tp = pred[n] == y[n] and p[n, y[n]] > pred_threshold
        if version == "V2":
            for k in range(K_):
                z_fn[k] += (float(unit(proto[k]) @ unit(mu_fn[k])) - 1) * has_fn[k]
                z_fp[k] += (-float(unit(proto[k]) @ unit(mu_fp[k])) - 1) * has_fp[k]
            w = 1 - float(p[n, y[n]])
            total += w * ce([v / tmp for v in z_fn], y[n]) + w * ce([v / tmp for v in z_fp], y[n])
            continue
        k = y[n]  # only the true class column carries the calibration
        q = alp * ((1 - float(p[n, k])) if use_p_map else 1.0)
        gate = (1.0 if is_tp else 0.0) if version in ("V1", "NO FN", "NO FP") else 1.0
        if version not in ("NO FN", "NO FN & FP"):
            z_fn[k] += (float(fz @ unit(mu_fn[k])) - 1) * q * has_fn[k] * gate
        if version not in ("NO FP", "NO FN & FP"):
            z_fp[k] += (-float(fz @ unit(mu_fp[k])) - 1) * q * has_fp[k] * gate
        total += ce([v / tmp for v in z_fn], k) + ce([v / tmp for v in z_fp], k)
    return total / N, torch.stack(proto, 1)


def identity_renovate(h: int, n_class: int, avg_f: Tensor, **kw) -> Renovate:
    net = Renovate(h, n_class, h_channel=h, **kw)
    with torch.no_grad():
        net.cl_fc.weight.copy_(torch.eye(h))
        net.cl_fc.bias.zero_()
        net.avg_f.copy_(avg_f)
    return net


def test_prototype_momentum_and_fn_fp_calibration_by_hand() -> None:
    """Three classes, h = 2, cl_fc = identity; everything below is worked out by hand.

    A: f = (2, 0), y = 0, predicted 0 (TP of 0).  B: f = (1, 1), y = 0, predicted 1 (FN of 0, FP of 1).
    C: f = (0, 2), y = 1, predicted 1 (TP of 1).  Class 2: nothing in the batch.
    """
    avg_f = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, -0.4]])  # prototypes e1, e2, (0.3, -0.4)
    net = identity_renovate(2, 3, avg_f)
    f = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    loss = net(f, labels, logits)

    # momentum: m0 = 0.9 (1, 0) + 0.1 (2, 0) = (1.1, 0); m1 = 0.9 (0, 1) + 0.1 (0, 2) = (0, 1.1); m2 unchanged
    assert torch.allclose(net.avg_f, torch.tensor([[1.1, 0.0, 0.3], [0.0, 1.1, -0.4]]), atol=1e-6)

    e = math.e
    pA = pC = e / (e + 2)  # softmax(1, 0, 0)[0] and softmax(0, 1, 0)[1]
    alp, tmp, r = 0.125, 0.125, 1 / math.sqrt(2)
    cos_m2 = lambda v: (0.3 * v[0] - 0.4 * v[1]) / 0.5  # noqa: E731 - cosine with prototype 2 (norm 0.5)

    def ce(z):
        return math.log(sum(math.exp(v / tmp) for v in z)) - z[0] / tmp  # target moved to index 0 below

    # A (unit (1, 0)): s_mem = (1, 0, 0.6). FN of class 0 = B, mean (1, 1): fn term (r - 1)(1 - pA) alp.
    # no FP of class 0 -> the FP branch is s_mem.
    sA = [1.0, 0.0, cos_m2((1, 0))]
    lA = ce([sA[0] + (r - 1) * (1 - pA) * alp, sA[1], sA[2]]) + ce(sA)
    # B (unit (r, r)): s_mem = (r, r, cos_m2). fn term (cos((r, r), (r, r)) - 1) = 0; no FP of class 0.
    sB = [r, r, cos_m2((r, r))]
    lB = ce(sB) + ce(sB)
    # C (unit (0, 1)), target class 1: s_mem = (0, 1, -0.8). No FN of class 1; FP of class 1 = B,
    # mean (1, 1): fp term (-r - 1)(1 - pC) alp on column 1.
    sC = [1.0, 0.0, cos_m2((0, 1))]  # reordered: target first
    lC = ce(sC) + ce([sC[0] + (-r - 1) * (1 - pC) * alp, sC[1], sC[2]])
    assert loss.item() == pytest.approx((lA + lB + lC) / 3, rel=1e-6)

    ref_loss, ref_proto = reference_renovate(f.detach(), labels, logits, avg_f)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-6)
    assert torch.allclose(net.avg_f.double(), ref_proto, atol=1e-6)
    loss.backward()  # gradient through the features, the class means and the TP part of the prototypes
    assert f.grad is not None and f.grad.abs().sum() > 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_renovate_equals_the_slow_reference(version: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    N, h, n_in, K_ = 12, 6, 5, 4
    threshold, use_p_map = [(0.0, True), (0.4, True), (0.0, False)][seed]
    net = Renovate(n_in, K_, h_channel=h, version=version, pred_threshold=threshold, use_p_map=use_p_map)
    x = torch.randn(N, n_in, generator=g)
    labels = torch.randint(0, K_ - 1, (N,), generator=g)  # the last class never appears as a label
    logits = 2 * torch.randn(N, K_, generator=g)
    avg_f = net.avg_f.clone()
    loss = net(x, labels, logits)
    with torch.no_grad():
        ref_loss, ref_proto = reference_renovate(net.cl_fc(x), labels, logits, avg_f, version=version,
                                                 pred_threshold=threshold, use_p_map=use_p_map)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert torch.allclose(net.avg_f.double(), ref_proto, atol=1e-5)


def test_strenovate_pools_persons_then_axes() -> None:
    torch.manual_seed(0)
    C, Tq, Vq, M, N = 8, 5, 4, 2, 3
    net = STRenovate(C, Tq, Vq, n_class=3, h_channel=16)  # spatial: 16 // 4 = 4 channels, temporal: 16 // 5 = 3
    assert net.spatio_cl_net.cl_fc.in_features == 16 and net.tempor_cl_net.cl_fc.in_features == 15
    seen = {}
    net.spatio_cl_net.register_forward_pre_hook(lambda m, a: seen.__setitem__("s", a[0]))
    net.tempor_cl_net.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", a[0]))
    x = torch.randn(N * M, C, Tq, Vq)
    net(x, torch.tensor([0, 1, 2]), torch.randn(N, 3), M)
    per_sample = x.view(N, M, C, Tq, Vq).mean(1)
    s = net.spatio_squeeze(per_sample.mean(2, keepdim=True))  # (N, 4, 1, V)
    t = net.tempor_squeeze(per_sample.mean(3, keepdim=True))  # (N, 3, T, 1)
    assert torch.allclose(seen["s"], s.reshape(N, -1)) and torch.allclose(seen["t"], t.reshape(N, -1))
    with pytest.raises(ValueError, match="built for"):
        net(torch.randn(N * M, C, Tq + 1, Vq), torch.tensor([0, 1, 2]), torch.randn(N, 3), M)


@pytest.mark.parametrize("name", ENCODER_KINDS)
def test_frhead_taps_the_four_stages(name: str) -> None:
    enc = make_encoder(name)
    model = FRHead(enc, 30, toy_labels(), input_shape=(3, 13, V, 1))  # odd T: l5 gives 7, not 13 // 2
    shapes = {s: (m.n_channel, m.n_frame, m.n_joint) for s, m in model.stages.items()}
    assert shapes == {"l1": (64, 13, V), "l5": (128, 7, V), "l8": (256, 4, V), "l10": (256, 4, V)}
    assert model.stage_weights == {"l1": 0.1, "l5": 0.2, "l8": 0.5, "l10": 1.0} and model.weight == 0.1
    model = build_head("frhead", enc).train()
    x, y = toy_data(1)
    out = model(x, y)
    assert set(out.terms) == {"l1", "l5", "l8", "l10"} and all(v.all() for v in out.valid.values())
    total = 0.1 * sum(w * out.terms[s] for s, w in zip(("l1", "l5", "l8", "l10"), (0.1, 0.2, 0.5, 1.0)))
    assert out.contrastive.item() == pytest.approx(total.item(), rel=1e-6)
    # each stage got the official block output and the detached logits
    seen = {}
    hooks = [model.stages[s].register_forward_pre_hook(lambda m, a, s=s: seen.__setitem__(s, a))
             for s in model.stage_names]
    model(x, y)
    for hk in hooks:
        hk.remove()
    assert not seen["l10"][2].requires_grad and seen["l10"][1].equal(y)
    assert torch.allclose(seen["l10"][0], enc.features(x), atol=1e-6)


def test_frhead_loads_official_stage_names() -> None:
    enc = make_encoder("ctrgcn")
    model = build_head("frhead", enc)
    official = {}
    for k, v in model.state_dict().items():
        if k.endswith("avg_f"):
            continue  # not in official checkpoints
        for ours, theirs in zip(("l1", "l5", "l8", "l10"), ("ren_low", "ren_mid", "ren_high", "ren_fin")):
            k = k.replace(f"stages.{ours}.", f"{theirs}.") if k.startswith(f"stages.{ours}.") else k
        official["module." + k.removeprefix("encoder.")] = v + 1 if v.is_floating_point() else v
    fresh = build_head("frhead", make_encoder("ctrgcn", seed=1), seed=3)
    protos = {k: v.clone() for k, v in fresh.state_dict().items() if k.endswith("avg_f")}
    fresh.load_official_state_dict(official)
    for k, v in model.state_dict().items():
        if k.endswith("avg_f"):
            assert torch.equal(fresh.state_dict()[k], protos[k])  # kept
        elif v.is_floating_point():
            assert torch.equal(fresh.state_dict()[k], v + 1), k
    official["ren_fin.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        fresh.load_official_state_dict(official)


# ---------------------------------------------------------------------------------------------
# Both heads: gradients, toy training, eval, export, checkpoints


@pytest.mark.parametrize("name", ENCODER_KINDS)
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_every_parameter_gets_a_gradient(kind: str, name: str) -> None:
    enc = make_encoder(name)
    kw = {"train_projection": True} if kind == "skeletongcl" else {}
    model = perturb_parameters(build_head(kind, enc, **kw)).train()
    x, y = toy_data(1)
    if kind == "skeletongcl":
        prefill(model, toy_labels())
    out = model(x, y, torch.arange(10))
    assert out.contrastive.item() > 0
    (F.cross_entropy(out.logits, y) + out.contrastive).backward()
    assert parameters_without_gradient(model) == []
    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    assert head and all(p.grad.abs().sum() > 0 for p in head)


def toy_training(kind: str, epochs: int = 4, n_per_class: int = 2) -> list[tuple[float, float]]:
    """SGD on the toy set; (total, contrastive) per step."""
    torch.manual_seed(0)
    enc = make_encoder("ctrgcn")
    kw = {"train_projection": True} if kind == "skeletongcl" else {}
    model = build_head(kind, enc, n_per_class=n_per_class, **kw).train()
    x, y = toy_data(n_per_class, noise=0.05)
    n = y.numel()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    if kind == "skeletongcl":  # one pass to fill the bank (the gate), as the first epoch does
        with torch.no_grad():
            for b in torch.randperm(n, generator=order).split(10):
                model(x[b], y[b], b)
    history = []
    for _epoch in range(epochs):
        for b in torch.randperm(n, generator=order).split(10):
            out = model(x[b], y[b], b)
            loss = F.cross_entropy(out.logits, y[b]) + out.contrastive
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append((loss.item(), out.contrastive.item()))
    return history


@pytest.mark.slow
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_loss_goes_down_on_a_toy_problem(kind: str) -> None:
    """Small CTR-GCN, NW-UCLA shapes (T = 16, V = 20, M = 1, 10 classes), SGD on a separable set."""
    history = toy_training(kind)
    assert all(math.isfinite(v) for h in history for v in h)
    first = [sum(v) / 2 for v in zip(*history[:2])]
    last = [sum(v) / 2 for v in zip(*history[-2:])]
    assert last[0] < 0.8 * first[0], history  # the total
    assert last[1] < first[1], history  # the contrastive term alone
    assert history[0][1] > 0  # the contrastive term was active from the first step


@pytest.mark.parametrize("name", ENCODER_KINDS)
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_eval_returns_exactly_the_encoder_logits_and_changes_no_state(kind: str, name: str) -> None:
    enc = perturb_parameters(make_encoder(name))
    model = build_head(kind, enc).train()
    x, y = toy_data(1)
    x, y = x[:4], y[:4]
    model(x, y, torch.arange(4))  # a training step leaves no hooks behind
    assert all(not m._forward_hooks for m in enc.modules())  # noqa: SLF001
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    with torch.no_grad():
        got = model(x)
        assert torch.equal(got, enc(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_export_loads_strictly_into_the_bare_encoder(kind: str) -> None:
    enc = perturb_parameters(make_encoder("agcn"))
    model = build_head(kind, enc).train()
    x, y = toy_data(1)
    x, y = x[:4], y[:4]
    model(x, y, torch.arange(4))
    sd = model.export()
    assert set(sd) == set(enc.state_dict())
    bare = make_encoder("agcn", seed=9)
    bare.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.equal(bare.eval()(x), model.eval()(x))


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_state_dict_round_trip_restores_banks_prototypes_and_draws(kind: str) -> None:
    def step(model: nn.Module, b: Tensor, opt: torch.optim.Optimizer) -> float:
        out = model(x[b], y[b], b)
        opt.zero_grad()
        (F.cross_entropy(out.logits, y[b]) + out.contrastive).backward()
        opt.step()
        return out.contrastive.item()

    x, y = toy_data(3)
    batches = [torch.tensor([0, 3, 11, 14, 22, 25]), torch.tensor([1, 4, 12, 15, 23, 26]),
               torch.tensor([2, 5, 13, 16, 24, 27])]
    kw = {"seed": 4}
    model = build_head(kind, perturb_parameters(make_encoder("ctrgcn")), **kw).train()
    if kind == "skeletongcl":
        prefill(model, toy_labels())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    step(model, batches[0], opt)
    saved = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    expected = [step(model, b, opt) for b in batches[1:]]
    final = model.state_dict()

    fresh = build_head(kind, make_encoder("ctrgcn", seed=7), seed=11).train()
    fresh.load_state_dict(saved)
    if kind == "skeletongcl":
        assert torch.equal(fresh.banks["graph"].features, saved["banks.graph.features"])
        assert torch.equal(fresh.banks["graph"].filled, saved["banks.graph.filled"])
        assert fresh.seed == 4
    else:
        protos = [k for k in saved if k.endswith("avg_f")]
        assert len(protos) == 8 and all(torch.equal(fresh.state_dict()[k], saved[k]) for k in protos)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.01)
    opt2.load_state_dict(opt_state)
    assert [step(fresh, b, opt2) for b in batches[1:]] == expected  # bit for bit, random draws included
    for k, v in fresh.state_dict().items():
        if isinstance(v, Tensor):
            assert torch.equal(v, final[k]), k


# ---------------------------------------------------------------------------------------------
# The gin files (values only; the classes are registered by harness/configurables.py)

GIN_FILES = {"skeletongcl": ("gin/heads/skeletongcl.gin", SkeletonGCL, "models.SkeletonGCL"),
             "frhead": ("gin/heads/frhead.gin", FRHead, "models.FRHead")}
RUNTIME = {"encoder", "num_samples", "labels", "input_shape", "seed"}


def gin_bindings(path: Path, selector: str) -> dict[str, object]:
    bindings = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(rf"{re.escape(selector)}\.(\w+)\s*=\s*(.+)", line)
        assert m, f"{path.name}: unexpected line {line!r} (only {selector}.* bindings)"
        bindings[m.group(1)] = ast.literal_eval(m.group(2))
    return bindings


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_gin_file_binds_the_official_values(kind: str) -> None:
    rel, cls, selector = GIN_FILES[kind]
    bindings = gin_bindings(REPO / rel, selector)
    params = inspect.signature(cls).parameters
    assert set(bindings) <= set(params) - RUNTIME
    for name, value in bindings.items():  # the constructor defaults are the official values
        assert value == params[name].default, name
    small = {k: v for k, v in bindings.items() if k not in ("K_pos", "K_hard", "K_rand")}  # 3 samples per class
    model = build_head(kind, make_encoder("ctrgcn"), **small)
    assert isinstance(model, cls)
    if kind == "skeletongcl":
        text = (REPO / rel).read_text()
        assert "0.5" in text and "bone" in text  # the per-stream temperature is documented


# ---------------------------------------------------------------------------------------------
# FR-Head under DDP: two gloo processes, prototypes identical and equal to the global batch's


def _ddp_renovate() -> tuple[Renovate, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    net = Renovate(5, 4, h_channel=6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 2])
    logits = torch.randn(8, 4, generator=g)
    logits[labels == 2, 2] += 5.0  # class 2: TPs on both ranks; class 3: a TP only on rank 0 (row 3)
    logits[3, 3] += 9.0
    return net, x, labels, logits


def _ddp_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        net, x, labels, logits = _ddp_renovate()
        sl = slice(rank * 4, (rank + 1) * 4)
        loss = net(x[sl], labels[sl], logits[sl])
        torch.save({"avg_f": net.avg_f.clone(), "loss": loss.detach()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_prototypes_are_identical_and_use_the_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    net, x, labels, logits = _ddp_renovate()
    single = Renovate(5, 4, h_channel=6)
    single.load_state_dict(net.state_dict())
    single(x, labels, logits)  # the global batch on one process
    for r in ranks:
        assert torch.allclose(r["avg_f"], single.avg_f, atol=1e-6)
    for rank, r in enumerate(ranks):  # each rank's loss: its own batch, as a per-GPU official run
        local = Renovate(5, 4, h_channel=6)
        local.load_state_dict(net.state_dict())
        sl = slice(rank * 4, (rank + 1) * 4)
        assert r["loss"].item() == pytest.approx(local(x[sl], labels[sl], logits[sl]).item(), rel=1e-6)
