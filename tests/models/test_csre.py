"""CSRE head (models/csre.py): STFD, memory banks, the vectorised InfoNCE and the CSRE wrapper.

* Against the official implementation: every ``stfd_*.pt`` and ``loss_*.pt`` under
  ``$CSRE_REFERENCE_DIR/csre`` (format and tolerances in that directory's README), discovered
  generically so held-out cases with the same layout run too. The random negatives are injected
  from the recorded draws.
* Against :func:`reference_infonce` below: a slow, readable per-anchor loop (the official
  algorithm, generalised to the R / H / R+H strategies and the clamp policy), on random cases.
* The wrapper: gradients, eval == encoder, export, checkpoint round trip, every registered
  encoder, gin files, DDP on two gloo processes (including the cross-rank seed check).
* The wrapper's own random draws (distinct, allowed, uniform), STFD's axes on a non-square map
  (generic and HCN), FIFO banks judged by the expected queue share.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import registry
import models.csre as csre_module
from models.csre import (CSRE, STFD, BankContrast, VARIANTS, MemoryBank, SampleSpace, complement_space, csre_infonce, draw_ranks,
                         draw_widths, fifo_share, fixed_draws, mask_space, random_ranks, random_rows)
from models.hcn import HCN
from models.encoder import Encoder, mean_pool
from tests.conftest import REPO, assert_scaled_close, fixture_params, reference_dir, require_fixture


def csre_dir() -> Path:
    return reference_dir() / "csre"


def _discover(pattern: str) -> list[Path]:
    root = csre_dir()
    return sorted(root.rglob(pattern)) if root.is_dir() else []


STFD_FAMILY, LOSS_FAMILY = "csre stfd (stfd_*.pt)", "csre loss (loss_*.pt)"
STFD_FIXTURES = fixture_params(_discover("stfd_*.pt"), STFD_FAMILY)
LOSS_FIXTURES = fixture_params(_discover("loss_*.pt"), LOSS_FAMILY)

_cache: dict[Path, dict] = {}


def load(path: Path) -> dict:
    if path not in _cache:
        _cache[path] = torch.load(path, weights_only=False)
    return _cache[path]


def max_abs(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.detach() - b).abs().max().item() if a.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# Small helpers: a tiny encoder, random banks


class TinyEncoder(Encoder):
    """A 1x1 conv + temporal stride-2 conv encoder without BatchNorm (exact under DDP splits)."""

    def __init__(self, in_channels: int = 3, num_class: int = 5, num_person: int = 2, width: int = 16) -> None:
        super().__init__()
        self.num_class, self.num_person, self.out_channels = num_class, num_person, width
        self.conv = nn.Conv2d(in_channels, width, (3, 1), stride=(2, 1), padding=(1, 0))
        self.fc = nn.Linear(width, num_class)

    def features(self, x: Tensor) -> Tensor:
        N, C, T, V, M = x.shape
        x = x.permute(0, 4, 1, 2, 3).reshape(N * M, C, T, V)
        return F.relu(self.conv(x))  # (N·M, width, T/2, V)

    def head(self, features: Tensor, num_person: int) -> Tensor:
        return self.fc(mean_pool(features, num_person))


def toy_labels(num_samples: int, num_class: int) -> Tensor:
    return torch.arange(num_samples) % num_class


def tiny_csre(num_samples: int = 60, num_class: int = 4, *, seed: int = 0, **kw) -> CSRE:
    kw = {"dim": 8, "r": 2, "K_pos": 3, "K_hard": 6, "K_rand": 5, "tau": 0.5, **kw}
    torch.manual_seed(seed)
    enc = TinyEncoder(num_class=num_class)
    return CSRE(enc, num_samples, toy_labels(num_samples, num_class), input_shape=(3, 8, 5, 2), seed=seed, **kw)


def prefill(model: CSRE, fraction: float = 0.8, seed: int = 1) -> None:
    """Fill a random part of every bank with random unit vectors (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    for bank in model.banks.values():
        S, d = bank.features.shape
        feats = F.normalize(torch.randn(S, d, generator=g), dim=1)
        filled = torch.rand(S, generator=g) < fraction
        bank.features.copy_(torch.where(filled[:, None], feats, 0.0))
        bank.filled.copy_(filled)


def toy_batch(n: int = 6, num_samples: int = 60, num_class: int = 4, seed: int = 2, T: int = 8, V: int = 5, M: int = 2):
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(num_samples, generator=g)[:n]
    return torch.randn(n, 3, T, V, M, generator=g), toy_labels(num_samples, num_class)[index], index


# ---------------------------------------------------------------------------------------------
# The slow reference: one anchor at a time, as the official ContrastLoss


def reference_infonce(z: Tensor, bank: Tensor, bank_labels: Tensor, filled: Tensor, labels: Tensor, *,
                      K_pos: int, K_hard: int, K_rand: int, tau: float, pos_strategy: str, neg_strategy: str,
                      rand_pos: Tensor | None = None, rand_neg: Tensor | None = None,
                      available: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, list[bool]]:
    """Per-anchor loop: gate, sorted hardest sets, recorded random sets, explicit 1 + k logit rows.

    ``bank`` must already hold the batch. Random sets: the first k entries of the anchor's row of
    ``rand_pos`` / ``rand_neg`` (each must lie in the anchor's positives / negatives).
    """
    rows, valid = [], []
    bank = bank.detach()
    for i in range(z.shape[0]):
        sim = bank @ z[i]  # (S,)
        pos = torch.nonzero(filled.bool() & (bank_labels == labels[i])).flatten()
        neg = torch.nonzero(filled.bool() & (bank_labels != labels[i])).flatten()
        k_pos, k_hard, k_rand = K_pos, K_hard, K_rand
        if available is not None:
            k_pos = max(1, min(K_pos, int(available[0][i])))
            k_hard = max(1, min(K_hard, int(available[1][i])))
            k_rand = max(1, min(K_rand, int(available[1][i])))
        need_neg = max(k_hard if "H" in neg_strategy else 0, k_rand if "R" in neg_strategy else 0)
        if len(pos) < k_pos or len(neg) < need_neg:
            valid.append(False)
            continue
        valid.append(True)
        pos_sets, neg_sets = [], []
        if "H" in pos_strategy:
            pos_sets.append(pos[torch.sort(sim[pos]).indices[:k_pos]])  # lowest similarity
        if "R" in pos_strategy:
            chosen = rand_pos[i, :k_pos]
            assert set(chosen.tolist()) <= set(pos.tolist()) and len(set(chosen.tolist())) == k_pos
            pos_sets.append(chosen)
        if "H" in neg_strategy:
            neg_sets.append(neg[torch.sort(sim[neg], descending=True).indices[:k_hard]])  # highest
        if "R" in neg_strategy:
            chosen = rand_neg[i, :k_rand]
            assert set(chosen.tolist()) <= set(neg.tolist()) and len(set(chosen.tolist())) == k_rand
            neg_sets.append(chosen)
        for P in pos_sets:
            for Q in neg_sets:
                for j in P:
                    logits = torch.cat([sim[j:j + 1], sim[Q]]) / tau  # (1 + k,)
                    rows.append(F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long)))
    loss = torch.stack(rows).mean() if rows else z.sum() * 0
    return loss, valid


def random_case(seed: int, n: int = 8, S: int = 90, d: int = 16, num_class: int = 4, fill: float = 0.7):
    """A partly filled bank after the batch write, anchors with grad, and duplicated-class anchors."""
    g = torch.Generator().manual_seed(seed)
    bank_labels = torch.randint(0, num_class, (S,), generator=g)
    bank = F.normalize(torch.randn(S, d, generator=g), dim=1)
    filled = torch.rand(S, generator=g) < fill
    index = torch.randperm(S, generator=g)[:n]
    labels = bank_labels[index]
    f = torch.randn(n, d, generator=g).requires_grad_()
    z = F.normalize(f, dim=1)
    bank = bank.clone()
    bank[index] = z.detach()  # write before compare
    filled = filled.clone()
    filled[index] = True
    return f, z, bank, bank_labels, filled, labels


def candidates_of(bank_labels: Tensor, labels: Tensor, extra_pad: int = 3, seed: int = 0) -> Tensor:
    """(n, W) slots holding each anchor's label, in a shuffled order, padded with -1."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.nonzero(bank_labels == y).flatten() for y in labels]
    width = max(len(r) for r in rows) + extra_pad
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r[torch.randperm(len(r), generator=g)]
    return out


# ---------------------------------------------------------------------------------------------
# Against the official implementation: STFD


@pytest.mark.reference
@pytest.mark.parametrize("path", STFD_FIXTURES)
def test_stfd_matches_official(path: Path | None) -> None:
    fx = load(require_fixture(path, STFD_FAMILY))
    meta = fx["meta"]
    std = STFD(meta["C"], meta["V"], meta["T_prime"], dim=meta["out_dim"], r=meta["reduction"])
    assert list(std.state_dict()) == list(fx["state_dict"])
    std.load_state_dict(fx["state_dict"], strict=True)
    x = fx["x"].clone().requires_grad_()
    x_s, x_t = std(x, meta["M"])
    # README tolerances, scaled by max(1, max|ref|): the files may come from another CPU
    assert_scaled_close(x_s, fx["x_s"], 1e-5, "x_s")
    assert_scaled_close(x_t, fx["x_t"], 1e-5, "x_t")
    with torch.no_grad():
        s_person, t_person = std(fx["x"], 1)  # every row its own sample: the per-person outputs
    assert_scaled_close(s_person, fx["x_s_person"], 1e-5, "x_s_person")
    assert_scaled_close(t_person, fx["x_t_person"], 1e-5, "x_t_person")
    ((x_s * fx["probe_s"]).sum() + (x_t * fx["probe_t"]).sum()).backward()
    assert_scaled_close(x.grad, fx["grad_x"], 1e-6, "grad_x")


@pytest.mark.reference
@pytest.mark.parametrize("path", STFD_FIXTURES)
def test_stfd_keys_carry_the_official_prefix_inside_csre(path: Path | None) -> None:
    fx = load(require_fixture(path, STFD_FAMILY))
    meta = fx["meta"]
    enc = TinyEncoder(width=meta["C"], num_person=meta["M"])
    model = CSRE(enc, 8, toy_labels(8, 2), feature_size=(meta["T_prime"], meta["V"]), K_pos=1, K_hard=1,
                 K_rand=1, dim=meta["out_dim"], r=meta["reduction"])
    std_keys = [k for k in model.state_dict() if k.startswith("std.")]
    assert std_keys == [f"std.{k}" for k in fx["state_dict"]]
    official = {**enc.state_dict(), **{f"std.{k}": v for k, v in fx["state_dict"].items()}}
    model.load_official_state_dict(official)
    assert torch.equal(model.std.convs.weight, fx["state_dict"]["convs.weight"])


# ---------------------------------------------------------------------------------------------
# STFD axes: spatial = pooled over T' (axis 2), temporal = pooled over V (axis 3)


def _stfd_axis_checks(std: STFD, x: Tensor, M: int) -> None:
    """Zero-mean changes along T' leave x_s alone and move x_t; along V the other way round."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s, t = std(x, M)
        d = torch.randn(x.shape, generator=g) * x.abs().mean()
        s_T, t_T = std(x + (d - d.mean(2, keepdim=True)), M)  # same mean over T'
        s_V, t_V = std(x + (d - d.mean(3, keepdim=True)), M)  # same mean over V
        s_pT, t_pT = std(x.flip(2), M)  # reversed in time
        s_pV, t_pV = std(x.flip(3), M)  # V reversed
    close = lambda a, b: torch.allclose(a, b, atol=1e-5, rtol=1e-4)  # noqa: E731
    assert close(s_T, s) and close(s_pT, s), "the spatial branch must average over T' (axis 2) only"
    assert close(t_V, t) and close(t_pV, t), "the temporal branch must average over V (axis 3) only"
    assert not close(t_T, t) and not close(t_pT, t), "the temporal branch must see the T' axis"
    assert not close(s_V, s) and not close(s_pV, s), "the spatial branch must see the V axis"


def test_stfd_axes_on_a_non_square_map() -> None:
    """T' = 5, V = 7: the spatial branch is a function of mean_T'(x) (C, V), the temporal of mean_V(x) (C, T')."""
    N, M, C, T_, V = 3, 2, 16, 5, 7
    torch.manual_seed(0)
    std = STFD(C, V, T_, dim=12, r=4)
    assert std.convs.in_features == 4 * V and std.convt.in_features == 4 * T_
    x = torch.randn(N * M, C, T_, V).relu()
    _stfd_axis_checks(std, x, M)
    with torch.no_grad():
        s, t = std(x, M)
        # a map constant along T' is just its (C, V) profile for the spatial branch, channel-major flatten
        prof_V = x.mean(2)  # (N·M, C, V)
        hid = torch.einsum("kc,ncv->nkv", std.conv1.weight[:, :, 0], prof_V) + std.conv1.bias[:, None]
        s_ref = (hid.flatten(1) @ std.convs.weight.t() + std.convs.bias).view(N, M, -1).mean(1)
        assert torch.allclose(std(prof_V[:, :, None, :].expand(-1, -1, T_, -1), M)[0], s_ref, atol=1e-5)
        prof_T = x.mean(3)  # (N·M, C, T')
        hid = torch.einsum("kc,nct->nkt", std.conv2.weight[:, :, 0], prof_T) + std.conv2.bias[:, None]
        t_ref = (hid.flatten(1) @ std.convt.weight.t() + std.convt.bias).view(N, M, -1).mean(1)
        assert torch.allclose(std(prof_T[:, :, :, None].expand(-1, -1, -1, V), M)[1], t_ref, atol=1e-5)
        assert torch.allclose(s, s_ref, atol=1e-5) and torch.allclose(t, t_ref, atol=1e-5)
    with pytest.raises(ValueError, match="feature map"):  # the transposed map is rejected, not misread
        std(x.transpose(2, 3), M)


def test_hcn_feature_map_larger_than_1x1_feeds_stfd() -> None:
    """HCN's map is (N·M, C', T/16, window/16): axis 2 (T') follows the clip length, axis 3 (the "V" of
    STFD) the co-occurrence window. A 5 x 7 map: STFD pools time in the spatial branch, the window
    axis in the temporal branch; a 5 x 5 map (clip = window, as HCN's head needs) trains."""
    def hcn(window: int) -> HCN:
        torch.manual_seed(0)
        return HCN(in_channel=3, num_joint=25, num_person=2, out_channel=8, window_size=window, num_class=5)

    labels = toy_labels(20, 5)
    kw = dict(dim=16, r=4, K_pos=2, K_hard=4, K_rand=4)
    model = CSRE(hcn(112), 20, labels, input_shape=(3, 80, 25, 2), **kw)
    assert model.feature_size == (5, 7) and (model.std.num_frame, model.std.num_point) == (5, 7)
    assert CSRE(hcn(80), 20, labels, input_shape=(3, 112, 25, 2), **kw).feature_size == (7, 5)
    x = torch.randn(2, 3, 80, 25, 2, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        fmap = model.encoder.features(x)
    assert fmap.shape == (4, 32, 5, 7)
    _stfd_axis_checks(model.std, fmap, 2)

    model = CSRE(hcn(80), 20, labels, input_shape=(3, 80, 25, 2), **kw).train()
    assert model.feature_size == (5, 5)
    prefill(model, fraction=1.0)
    index = torch.tensor([0, 1])
    out = model(x, labels[index], index)
    assert all(v.all() for v in out.valid.values()) and out.contrastive.item() > 0
    (F.cross_entropy(out.logits, labels[index]) + out.contrastive).backward()
    assert model.std.convs.weight.grad.abs().sum() > 0 and model.std.convt.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Against the official implementation: the loss, with the recorded random draws


def _fixture_bank(fx: dict, b: str) -> MemoryBank:
    bank = MemoryBank(fx[f"bank_before_{b}"].shape[1], fx["label_all"])
    bank.features.copy_(fx[f"bank_before_{b}"])
    bank.filled.copy_(fx["flag_before"].bool())
    return bank


def _loss_kwargs(meta: dict) -> dict:
    return dict(K_pos=meta["positive_num"], K_hard=meta["negative_num"], K_rand=meta["negative_num"],
                tau=meta["temperature"])


def _loss_tol(value: Tensor) -> float:
    """The README's loss tolerance, already scale-aware: 1e-5 x max(1, |value|)."""
    return 1e-5 * max(1.0, abs(float(value)))


@pytest.mark.reference
@pytest.mark.parametrize("positives", ["scan", "candidates"])
@pytest.mark.parametrize("bank_name", ["s", "t"])
@pytest.mark.parametrize("path", LOSS_FIXTURES)
def test_loss_matches_official(path: Path | None, bank_name: str, positives: str) -> None:
    fx = load(require_fixture(path, LOSS_FAMILY))
    b, meta = bank_name, fx["meta"]
    bank = _fixture_bank(fx, b)
    f = fx[f"f_{b}"].clone().requires_grad_()
    z = F.normalize(f, dim=1)
    bank.update(z, fx["labels"], fx["indices"])
    cand = candidates_of(fx["label_all"], fx["labels"]) if positives == "candidates" else None
    res = csre_infonce(z, bank.features, bank.labels, bank.filled, fx["labels"], **_loss_kwargs(meta),
                       pos_strategy="H", neg_strategy="R+H", candidates=cand,
                       draw=fixed_draws(neg=fx[f"rand_rows_{b}"]))
    res.loss.backward()

    assert abs(res.loss.item() - fx[f"loss_{b}"].item()) <= _loss_tol(fx[f"loss_{b}"])
    assert res.loss.dim() == 0
    # README tolerances, scaled by max(1, max|ref|) (the same bound for these sub-unit values), as the
    # files may come from another CPU
    assert_scaled_close(f.grad, fx[f"grad_f_{b}"], 1e-6, f"grad_f_{b}")
    assert_scaled_close(bank.features, fx[f"bank_after_{b}"], 1e-6, f"bank_after_{b}")
    assert torch.equal(bank.filled.float(), fx["flag_after"])
    assert torch.equal(res.valid, fx["valid"])
    assert torch.equal(res.pos_count, fx["pos_count"]) and torch.equal(res.neg_count, fx["neg_count"])
    ref = fx[f"per_anchor_loss_{b}"]
    assert torch.equal(res.per_anchor.isnan(), ref.isnan())
    assert max_abs(res.per_anchor.nan_to_num(), ref.nan_to_num()) <= _loss_tol(ref.nan_to_num().abs().max())
    # skipped anchors get exactly no gradient
    assert torch.all(f.grad[~fx["valid"]] == 0)


@pytest.mark.reference
@pytest.mark.parametrize("neg_strategy, key", [("H", "loss_hard_only"), ("R", "loss_random_only")])
@pytest.mark.parametrize("bank_name", ["s", "t"])
@pytest.mark.parametrize("path", LOSS_FIXTURES)
def test_hard_only_and_random_only_match_official(path: Path | None, bank_name: str, neg_strategy: str,
                                                  key: str) -> None:
    fx = load(require_fixture(path, LOSS_FAMILY))
    b = bank_name
    bank = _fixture_bank(fx, b)
    z = F.normalize(fx[f"f_{b}"], dim=1)
    bank.update(z, fx["labels"], fx["indices"])
    res = csre_infonce(z, bank.features, bank.labels, bank.filled, fx["labels"], **_loss_kwargs(fx["meta"]),
                       neg_strategy=neg_strategy, draw=fixed_draws(neg=fx[f"rand_rows_{b}"]))
    assert abs(res.loss.item() - fx[f"{key}_{b}"].item()) <= _loss_tol(fx[f"{key}_{b}"])


@pytest.mark.reference
@pytest.mark.parametrize("path", LOSS_FIXTURES)
def test_wrapper_total_matches_official(path: Path | None) -> None:
    """Through CSRE.contrast: two banks, spatial first, draws injected, 0.5 weights = ``loss_total``."""
    fx = load(require_fixture(path, LOSS_FAMILY))
    meta = fx["meta"]
    mem = fx["label_all"].numel()
    model = CSRE(TinyEncoder(), mem, fx["label_all"], feature_size=(4, 5), dim=fx["f_s"].shape[1],
                 small_classes="skip", **_loss_kwargs(meta))
    for b in "st":
        model.banks[b].features.copy_(fx[f"bank_before_{b}"])
        model.banks[b].filled.copy_(fx["flag_before"].bool())
        model.inject_draws(b, neg=fx[f"rand_rows_{b}"])
    feats = {b: fx[f"f_{b}"].clone().requires_grad_() for b in "st"}
    terms, valid = model.contrast(feats, fx["labels"], fx["indices"])
    total = sum(model.weights[b] * terms[b] for b in "st")
    assert abs(total.item() - fx["loss_total"].item()) <= _loss_tol(fx["loss_total"])
    total.backward()
    for b in "st":
        assert abs(terms[b].item() - fx[f"loss_{b}"].item()) <= _loss_tol(fx[f"loss_{b}"])
        assert_scaled_close(feats[b].grad, 0.5 * fx[f"grad_f_{b}"], 1e-6, f"grad_f_{b}")
        assert_scaled_close(model.banks[b].features, fx[f"bank_after_{b}"], 1e-6, f"bank_after_{b}")
        assert torch.equal(model.banks[b].filled.float(), fx["flag_after"])
        assert torch.equal(valid[b], fx["valid"])
    assert not model._injected, "injected draws are for one step only"


# ---------------------------------------------------------------------------------------------
# Vectorised == per-anchor reference, on random cases


CASES = [  # K_pos, K_hard, K_rand, tau, pos, neg
    (4, 8, 8, 0.8, "H", "R+H"),
    (6, 5, 9, 0.5, "H", "R+H"),
    (3, 7, 4, 1.0, "H", "H"),
    (3, 7, 4, 0.3, "H", "R"),
    (5, 6, 6, 0.8, "R", "R"),
    (5, 6, 6, 0.8, "R", "H"),
    (2, 9, 3, 0.7, "R", "R+H"),
    (4, 6, 5, 0.9, "R+H", "R+H"),
    (8, 40, 40, 0.8, "H", "R+H"),  # many anchors gated out
]


@pytest.mark.parametrize("positives", ["scan", "candidates"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("K_pos, K_hard, K_rand, tau, pos, neg", CASES)
def test_vectorised_equals_per_anchor_reference(seed: int, K_pos: int, K_hard: int, K_rand: int, tau: float,
                                                pos: str, neg: str, positives: str) -> None:
    f, z, bank, bank_labels, filled, labels = random_case(seed)
    g = torch.Generator().manual_seed(seed)
    same = bank_labels[None] == labels[:, None]
    rand_pos = random_rows(same & filled, K_pos, g)
    rand_neg = random_rows(~same & filled, K_rand, g)
    kw = dict(K_pos=K_pos, K_hard=K_hard, K_rand=K_rand, tau=tau, pos_strategy=pos, neg_strategy=neg)
    cand = candidates_of(bank_labels, labels, seed=seed) if positives == "candidates" else None
    res = csre_infonce(z, bank, bank_labels, filled, labels, draw=fixed_draws(rand_pos, rand_neg),
                       candidates=cand, **kw)
    (grad,) = torch.autograd.grad(res.loss, f, retain_graph=True)
    ref, ref_valid = reference_infonce(z, bank, bank_labels, filled, labels, rand_pos=rand_pos, rand_neg=rand_neg, **kw)
    (ref_grad,) = torch.autograd.grad(ref, f)
    assert res.valid.tolist() == ref_valid
    assert abs(res.loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert max_abs(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("positives", ["scan", "candidates"])
@pytest.mark.parametrize("pos, neg", [("H", "R+H"), ("R+H", "H")])
def test_clamp_policy_equals_reference(pos: str, neg: str, positives: str) -> None:
    """Per-anchor set sizes min(K, available) (small classes) against the loop."""
    f, z, bank, bank_labels, filled, labels = random_case(3, S=60, fill=0.9)
    counts = torch.bincount(bank_labels, minlength=4)
    available = (counts[labels] // 2, (60 - counts[labels]) // 2)  # pretend half the dataset is all there is
    g = torch.Generator().manual_seed(0)
    same = bank_labels[None] == labels[:, None]
    rand_pos, rand_neg = random_rows(same & filled, 20, g), random_rows(~same & filled, 50, g)
    kw = dict(K_pos=20, K_hard=50, K_rand=50, tau=0.6, pos_strategy=pos, neg_strategy=neg, available=available)
    cand = candidates_of(bank_labels, labels, extra_pad=0) if positives == "candidates" else None
    res = csre_infonce(z, bank, bank_labels, filled, labels, draw=fixed_draws(rand_pos, rand_neg),
                       candidates=cand, **kw)
    ref, ref_valid = reference_infonce(z, bank, bank_labels, filled, labels, rand_pos=rand_pos, rand_neg=rand_neg, **kw)
    assert res.valid.tolist() == ref_valid and any(ref_valid)
    assert abs(res.loss.item() - ref.item()) <= 1e-5 * max(1.0, ref.item())
    (grad,) = torch.autograd.grad(res.loss, f, retain_graph=True)
    (ref_grad,) = torch.autograd.grad(ref, f)
    assert max_abs(grad, ref_grad) <= 1e-6


def test_random_draws_are_uniform_without_replacement() -> None:
    allowed = torch.zeros(2, 12, dtype=torch.bool)
    allowed[0, [1, 3, 5, 7]] = True
    allowed[1, :] = True
    g = torch.Generator().manual_seed(0)
    hits, first = torch.zeros(2, 12), torch.zeros(2, 12)
    R = 800
    for _ in range(R):
        rows = random_rows(allowed, 3, g)
        assert set(rows[0].tolist()) <= {1, 3, 5, 7}
        assert all(len(set(r.tolist())) == 3 for r in rows)
        hits.scatter_add_(1, rows, torch.ones(2, 3))
        first.scatter_add_(1, rows[:, :1], torch.ones(2, 1))
    assert torch.all(hits[~allowed] == 0) and torch.all(first[~allowed] == 0)
    assert (hits[0, [1, 3, 5, 7]] / R - 0.75).abs().max() < 0.06  # 3 of the 4 allowed columns
    assert (hits[1] / R - 0.25).abs().max() < 0.06  # each of 12 columns in 3/12 of the draws
    # ordered draws: the first entry alone is uniform too (the clamp policy uses prefixes)
    assert (first[0, [1, 3, 5, 7]] / R - 0.25).abs().max() < 0.06
    assert (first[1] / R - 1 / 12).abs().max() < 0.04


def _uniform_within(hits: Tensor, R: int, p: Tensor | float, sigmas: float = 5.0) -> bool:
    """Observed frequencies hits / R within ``sigmas`` binomial standard deviations of p (p > 0)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return bool(((hits.double() / R - p).abs() <= sigmas * (p * (1 - p) / R).sqrt() + 1e-12).all())


@pytest.mark.parametrize("k", [1, 3, 8])
def test_random_ranks_are_uniform_distinct_and_in_range(k: int) -> None:
    """Both regimes of random_ranks (keys for count <= 4k, deduplicated draws above): distinct ranks
    in [0, count), each rank in k / count of the draws, the first one uniform (prefixes are draws)."""
    L, _ = draw_widths(k)
    counts = torch.tensor([k, k + 1, L - 1, L, L + 1, 2 * L + 3, 40 * k + 7])
    R = 4000
    g = torch.Generator().manual_seed(k)
    ranks = random_ranks(counts.repeat(R), k, g).view(R, len(counts), k)  # R independent rows per count
    for j, c in enumerate(counts.tolist()):
        r = ranks[:, j]  # (R, k)
        assert int(r.min()) >= 0 and int(r.max()) < c, f"count {c}: rank out of range"
        assert torch.all(r.sort(1).values.diff(1) != 0), f"count {c}: repeated ranks"
        hits = torch.bincount(r.flatten(), minlength=c)
        assert _uniform_within(hits, R, k / c), f"count {c}: not uniform"
        assert _uniform_within(torch.bincount(r[:, 0], minlength=c), R, 1 / c), f"count {c}: first rank not uniform"


def test_random_ranks_give_uniform_ordered_pairs_above_the_key_width() -> None:
    """In the deduplication regime every ordered pair of distinct ranks is equally likely."""
    k = 2
    c = draw_widths(k)[0] + 1  # just above the key width: repeats among the draws are frequent
    R = 40000
    r = random_ranks(torch.full((R,), c), k, torch.Generator().manual_seed(0))  # (R, 2)
    pairs = torch.bincount(r[:, 0] * c + r[:, 1], minlength=c * c).view(c, c)
    assert torch.all(pairs.diagonal() == 0)
    off = ~torch.eye(c, dtype=torch.bool)
    assert _uniform_within(pairs[off], R, 1 / (c * (c - 1)))


def test_random_ranks_short_rows_and_ddp_slices() -> None:
    # rows with fewer than k members get ranks clamped into [0, count) (they are gated out)
    r = random_ranks(torch.tensor([0, 1, 2]), 3, torch.Generator().manual_seed(0))
    assert r.shape == (3, 3) and r[0].tolist() == [0, 0, 0] and r[1].tolist() == [0, 0, 0] and int(r[2].max()) <= 1
    # under DDP a rank draws for the global batch and keeps its rows: equal to the global draw
    counts = torch.tensor([5, 900, 30, 7000, 64, 1])
    whole = random_ranks(counts, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    part = random_ranks(counts[2:4], 4, g, total_rows=6, row_offset=2)
    assert torch.equal(part, whole[2:4])
    # every call consumes the same amount of the generator, whatever the counts
    other = torch.Generator().manual_seed(3)
    random_ranks(torch.tensor([1, 1, 1, 1, 1, 1]), 4, other)
    assert torch.equal(g.get_state(), other.get_state())


def test_too_few_distinct_draws_are_astronomically_unlikely() -> None:
    """Union bound of random_ranks' one failure mode, fewer than k distinct values among m draws
    from c > 4k values: P <= C(c, k-1) ((k-1)/c)^m, largest at the smallest c, below 1e-40."""
    def log_bound(c: int, k: int, m: int) -> float:
        if k == 1:
            return -math.inf  # one draw is always one distinct value
        return math.lgamma(c + 1) - math.lgamma(k) - math.lgamma(c - k + 2) + m * math.log((k - 1) / c)
    worst = -math.inf
    for k in range(1, 4097):
        L, m = draw_widths(k)
        bounds = [log_bound(c, k, m) for c in (L + 1, L + 2, 2 * L, 10 * L, 100 * L)]
        assert bounds == sorted(bounds, reverse=True), f"k={k}: bound not largest at the smallest count"
        worst = max(worst, bounds[0])
    assert worst < math.log(1e-40)


def _random_bank(seed: int, S: int = 70, num_class: int = 3, fill: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_class, (S,), generator=g), torch.rand(S, generator=g) < fill


@pytest.mark.parametrize("seed", range(4))
def test_rank_enumerations_are_bijections_onto_the_sets(seed: int) -> None:
    """rank_rows over ranks 0..count-1 lists each anchor's set exactly once: the mask space, the
    candidate positives and the complement (filled slots of other classes) from shuffled candidates."""
    bank_labels, filled = _random_bank(seed)
    labels = torch.tensor([0, 1, 2, 1])
    filled[:3] = True  # some members of every class
    same = bank_labels[None] == labels[:, None]
    cand = candidates_of(bank_labels, labels, seed=seed)  # shuffled, -1 padded
    ok = cand >= 0
    cand_rows = torch.where(ok, cand, cand[:, :1])
    cand_ok = ok & filled[cand_rows]
    pos_count = cand_ok.sum(1)
    spaces = {
        "mask": (mask_space(same & filled[None]), same & filled[None]),
        "complement": (complement_space(filled, cand_rows, cand_ok, filled.sum() - pos_count, lambda k: k),
                       ~same & filled[None]),
    }
    for name, (space, allowed) in spaces.items():
        assert space.count.tolist() == allowed.sum(1).tolist(), name
        for i in range(len(labels)):
            c = int(space.count[i])
            ranks = torch.arange(c)[None].expand(len(labels), c)
            rows = space.rank_rows(ranks)[i]
            assert sorted(rows.tolist()) == allowed[i].nonzero().flatten().tolist(), f"{name}: anchor {i}"
    # the candidates' positive space of csre_infonce draws the same set as the scan
    f, z, bank, bl, fl, lab = random_case(seed)
    captured = {}

    def capture(kind: str, k: int, space: SampleSpace) -> Tensor:
        captured.setdefault(kind, []).append(space)
        return draw_ranks(space, k, torch.Generator().manual_seed(0))

    for positives in ("scan", "candidates"):
        cands = candidates_of(bl, lab, seed=seed) if positives == "candidates" else None
        csre_infonce(z, bank, bl, fl, lab, K_pos=3, K_hard=4, K_rand=4, pos_strategy="R", neg_strategy="R",
                     candidates=cands, draw=capture)
    same = bl[None] == lab[:, None]
    for kind, allowed in (("pos", same & fl[None]), ("neg", ~same & fl[None])):
        for space in captured[kind]:
            assert space.count.tolist() == allowed.sum(1).tolist()
            width = int(space.count.max())
            rows = space.rank_rows(torch.arange(width)[None].expand(len(lab), width))
            for i in range(len(lab)):
                assert sorted(rows[i, :int(space.count[i])].tolist()) == allowed[i].nonzero().flatten().tolist()
    # mask_space = "allowed columns of all bank rows"; keys restricted in place
    allowed = torch.tensor([[True, False, True]])
    keys = torch.rand(1, 3)
    space = mask_space(allowed)
    assert space.width == 3 and space.restrict(keys) is keys and keys[0, 1] == -math.inf


def _fill_fifo(model: CSRE, seed: int = 1) -> None:
    """Fill every FIFO queue completely with random unit vectors and random labels."""
    g = torch.Generator().manual_seed(seed)
    num_class = int(model.class_counts.numel())
    for bank in model.banks.values():
        S, d = bank.features.shape
        bank.features.copy_(F.normalize(torch.randn(S, d, generator=g), dim=1))
        bank.labels.copy_(torch.randint(0, num_class, (S,), generator=g))
        bank.filled.fill_(True)


def _spy_draws(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Patch ``csre_infonce`` as CSRE calls it: record every draw of the wrapper's own ``draw``."""
    calls: list[dict] = []
    real = csre_module.csre_infonce

    def spy(z, bank, bank_labels, bank_filled, labels, **kw):
        draw, recorded = kw["draw"], []

        def recording(kind: str, k: int, space: SampleSpace) -> Tensor:
            rows = draw(kind, k, space)
            recorded.append((kind, k, space, rows.clone()))
            return rows

        res = real(z, bank, bank_labels, bank_filled, labels, **{**kw, "draw": recording})
        calls.append(dict(draw=draw, recorded=recorded, bank_labels=bank_labels.clone(),
                          filled=bank_filled.bool().clone(), labels=labels.clone(), valid=res.valid.clone()))
        return res

    monkeypatch.setattr(csre_module, "csre_infonce", spy)
    return calls


def _allowed(call: dict, kind: str) -> Tensor:
    """(n, S) bank rows a random set may contain: filled, same class (pos) or another class (neg)."""
    same = call["bank_labels"][None, :] == call["labels"][:, None]
    return call["filled"][None, :] & (same if kind == "pos" else ~same)


@pytest.mark.parametrize("capacity", [None, 30], ids=["full", "fifo"])
def test_wrapper_draws_distinct_allowed_rows_uniformly(monkeypatch: pytest.MonkeyPatch, capacity: int | None) -> None:
    """CSRE's own draws (no injection): random positives (pos 'R') and negatives of every valid anchor
    are distinct, filled and of the right class; repeated draws cover the allowed rows uniformly."""
    calls = _spy_draws(monkeypatch)
    model = tiny_csre(pos_strategy="R", neg_strategy="R+H", capacity=capacity).train()
    prefill(model, fraction=0.7) if capacity is None else _fill_fifo(model)
    x, y, idx = toy_batch()
    model(x, y, idx if capacity is None else None)
    assert [len(c["recorded"]) for c in calls] == [2, 2]  # per branch s, t: one pos and one neg draw
    R = 1500
    for call in calls:
        valid = call["valid"]
        assert valid.sum() >= 4, "too few valid anchors to check the draws"
        for kind, k, space, rows in call["recorded"]:
            assert rows.shape == (6, k)
            allowed = _allowed(call, kind)
            rows = rows[valid]
            assert torch.all(rows.sort(1).values.diff(1) != 0), f"{kind}: repeated rows"
            assert torch.all(allowed[valid].gather(1, rows)), f"{kind}: unfilled or wrong-class rows"
            # the same draw again and again: disallowed rows never, allowed ones with frequency k / #allowed
            hits = torch.zeros(allowed.shape)
            for _ in range(R):
                again = call["draw"](kind, k, space)
                hits.scatter_add_(1, again, torch.ones(again.shape))
            hits, allowed = hits[valid], allowed[valid]
            assert torch.all(hits[~allowed] == 0), f"{kind}: disallowed rows drawn"
            expected = (k / allowed.sum(1, keepdim=True)).expand_as(hits)
            assert (hits / R - expected)[allowed].abs().max() < 0.06, f"{kind}: not uniform"
    # the draws come from CSRE's generator, seeded with ``seed``
    first = [r for c in calls for *_, r in c["recorded"]]
    for seed, same in ((0, True), (5, False)):
        calls.clear()
        other = tiny_csre(pos_strategy="R", neg_strategy="R+H", capacity=capacity, seed=0).train()
        other.seed = seed  # same weights, other draws
        prefill(other, fraction=0.7) if capacity is None else _fill_fifo(other)
        other(x, y, idx if capacity is None else None)
        rows = [r for c in calls for *_, r in c["recorded"]]
        assert all(torch.equal(a, b) for a, b in zip(first, rows)) == same


def test_recorded_draws_are_checked() -> None:
    """Recorded or injected draws need one row of k bank rows per anchor; only recorded kinds are used."""
    f, z, bank, bank_labels, filled, labels = random_case(0)  # 8 anchors
    kw = dict(K_pos=2, K_hard=3, K_rand=3, neg_strategy="R")
    with pytest.raises(ValueError, match=r"recorded neg draws have shape \(8, 4\), expected \(8, 3\)"):
        csre_infonce(z, bank, bank_labels, filled, labels, draw=fixed_draws(neg=torch.zeros(8, 4)), **kw)
    with pytest.raises(ValueError, match="no recorded pos draws"):
        csre_infonce(z, bank, bank_labels, filled, labels, draw=fixed_draws(neg=torch.zeros(8, 3)),
                     **{**kw, "pos_strategy": "R"})
    model = tiny_csre().train()
    prefill(model)
    x, y, idx = toy_batch()  # 6 anchors
    model.inject_draws("s", neg=torch.zeros(5, model.K_rand))
    with pytest.raises(ValueError, match=r"recorded neg draws have shape \(5, 5\), expected \(6, 5\)"):
        model(x, y, idx)
    with pytest.raises(ValueError, match="branch 'g' is not contrasted by this head"):
        model.inject_draws("g", neg=torch.zeros(6, 5))


def test_bank_contrast_validates_its_branches_and_labels() -> None:
    enc = TinyEncoder()
    labels = toy_labels(60, 4)
    with pytest.raises(ValueError, match="branches must be distinct names"):
        BankContrast(enc, 60, labels, ("s", "s"), K_pos=2, K_hard=4, K_rand=4)
    with pytest.raises(ValueError, match="branches must be distinct names"):
        BankContrast(enc, 60, labels, (), K_pos=2, K_hard=4, K_rand=4)
    with pytest.raises(ValueError, match="labels must be non-negative"):
        BankContrast(enc, 60, labels - 1, ("graph",), K_pos=2, K_hard=4, K_rand=4)
    head = BankContrast(enc, 60, labels, ("graph",), K_pos=2, K_hard=4, K_rand=4)
    assert list(head.banks) == ["graph"] and head.branches == ("graph",)


def test_gate_edge_cases() -> None:
    """Exactly K_pos positives including itself; in-batch anchors counting each other; the negative gate."""
    d, tau = 4, 0.8
    bank_labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3])
    filled = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
    bank = F.normalize(torch.randn(10, d, generator=torch.Generator().manual_seed(0)), dim=1) * filled[:, None]
    labels, index = torch.tensor([0, 1, 3]), torch.tensor([1, 4, 9])
    z = F.normalize(torch.randn(3, d), dim=1)
    mb = MemoryBank(d, bank_labels)
    mb.features.copy_(bank)
    mb.filled.copy_(filled)
    mb.update(z, labels, index)
    kw = dict(K_pos=2, K_hard=7, K_rand=7, tau=tau, neg_strategy="H")
    res = csre_infonce(z, mb.features, mb.labels, mb.filled, labels, **kw)
    # anchor 0: slot 0 + itself = 2 positives, 8 negatives; anchor 1: 3 positives (itself
    # included); anchor 2 (class 3): only itself -> skipped
    assert res.pos_count.tolist() == [2, 3, 1] and res.neg_count.tolist() == [8, 7, 9]
    assert res.valid.tolist() == [True, True, False]
    res = csre_infonce(z, mb.features, mb.labels, mb.filled, labels, **{**kw, "K_hard": 8})
    assert res.valid.tolist() == [True, False, False]  # anchor 1 has only 7 negatives


def test_no_valid_anchor_gives_a_differentiable_zero() -> None:
    f, z, bank, bank_labels, filled, labels = random_case(0, S=40)
    res = csre_infonce(z, bank, bank_labels, filled, labels, K_pos=40, K_hard=5, K_rand=5, tau=0.8,
                       generator=torch.Generator().manual_seed(0))
    assert res.loss.dim() == 0 and res.loss.item() == 0.0 and res.row_count.item() == 0
    assert not res.valid.any() and res.per_anchor.isnan().all()
    res.loss.backward()
    assert torch.all(f.grad == 0)


def test_sizes_larger_than_the_bank_are_rejected() -> None:
    f, z, bank, bank_labels, filled, labels = random_case(0, S=40)
    with pytest.raises(ValueError, match="K_hard=41"):
        csre_infonce(z, bank, bank_labels, filled, labels, K_pos=2, K_hard=41, K_rand=5)
    with pytest.raises(ValueError, match="pos_strategy"):
        csre_infonce(z, bank, bank_labels, filled, labels, pos_strategy="hard")


@contextlib.contextmanager
def forbid_host_sync_and_sort(monkeypatch: pytest.MonkeyPatch, bank_size: int):
    """Make every host-synchronising tensor call raise, and every sort along ``bank_size`` or more
    entries (a full sort of similarities; sorting a few random draws or a class's slots is fine)."""
    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation or full sort inside the loss")

    def guarded(real):
        def sort(t, *args, **kwargs):
            dim = kwargs.get("dim", args[0] if args and isinstance(args[0], int) else -1)
            if t.dim() and t.shape[dim] >= bank_size:
                raise AssertionError(f"sort of {t.shape[dim]} entries inside the loss (bank of {bank_size})")
            return real(t, *args, **kwargs)
        return sort

    for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "unique"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    for name in ("nonzero", "unique", "masked_select"):
        monkeypatch.setattr(torch, name, boom)
    for owner in (torch.Tensor, torch):
        for name in ("sort", "argsort"):
            monkeypatch.setattr(owner, name, guarded(getattr(owner, name)))
    yield
    monkeypatch.undo()


def test_loss_and_training_step_need_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    S = 600  # larger than every random-draw buffer (2k + 64), so that only a full sort trips the guard
    model = tiny_csre(num_samples=S, variant="csre+gc", pos_strategy="R+H").train()
    prefill(model)
    x, y, idx = toy_batch(num_samples=S)
    with forbid_host_sync_and_sort(monkeypatch, S):
        out = model(x, y, idx)
        (F.cross_entropy(out.logits, y) + out.contrastive).backward()
    assert out.contrastive.item() > 0
    with forbid_host_sync_and_sort(monkeypatch, S), pytest.raises(AssertionError, match="sort of 600"):
        model.banks["s"].features.sort(0)  # the guard itself works


def test_anchors_without_negatives_get_a_zero_not_nan_gradient() -> None:
    """A single-class bank: every negative key is -inf; the skipped anchors' gradient stays 0."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 8, generator=g).requires_grad_()
    z = F.normalize(f, dim=1)
    bank = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    labels, bank_labels = torch.zeros(4, dtype=torch.long), torch.zeros(30, dtype=torch.long)
    for neg in ("H", "R", "R+H"):
        res = csre_infonce(z, bank, bank_labels, torch.ones(30, dtype=torch.bool), labels, K_pos=2, K_hard=3,
                           K_rand=3, neg_strategy=neg, generator=g)
        assert not res.valid.any() and res.neg_count.tolist() == [0] * 4
        (grad,) = torch.autograd.grad(res.loss, f, retain_graph=True)
        assert torch.equal(grad, torch.zeros_like(grad)), neg


# ---------------------------------------------------------------------------------------------
# Memory bank


def test_bank_writes_before_compare_and_overwrites() -> None:
    bank = MemoryBank(3, torch.tensor([0, 1, 0, 1]))
    assert [k for k in bank.state_dict()] == ["features", "labels", "filled"]
    z = F.normalize(torch.randn(2, 3), dim=1)
    bank.update(z, torch.tensor([1, 0]), torch.tensor([3, 0]))
    assert torch.equal(bank.features[[3, 0]], z) and bank.filled.tolist() == [True, False, False, True]
    z2 = F.normalize(torch.randn(1, 3), dim=1)
    bank.update(z2, torch.tensor([1]), torch.tensor([3]))  # overwrite, no momentum
    assert torch.equal(bank.features[3], z2[0]) and int(bank.filled.sum()) == 2
    assert bank.labels.tolist() == [0, 1, 0, 1]  # fixed dataset labels


def test_fifo_bank_is_a_ring() -> None:
    bank = MemoryBank(2, capacity=5)
    assert "ptr" in bank.state_dict() and bank.labels.tolist() == [-1] * 5
    for step in range(3):
        z = torch.full((2, 2), float(step))
        bank.update(z, torch.tensor([step, step]))
    # writes at slots 0,1 | 2,3 | 4,0
    assert bank.features[:, 0].tolist() == [2, 0, 1, 1, 2] and bank.labels.tolist() == [2, 0, 1, 1, 2]
    assert bank.filled.all() and int(bank.ptr) == 1
    with pytest.raises(ValueError, match="does not fit"):
        bank.update(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))


def test_fifo_csre_trains() -> None:
    model = tiny_csre(capacity=20).train()
    for step in range(3):
        x, y, _ = toy_batch(seed=step, n=8)
        out = model(x, y)
        out.contrastive.backward()
    assert model.banks["s"].filled.all() and int(model.banks["s"].ptr) == 4
    assert out.contrastive.item() > 0


# ---------------------------------------------------------------------------------------------
# Small or repeated datasets


FIFO_LABELS = torch.tensor([0] * 6 + [1] * 18 + [2] * 18 + [3] * 18)  # 60 samples, class 0: share 1/10


def _fifo_csre(capacity: int, labels: Tensor = FIFO_LABELS, **kw) -> CSRE:
    kw = {"dim": 8, "r": 2, "K_pos": 3, "K_hard": 6, "K_rand": 6, "tau": 0.5, **kw}
    torch.manual_seed(0)
    return CSRE(TinyEncoder(), labels.numel(), labels, feature_size=(4, 5), capacity=capacity, **kw)


def test_fifo_small_classes_error_counts_the_expected_queue_share() -> None:
    """A queue of C slots holds about p_c*C of class c, not count_c: 'error' judges the queue."""
    _fifo_csre(None)  # one slot per index: class 0 has 6 >= K_pos = 3 samples, fine
    # C = 20: class 0 expects 6/60*20 = 2 < 3 positives; the smallest capacity that works is 30
    with pytest.raises(ValueError, match=r"capacity 20: classes \[0\].*expected positives \[2\.0\].*"
                                         r"capacity >= 30.*K_pos.*'skip'.*'clamp'"):
        _fifo_csre(20)
    with pytest.raises(ValueError, match=r"classes \[0\].*capacity >= 30"):
        _fifo_csre(29)  # 2.9 expected
    assert _fifo_csre(30).banks["s"].size == 30  # exactly 3.0 expected
    for policy in ("skip", "clamp"):
        _fifo_csre(20, small_classes=policy)
    # the negative side: a dominant class leaves too few negatives in the queue
    dominant = torch.tensor([0] * 50 + [1] * 10)
    _fifo_csre(None, dominant, K_hard=5, K_rand=5)  # 10 negatives among the indices: fine
    with pytest.raises(ValueError, match=r"classes \[0\].*expected negatives \[3\.3\].*capacity >= 30"):
        _fifo_csre(20, dominant, K_hard=5, K_rand=5)  # class 0 expects 20 * 10/60 = 3.3 < 5 negatives
    _fifo_csre(30, dominant, K_hard=5, K_rand=5)
    with pytest.raises(ValueError, match="no negatives at any capacity"):
        _fifo_csre(20, torch.zeros(10, dtype=torch.long), K_hard=2, K_rand=2)
    assert [t.tolist() for t in fifo_share(torch.tensor([6, 18, 0]), 60, 20)] == [[2, 6, 0], [18, 14, 20]]


@pytest.mark.parametrize("policy", ["clamp", "skip"])
def test_fifo_clamp_uses_the_expected_queue_share(policy: str) -> None:
    """Under 'clamp' a FIFO anchor of class c uses min(K, floor(p_c*C)) positives (here 2 of K_pos = 3),
    not min(K, count_c) = 3, which the queue would hardly ever hold; 'skip' gates it out."""
    model = _fifo_csre(20, small_classes=policy, neg_strategy="H").train()
    # queue after the write: the 4 anchors in slots 0..3, then one more class-0 sample and 5 of each other class
    rest = torch.tensor([0] + [1] * 5 + [2] * 5 + [3] * 5)
    g = torch.Generator().manual_seed(0)
    for bank in model.banks.values():
        bank.features.copy_(F.normalize(torch.randn(20, 8, generator=g), dim=1))
        bank.labels[4:] = rest
        bank.filled.fill_(True)
    labels = torch.tensor([0, 1, 2, 3])
    feats = {b: torch.randn(4, 8, generator=g).requires_grad_() for b in "st"}
    terms, valid = model.contrast(feats, labels, None)
    assert valid["s"].tolist() == [policy == "clamp", True, True, True]
    bank = model.banks["s"]
    assert torch.equal(bank.labels, torch.cat([labels, rest])) and int(bank.ptr) == 4
    available = (torch.tensor([2, 6, 6, 6]), torch.tensor([18, 14, 14, 14])) if policy == "clamp" else None
    z = F.normalize(feats["s"], dim=1)
    ref, ref_valid = reference_infonce(z, bank.features, bank.labels, bank.filled, labels, K_pos=3, K_hard=6,
                                       K_rand=6, tau=0.5, pos_strategy="H", neg_strategy="H", available=available)
    assert ref_valid == valid["s"].tolist()
    assert abs(terms["s"].item() - ref.item()) <= 1e-5 * max(1.0, ref.item())


def test_small_classes_raise_by_default_with_advice() -> None:
    labels = torch.tensor([0] * 3 + [1] * 20 + [2] * 20)  # class 0 has 3 < K_pos = 5 samples
    with pytest.raises(ValueError, match=r"classes \[0\] can never pass the gate.*repeat"):
        CSRE(TinyEncoder(), 43, labels, feature_size=(4, 5), dim=8, K_pos=5, K_hard=6, K_rand=6)
    # repeated 5 times within the epoch (NW-UCLA's official recipe): 15 slots of class 0 suffice
    repeated = labels.repeat(5)  # = SkeletonFeeder(repeat=5).labels: aligned with index % 43
    model = CSRE(TinyEncoder(), 215, repeated, feature_size=(4, 5), dim=8, K_pos=5, K_hard=6, K_rand=6)
    assert model.banks["s"].size == 215


@pytest.mark.parametrize("policy", ["skip", "clamp"])
def test_small_class_policies(policy: str) -> None:
    num_class, N = 3, 43
    labels = torch.tensor([0] * 3 + [1] * 20 + [2] * 20)
    torch.manual_seed(0)
    model = CSRE(TinyEncoder(num_class=num_class), N, labels, feature_size=(4, 5), dim=8, r=2, K_pos=5, K_hard=6,
                 K_rand=6, small_classes=policy)
    for bank in model.banks.values():  # everything filled
        bank.features.copy_(F.normalize(torch.randn(N, 8), dim=1))
        bank.filled.fill_(True)
    x = torch.randn(4, 3, 8, 5, 2)
    out = model.train()(x, labels[[0, 1, 5, 30]], torch.tensor([0, 1, 5, 30]))
    expected = [policy == "clamp", policy == "clamp", True, True]  # class 0: 3 positives only
    assert out.valid["s"].tolist() == expected


def test_from_dataset_reads_length_and_aligned_labels() -> None:
    class Repeated:
        labels = torch.tensor([0, 1, 1, 0]).repeat(3)

        def __len__(self) -> int:
            return 12

    model = CSRE.from_dataset(TinyEncoder(), Repeated(), feature_size=(4, 5), dim=8, K_pos=2, K_hard=2, K_rand=2)
    assert model.num_samples == 12 and torch.equal(model.banks["t"].labels, Repeated.labels)
    for c in (0, 1):  # the per-class slot table the positives are looked up in
        slots = model.class_slots[c]
        assert slots[slots >= 0].tolist() == torch.nonzero(Repeated.labels == c).flatten().tolist()
    with pytest.raises(ValueError, match="aligned"):
        CSRE(TinyEncoder(), 11, Repeated.labels, feature_size=(4, 5), K_pos=1, K_hard=1, K_rand=1)


# ---------------------------------------------------------------------------------------------
# The wrapper


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_csre_parameter_gets_a_gradient(variant: str) -> None:
    model = tiny_csre(variant=variant, pos_strategy="R+H").train()
    prefill(model)
    x, y, idx = toy_batch()
    out = model(x, y, idx)
    assert set(out.terms) == set(VARIANTS[variant]) and all(v.all() for v in out.valid.values())
    (F.cross_entropy(out.logits, y) + out.contrastive).backward()
    head = [(n, p) for n, p in model.named_parameters() if not n.startswith("encoder.")]
    assert head, "no head parameters"
    missing = [n for n, p in head if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"head parameters without gradient: {missing}"
    assert all(p.grad is not None for p in model.encoder.parameters())
    expected = {"s": "std.conv1.weight", "t": "std.conv2.weight", "g": "global_proj.weight"}
    names = dict(model.named_parameters())
    assert all((expected[b] in names) == (b in VARIANTS[variant]) for b in "stg")
    assert not any(b.requires_grad for b in model.buffers())


@pytest.mark.parametrize("weights", [(0.5, 0.5), (1.0, 1.0)])
def test_contrastive_term_is_the_weighted_sum(weights: tuple[float, float]) -> None:
    model = tiny_csre(weights=weights).train()
    prefill(model)
    out = model(*toy_batch())
    expected = weights[0] * out.terms["s"] + weights[1] * out.terms["t"]
    assert torch.equal(out.contrastive, expected) and out.contrastive.item() > 0


def test_eval_returns_exactly_the_encoder_logits_and_leaves_banks_alone() -> None:
    model = tiny_csre(variant="csre+gc")
    prefill(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    x, y, idx = toy_batch()
    model.eval()
    with torch.no_grad():
        out = model(x, y, idx)
        assert isinstance(out, Tensor) and torch.equal(out, model.encoder(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.train()
    train_out = model(x, y, idx)
    assert torch.equal(train_out.logits, model.encoder(x))  # same logits in train mode too
    with pytest.raises(ValueError, match="labels"):
        model(x)


def test_export_loads_strictly_into_the_bare_encoder() -> None:
    model = tiny_csre(variant="csre+gc").train()
    prefill(model)
    model(*toy_batch()).contrastive.backward()
    exported = model.export()
    assert not any(k.startswith(("std.", "banks.", "global_proj")) or "extra_state" in k for k in exported)
    bare = TinyEncoder(num_class=4)
    bare.load_state_dict(exported, strict=True)
    x = toy_batch()[0]
    bare.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(bare(x), model(x))
    buf = io.BytesIO()
    torch.save(exported, buf)
    buf.seek(0)
    TinyEncoder(num_class=4).load_state_dict(torch.load(buf, weights_only=True), strict=True)


def test_checkpoint_round_trip_restores_banks_and_draws() -> None:
    """Banks, flags and the generator state are in the state_dict: a resumed run continues identically."""
    def steps(model: CSRE, seeds, opt=None) -> list[float]:
        losses = []
        for s in seeds:
            out = model(*toy_batch(seed=s))
            losses.append(out.contrastive.item())
            if opt is not None:
                opt.zero_grad()
                out.contrastive.backward()
                opt.step()
        return losses

    a = tiny_csre(pos_strategy="R", neg_strategy="R").train()
    prefill(a)
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    steps(a, range(3), opt)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {"banks.s.features", "banks.s.labels", "banks.s.filled", "banks.t.features", "_extra_state"} <= set(state)

    b = tiny_csre(pos_strategy="R", neg_strategy="R", seed=0).train()
    b.load_state_dict(state, strict=True)
    assert torch.equal(b.banks["t"].features, a.banks["t"].features)
    assert steps(a, range(3, 6)) == steps(b, range(3, 6))

    # the generator state matters: same weights and banks with a freshly seeded generator differ
    c = tiny_csre(pos_strategy="R", neg_strategy="R").train()
    c.load_state_dict({**state, "_extra_state": {**state["_extra_state"], "generator": None}})
    b.load_state_dict(state)
    assert steps(c, range(3, 6)) != steps(b, range(3, 6))


def test_contrastive_loss_goes_down_on_a_toy_problem() -> None:
    """Free anchor features, a bank refreshed every step: a few SGD steps lower the loss (sign, detach)."""
    torch.manual_seed(0)
    S, d, num_class = 48, 8, 4
    labels_all = toy_labels(S, num_class)
    feats = nn.Parameter(torch.randn(S, d))
    bank = MemoryBank(d, labels_all)
    bank.update(F.normalize(feats.detach(), dim=1), labels_all, torch.arange(S))
    opt = torch.optim.SGD([feats], lr=20.0)  # the mean over many rows makes per-feature gradients small
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(40):
        idx = torch.randperm(S, generator=g)[:12]
        z = F.normalize(feats[idx], dim=1)
        bank.update(z, labels_all[idx], idx)
        res = csre_infonce(z, bank.features, bank.labels, bank.filled, labels_all[idx], K_pos=6, K_hard=8,
                           K_rand=8, tau=0.5, generator=g)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        losses.append(res.loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_constructor_validation() -> None:
    enc, labels = TinyEncoder(), toy_labels(20, 2)
    base = dict(feature_size=(4, 5), K_pos=2, K_hard=2, K_rand=2)
    for kw, message in [
        (dict(variant="spatial"), "variant"), (dict(pos_strategy="RH"), "pos_strategy"),
        (dict(neg_strategy="hard"), "neg_strategy"), (dict(small_classes="warn"), "small_classes"),
        (dict(tau=0.0), "tau"), (dict(weights=(1.0,)), "weights"), (dict(K_rand=21), "K_rand=21"),
        (dict(feature_size=None), "input_shape"), (dict(capacity=1, K_pos=2), "K_pos=2"),
    ]:
        with pytest.raises(ValueError, match=message):
            CSRE(enc, 20, labels, **{**base, **kw})
    with pytest.raises(ValueError, match="feature map"):  # STFD built for another (T', V)
        CSRE(enc, 20, labels, **{**base, "feature_size": (3, 5)}).train()(*toy_batch(num_samples=20, num_class=2))


def test_loss_runs_in_float32_under_autocast() -> None:
    model = tiny_csre(neg_strategy="H").train()
    prefill(model)
    batch = toy_batch()
    ref = model(*batch).terms
    prefill(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*batch)
    assert all(v.dtype == torch.float32 for v in out.terms.values())
    assert model.banks["s"].features.dtype == torch.float32
    assert all(abs(out.terms[b].item() - ref[b].item()) < 0.05 * ref[b].item() for b in "st")


# ---------------------------------------------------------------------------------------------
# Every registered encoder, NTU and NW-UCLA shapes

# NTU: 25 joints, 2 persons; NW-UCLA: 20 joints, 1 person. Clips are shorter than the recipes' (64 and
# 52 frames) to keep the suite fast on CPU; T' follows from the encoder either way (never 16).
SHAPES = {"ntu": ((2, 3, 16, 25, 2), "ntu", 60), "ucla": ((2, 3, 20, 20, 1), "ucla", 10)}
_ARG_NAMES = {  # constructor argument -> value, for whichever names an encoder uses
    "num_class": "num_class", "num_classes": "num_class", "num_point": "V", "num_joint": "V", "num_joints": "V",
    "num_person": "M", "num_persons": "M", "graph": "graph", "in_channels": "C", "in_channel": "C",
    "window_size": "T",
}


def build_encoder(name: str, shape: tuple[int, ...], graph: str, num_class: int) -> Encoder:
    _, C, T, V, M = shape
    values = {"num_class": num_class, "V": V, "M": M, "graph": graph, "C": C, "T": T}
    cls = registry.encoder_class(name)
    params = inspect.signature(cls.__init__).parameters
    return cls(**{arg: values[key] for arg, key in _ARG_NAMES.items() if arg in params})


@pytest.mark.slow
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("name", sorted(registry.ENCODERS))
def test_every_encoder_trains_with_csre(name: str, shape_name: str) -> None:
    shape, graph, num_class = SHAPES[shape_name]
    N, C, T, V, M = shape
    torch.manual_seed(0)
    encoder = build_encoder(name, shape, graph, num_class)
    num_samples = 4 * num_class
    labels = toy_labels(num_samples, num_class)
    model = CSRE(encoder, num_samples, labels, input_shape=(C, T, V, M), K_pos=2, K_hard=4, K_rand=4,
                 variant="csre+gc").train()
    fmap_T, fmap_V = model.feature_size
    assert model.std.num_frame == fmap_T and model.std.num_point == fmap_V
    prefill(model, fraction=1.0)
    x = 0.5 * torch.randn(shape)
    index = torch.tensor([0, 1])
    out = model(x, labels[index], index)
    assert out.logits.shape == (N, num_class) and all(v.all() for v in out.valid.values())
    loss = F.cross_entropy(out.logits, labels[index]) + out.contrastive
    assert torch.isfinite(loss) and out.contrastive.item() > 0
    loss.backward()
    head = {n: p for n, p in model.named_parameters() if not n.startswith("encoder.")}
    missing = [n for n, p in head.items() if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not missing, f"CSRE parameters without a finite, non-zero gradient: {missing}"


# ---------------------------------------------------------------------------------------------
# gin files (bound against the configurable name `models.CSRE`)


@pytest.fixture
def gin_csre():
    gin = pytest.importorskip("gin")
    with contextlib.suppress(Exception):  # registers models.CSRE once wired there
        import harness.configurables  # noqa: F401
    gin.external_configurable(CSRE, name="CSRE", module="models")  # same object again: a no-op
    gin.clear_config()
    yield gin
    gin.clear_config()


GIN_VARIANTS = {None: "csre", "sc": "sc", "tc": "tc", "gc": "gc", "csre_gc": "csre+gc"}


@pytest.mark.parametrize("variant_file", list(GIN_VARIANTS))
def test_gin_files_build_the_variants(gin_csre, variant_file: str | None) -> None:
    gin = gin_csre
    files = [REPO / "gin/datasets/ucla.gin", REPO / "gin/csre.gin"]
    if variant_file:
        files.append(REPO / f"gin/csre/{variant_file}.gin")
    gin.parse_config_files_and_bindings([str(f) for f in files], ["models.CSRE.K_pos = 2",
                                                                  "models.CSRE.K_hard = 4",
                                                                  "models.CSRE.K_rand = 4"], skip_unknown=False)
    assert gin.query_parameter("models.CSRE.tau") == 0.8 and gin.query_parameter("models.CSRE.weights") == (0.5, 0.5)
    make = gin.get_configurable("models.CSRE")
    model = make(TinyEncoder(num_person=1, num_class=10), 40, toy_labels(40, 10))
    assert model.variant == GIN_VARIANTS[variant_file]
    assert model.feature_size == (26, 20)  # T' = 52 / 2 from the dry run, V = 20 (NW-UCLA)
    assert (model.pos_strategy, model.neg_strategy, model.capacity) == ("H", "R+H", None)


def test_gin_sampling_weights_and_tau_files(gin_csre) -> None:
    gin = gin_csre
    table6 = {"R_R": ("R", "R"), "R_H": ("R", "H"), "R_RH": ("R", "R+H"), "H_R": ("H", "R"), "H_H": ("H", "H"),
              "H_RH": ("H", "R+H"), "RH_RH": ("R+H", "R+H")}
    found = sorted(p.stem.removeprefix("sampling_") for p in (REPO / "gin/csre").glob("sampling_*.gin"))
    assert found == sorted(table6)
    dataset, csre = str(REPO / "gin/datasets/ntu120_xsub.gin"), str(REPO / "gin/csre.gin")
    for stem, (pos, neg) in table6.items():
        gin.clear_config()
        gin.parse_config_files_and_bindings([dataset, csre, str(REPO / f"gin/csre/sampling_{stem}.gin")], [],
                                            skip_unknown=False)
        assert (gin.query_parameter("models.CSRE.pos_strategy"), gin.query_parameter("models.CSRE.neg_strategy")) \
            == (pos, neg)
    gin.clear_config()
    gin.parse_config_files_and_bindings([dataset, csre, str(REPO / "gin/csre/paper_weights.gin"),
                                         str(REPO / "gin/csre/tau_grid.gin")], [], skip_unknown=False)
    assert gin.query_parameter("models.CSRE.weights") == (1.0, 1.0)
    grid = gin.query_parameter("%CSRE_TAU_GRID")
    assert grid == [0.5, 0.8, 1.0]
    for tau in grid:
        gin.clear_config()
        gin.parse_config_files_and_bindings([dataset, csre, str(REPO / f"gin/csre/tau_{tau}.gin")], [],
                                            skip_unknown=False)
        assert gin.query_parameter("models.CSRE.tau") == tau


# ---------------------------------------------------------------------------------------------
# DDP: two gloo processes on CPU

DDP_N, DDP_S, DDP_CLASSES = 8, 40, 4


def _ddp_model() -> CSRE:
    model = tiny_csre(DDP_S, DDP_CLASSES, variant="csre+gc", pos_strategy="R+H", neg_strategy="R+H", seed=7)
    prefill(model, fraction=0.6)
    return model.train()


def _ddp_batches():
    return [toy_batch(DDP_N, DDP_S, DDP_CLASSES, seed=10 + s) for s in range(2)]


def _run_steps(model: nn.Module, batches, rank: int = 0, world: int = 1) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    record: dict = {"terms": [], "contrastive": [], "grads": []}
    part = DDP_N // world
    for x, y, idx in batches:
        sl = slice(rank * part, (rank + 1) * part)
        out = model(x[sl], y[sl], idx[sl])
        opt.zero_grad()
        (F.cross_entropy(out.logits, y[sl]) + out.contrastive).backward()
        record["terms"].append({b: t.detach() for b, t in out.terms.items()})
        record["contrastive"].append(out.contrastive.detach())
        record["grads"].append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
    inner = model.module if hasattr(model, "module") else model
    record["state"] = {k: v for k, v in inner.state_dict().items() if isinstance(v, Tensor)}
    return record


def _ddp_seed_mismatches(rank: int) -> dict[str, str]:
    """A per-rank seed, then equal seeds with rank 1's generator advanced: the first step must raise."""
    errors = {}
    x, y, idx = _ddp_batches()[0]
    for case in ("seed", "state"):
        model = tiny_csre(DDP_S, DDP_CLASSES, pos_strategy="R", neg_strategy="R",
                          seed=7 + rank if case == "seed" else 7).train()
        if case == "state" and rank == 1:
            torch.rand(1, generator=model.generator("cpu"))  # e.g. a rank resumed from another checkpoint
        try:
            model(x[:4], y[:4], idx[:4])
        except RuntimeError as e:
            errors[case] = str(e)
    return errors


def _ddp_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_ddp_model())
        record = _run_steps(model, _ddp_batches(), rank, world)
        record["grads"] = [{k.removeprefix("module."): v for k, v in g.items()} for g in record["grads"]]
        record["seed_checked"] = model.module._seed_checked
        record["errors"] = _ddp_seed_mismatches(rank)
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_equal_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    single = _run_steps(_ddp_model(), _ddp_batches())

    for k, v in single["state"].items():  # banks (and weights after two SGD steps) identical everywhere
        for r in ranks:
            assert torch.allclose(r["state"][k], v, atol=1e-6), k
    banks = [k for k in single["state"] if k.startswith("banks.")]
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in banks)
    assert all(single["state"][f"banks.{b}.filled"].sum() > 0 for b in "stg")
    for step in range(2):
        mean = sum(r["contrastive"][step] for r in ranks) / world
        assert abs(mean.item() - single["contrastive"][step].item()) <= 1e-6
        for b in "stg":
            assert abs(sum(r["terms"][step][b] for r in ranks).item() / world - single["terms"][step][b].item()) <= 1e-6
        for name, g in single["grads"][step].items():  # DDP-averaged gradients = the global batch's
            assert torch.allclose(ranks[0]["grads"][step][name], g, atol=1e-6), name
    assert single["contrastive"][1].item() > 0
    # the seeds were compared once (equal here); a per-rank seed or generator state raises on every rank
    for r in ranks:
        assert r["seed_checked"]
        assert "seeds differ across DDP ranks" in r["errors"].get("seed", "") and "{0: 7, 1: 8}" in r["errors"]["seed"]
        assert "generator states differ" in r["errors"].get("state", "")
