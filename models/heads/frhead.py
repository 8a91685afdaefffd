"""FR-Head: feature refinement with class prototypes and false-negative / false-positive calibration.

Follows the official code (``zhysora/FR-Head``: ``model/lib.py::RenovateNet`` and
``ST_RenovateNet``, ``model/ctrgcn.py``, ``main.py``, ``utils/config.py``; see
``shared/spec/reference-behaviour.md`` §3.2).

**Stages.** One :class:`STRenovate` (official ``ST_RenovateNet``) per tapped block output, read
with forward hooks on ``encoder.l1``, ``l5``, ``l8``, ``l10`` (official ``feat_low``, ``feat_mid``,
``feat_high``, ``feat_fin``), weighted ``[0.1, 0.2, 0.5, 1]``; the total is
``CE + 0.1 · Σ_l w_l · CL_l`` (``--w-cl-loss 0.1``, ``--w-multi-cl-loss 0.1 0.2 0.5 1``; the official
``start_cl_epoch = -1`` switches it on from the first step). Each stage receives the labels and
the **detached** logits of the classifier.

**STRenovate** on a stage map (N·M, C, T, V):

* spatial: mean over persons, then over T -> (N, C, 1, V) -> ``Conv2d(C, h // V, 1)`` + BN + ReLU
  -> flatten channel-major -> (N, (h // V)·V) -> :class:`Renovate`;
* temporal: mean over persons, then over V -> (N, C, T, 1) -> ``Conv2d(C, h // T, 1)`` + BN + ReLU
  -> (N, (h // T)·T) -> :class:`Renovate`; the stage loss is the sum of both.

**Renovate** (official ``RenovateNet``, K classes, ``h = 256``), on x (N, n_channel):

1. ``f = cl_fc(x)`` (Linear to h); ``p = softmax(logits)``, ``ŷ = argmax logits``; one-hot label
   ``Y`` and prediction ``P`` (N, K); ``TP = Y·P``, ``FN = Y − TP``, ``FP = P − TP``; then
   ``TP ← TP · [p > pred_threshold]``; ``has_fn[k]``, ``has_fp[k]``: some FN / FP of class k.
2. Class means over the batch, with gradient: ``μ_fn[k]`` = mean of the FN features of class k
   (0 if none), ``μ_fp[k]`` likewise, ``μ_tp[k]`` = mean of the TP features.
3. **Prototype momentum update**: ``m_k ← mom·m_k + (1 − mom)·μ_tp[k]`` for the classes with a TP
   in the batch, unchanged otherwise (mom = 0.9). The prototypes ``avg_f`` (h, K) start N(0, 1) and
   are stored detached; the loss uses the updated ``m`` *with* the gradient of the ``μ_tp`` part.
4. Scores (cosines of L2-normalised vectors, norm + 1e-12): ``s_mem[n, k] = cos(f_n, m_k)``.
   Version **V0** (default): with ``q[n, k] = alp · (1 − p[n, y_n]) · Y[n, k]`` (``use_p_map``;
   else ``alp · Y``), only the true class column is calibrated:

   * FN branch ``z_fn = (s_mem + (cos(f_n, μ_fn[k]) − 1) · q · has_fn[k]) / tmp``;
   * FP branch ``z_fp = (s_mem + (−cos(f_n, μ_fp[k]) − 1) · q · has_fp[k]) / tmp``;

   ``loss = mean_n (CE(z_fn[n], y_n) + CE(z_fp[n], y_n))``. alp = tmp = 0.125.
   V1 multiplies both maps by TP; "NO FN" / "NO FP" drop one map (keeping TP on the other);
   "NO FN & FP" keeps only ``s_mem``; V2 uses ``cos(m_k, μ_fn[k]) − 1`` (resp. ``−cos(m_k, μ_fp[k]) − 1``)
   for every sample's column k and weights each sample's CE by ``1 − p[n, y_n]`` (no alp).

Supported encoders: CTR-GCN and 2s-AGCN (the ten-block ``l1 .. l10`` GCN trunk the official hooks
assume; the official code builds FR-Head into CTR-GCN-family models only); others raise a
``ValueError`` at construction.

Departures from the official code:

* The prototypes are **persistent buffers** (``stages.<block>.{spatio,tempor}_cl_net.avg_f``): a
  checkpoint restores them (the official keeps them as a plain attribute, lost on resume and not
  moved by ``.to()``); their N(0, 1) initialisation is drawn from a generator seeded with ``seed``
  instead of the global RNG.
* T' of each stage is read from one dry run of the encoder on ``input_shape`` (the official passes
  ``num_frame // 2`` and ``// 4``, equal for even lengths; NW-UCLA's 52 gives 52, 26, 13 either way).
* The calibration runs in float32 with autocast off; vectorised over classes as in the official.
* DDP (the official has the all-reduce commented out): the stored prototype update uses the TP
  sums and counts all-reduced over ranks, so every rank keeps the same prototypes; each rank's loss
  uses its own batch, as a per-GPU run of the official code would.
* ``num_samples`` and ``labels`` are unused (no per-sample bank); they keep the constructor
  uniform with CSRE and SkeletonGCL. ``index`` is accepted and ignored in ``forward``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from models.agcn import AGCN
from models.csre import CSREOutput, world_and_rank
from models.ctrgcn import CTRGCN
from models.encoder import Encoder, at_least_float32, encoder_state

__all__ = ["FRHead", "Renovate", "STRenovate", "VERSIONS", "OFFICIAL_STAGE_NAMES"]

VERSIONS = ("V0", "V1", "V2", "NO FN", "NO FP", "NO FN & FP")
SUPPORTED = "CTR-GCN (models.ctrgcn.CTRGCN) and 2s-AGCN (models.agcn.AGCN)"
#: official attribute names of the four stage heads (``ren_low`` on l1 ... ``ren_fin`` on l10)
OFFICIAL_STAGE_NAMES = ("ren_low", "ren_mid", "ren_high", "ren_fin")


class Renovate(nn.Module):
    """Official ``RenovateNet``: ``cl_fc`` projection, class prototypes ``avg_f`` (h, K), FN/FP calibration.

    See the module docstring for the formulas. ``forward(x, labels, logits)`` -> 0-dim loss and,
    in training, the prototype update (call it only in training).
    """

    avg_f: Tensor

    def __init__(self, n_channel: int, n_class: int, alp: float = 0.125, tmp: float = 0.125, mom: float = 0.9,
                 h_channel: int | None = None, version: str = "V0", pred_threshold: float = 0.0,
                 use_p_map: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        if tmp <= 0:
            raise ValueError(f"tmp must be positive, got {tmp}")
        if not 0 <= mom <= 1:
            raise ValueError(f"mom must be in [0, 1], got {mom}")
        self.n_channel, self.n_class = int(n_channel), int(n_class)
        self.h_channel = self.n_channel if h_channel is None else int(h_channel)
        self.alp, self.tmp, self.mom = float(alp), float(tmp), float(mom)
        self.version, self.pred_threshold, self.use_p_map = version, float(pred_threshold), bool(use_p_map)
        # prototypes first, then cl_fc: the official construction order
        self.register_buffer("avg_f", torch.randn(self.h_channel, self.n_class, generator=generator))  # (h, K)
        self.cl_fc = nn.Linear(self.n_channel, self.h_channel)

    def forward(self, x: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        f = self.cl_fc(x)  # (N, h)
        with torch.autocast(f.device.type, enabled=False):
            return self._loss(at_least_float32(f), labels.long(), at_least_float32(logits.detach()))

    def _loss(self, f: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        K, eps = self.n_class, 1e-12
        lbl = F.one_hot(labels, K).to(f.dtype)  # (N, K)
        pred = F.one_hot(logits.argmax(1), K).to(f.dtype)
        p = torch.softmax(logits, 1)  # (N, K), no grad
        tp = lbl * pred
        fn, fp = lbl - tp, pred - tp
        tp = tp * (p > self.pred_threshold).to(f.dtype)
        has_fn = (fn.sum(0) > 1e-8).to(f.dtype)  # (K,)
        has_fp = (fp.sum(0) > 1e-8).to(f.dtype)

        # class means (with grad): FN / FP (L1-normalised columns) and TP; prototype momentum update
        mu_fn = f.t() @ (fn / fn.sum(0).clamp_min(eps))  # (h, K)
        mu_fp = f.t() @ (fp / fp.sum(0).clamp_min(eps))
        tp_sum, tp_count = f.t() @ tp, tp.sum(0)  # (h, K), (K,)
        old = at_least_float32(self.avg_f.detach().clone())
        keep = torch.where(tp_count > 1e-8, self.mom, 1.0)  # (K,)
        proto = old * keep + (1 - keep) * (tp_sum / (tp_count + eps))  # (h, K), grad through the TP mean
        self._store(old, proto, tp_sum, tp_count)

        def unit(v: Tensor) -> Tensor:  # rows / (norm + eps), the official normalisation
            return v / (v.norm(p=2, dim=-1, keepdim=True) + eps)

        fz, m, m_fn, m_fp = unit(f), unit(proto.t()), unit(mu_fn.t()), unit(mu_fp.t())  # (N, h), (K, h) x3
        s_mem = fz @ m.t()  # (N, K)
        q = ((1 - p) * lbl if self.use_p_map else lbl) * self.alp  # (N, K): true-class column only
        v = self.version
        if v == "V2":
            fn_map = ((m * m_fn).sum(1) - 1) * has_fn  # (K,), the same for every sample
            fp_map = (-(m * m_fp).sum(1) - 1) * has_fp
            z_fn, z_fp = (s_mem + fn_map) / self.tmp, (s_mem + fp_map) / self.tmp
            w = ((1 - p) * lbl).sum(1)  # (N,)
            return (w * F.cross_entropy(z_fn, labels, reduction="none")
                    + w * F.cross_entropy(z_fp, labels, reduction="none")).mean()
        gate = tp if v in ("V1", "NO FN", "NO FP") else 1.0
        fn_map = (fz @ m_fn.t() - 1) * q * has_fn * gate  # (N, K)
        fp_map = (-(fz @ m_fp.t()) - 1) * q * has_fp * gate
        z_fn = s_mem + (0 if v in ("NO FN", "NO FN & FP") else fn_map)
        z_fp = s_mem + (0 if v in ("NO FP", "NO FN & FP") else fp_map)
        return (F.cross_entropy(z_fn / self.tmp, labels, reduction="none")
                + F.cross_entropy(z_fp / self.tmp, labels, reduction="none")).mean()

    @torch.no_grad()
    def _store(self, old: Tensor, proto: Tensor, tp_sum: Tensor, tp_count: Tensor) -> None:
        """Write the updated prototypes; under DDP from the TP statistics of all ranks."""
        if world_and_rank()[0] > 1:
            tp_sum, tp_count = tp_sum.detach().clone(), tp_count.detach().clone()
            dist.all_reduce(tp_sum)
            dist.all_reduce(tp_count)
            keep = torch.where(tp_count > 1e-8, self.mom, 1.0)
            proto = old * keep + (1 - keep) * (tp_sum / (tp_count + 1e-12))
        self.avg_f.copy_(proto.detach())

    def extra_repr(self) -> str:
        return (f"n_class={self.n_class}, alp={self.alp}, tmp={self.tmp}, mom={self.mom}, version={self.version!r}, "
                f"pred_threshold={self.pred_threshold}, use_p_map={self.use_p_map}")


class STRenovate(nn.Module):
    """Official ``ST_RenovateNet``: spatial and temporal squeeze of a stage map, one :class:`Renovate` each.

    Args:
        n_channel, n_frame, n_joint: C, T' and V of the stage map (N·M, C, T', V).
        n_class: K. h_channel: 256. Other keyword arguments go to :class:`Renovate`.
    """

    def __init__(self, n_channel: int, n_frame: int, n_joint: int, n_class: int, h_channel: int = 256,
                 generator: torch.Generator | None = None, **kwargs) -> None:
        super().__init__()
        if h_channel // n_joint < 1 or h_channel // n_frame < 1:
            raise ValueError(f"h_channel={h_channel} must be at least V={n_joint} and T'={n_frame}")
        self.n_channel, self.n_frame, self.n_joint = int(n_channel), int(n_frame), int(n_joint)
        s, t = h_channel // n_joint, h_channel // n_frame
        self.spatio_cl_net = Renovate(s * n_joint, n_class, h_channel=h_channel, generator=generator, **kwargs)
        self.tempor_cl_net = Renovate(t * n_frame, n_class, h_channel=h_channel, generator=generator, **kwargs)
        self.spatio_squeeze = nn.Sequential(nn.Conv2d(n_channel, s, kernel_size=1), nn.BatchNorm2d(s), nn.ReLU(True))
        self.tempor_squeeze = nn.Sequential(nn.Conv2d(n_channel, t, kernel_size=1), nn.BatchNorm2d(t), nn.ReLU(True))

    def forward(self, x: Tensor, labels: Tensor, logits: Tensor, num_person: int) -> Tensor:
        NM, C, T, V = x.shape
        if (C, T, V) != (self.n_channel, self.n_frame, self.n_joint):
            raise ValueError(f"STRenovate built for (C, T', V) = {(self.n_channel, self.n_frame, self.n_joint)}, "
                             f"got a stage map of shape {tuple(x.shape)}")
        x = x.view(NM // num_person, num_person, C, T, V).mean(1)  # (N, C, T, V)
        spatial = self.spatio_squeeze(x.mean(-2, keepdim=True)).flatten(1)  # (N, (h//V)·V)
        temporal = self.tempor_squeeze(x.mean(-1, keepdim=True)).flatten(1)  # (N, (h//T)·T)
        return self.spatio_cl_net(spatial, labels, logits) + self.tempor_cl_net(temporal, labels, logits)


class FRHead(nn.Module):
    """An encoder (CTR-GCN or 2s-AGCN) with FR-Head on several stages (training only).

    Train mode: ``model(x, labels, index=None)`` -> :class:`~models.csre.CSREOutput` with
    ``terms = {block: CL_block}`` (unweighted), ``valid = {block: (N,) all True}`` (every sample
    contributes) and ``contrastive = weight · Σ stage_weights[l] · CL_l``. Eval mode:
    ``model(x) == encoder(x)``.

    Args:
        encoder: a :class:`~models.ctrgcn.CTRGCN` or :class:`~models.agcn.AGCN`.
        num_samples, labels: unused (the interface of CSRE / SkeletonGCL); labels, if given, are
            checked against ``encoder.num_class``.
        input_shape: (C, T, V, M) of the encoder's input: the stages' (C, T', V) come from one dry
            run. Or give ``stage_shapes``.
        stage_shapes: {block: (C, T', V)} for every block of ``stages``.
        stages: tapped blocks (official l1, l5, l8, l10). stage_weights: their weights (0.1, 0.2, 0.5, 1).
        weight: total contrastive weight (official ``--w-cl-loss 0.1``).
        h_channel, alp, tmp, mom, version, pred_threshold, use_p_map: :class:`Renovate`'s (official
            256, 0.125, 0.125, 0.9, 'V0', 0.0, True).
        seed: seed of the prototypes' N(0, 1) initialisation.
    """

    def __init__(self, encoder: Encoder, num_samples: int | None = None, labels: Tensor | Sequence[int] | None = None,
                 *, input_shape: Sequence[int] | None = None,
                 stage_shapes: Mapping[str, Sequence[int]] | None = None,
                 stages: Sequence[str] = ("l1", "l5", "l8", "l10"),
                 stage_weights: Sequence[float] = (0.1, 0.2, 0.5, 1.0), weight: float = 0.1, h_channel: int = 256,
                 alp: float = 0.125, tmp: float = 0.125, mom: float = 0.9, version: str = "V0",
                 pred_threshold: float = 0.0, use_p_map: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(encoder, (CTRGCN, AGCN)):
            raise ValueError(
                f"FR-Head supports {SUPPORTED} only, got {type(encoder).__name__}: it taps the outputs of blocks "
                "l1, l5, l8 and l10 of the ten-block GCN trunk, as the official code does inside CTR-GCN")
        stages, stage_weights = tuple(stages), tuple(float(w) for w in stage_weights)
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct block names, got {stages!r}")
        if len(stage_weights) != len(stages):
            raise ValueError(f"one weight per stage: {len(stages)} stages, {len(stage_weights)} weights")
        missing = [s for s in stages if not isinstance(getattr(encoder, s, None), nn.Module)]
        if missing:
            raise ValueError(f"the encoder has no blocks {missing} (blocks are l1 .. l10)")
        if labels is not None:
            labels = torch.as_tensor(labels).flatten()
            if num_samples is not None and labels.numel() != num_samples:
                raise ValueError(f"labels has {labels.numel()} entries but num_samples={num_samples}")
            if labels.numel() and (labels.min() < 0 or labels.max() >= encoder.num_class):
                raise ValueError(f"labels must lie in [0, {encoder.num_class}) (encoder.num_class)")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        if stage_shapes is None:
            if input_shape is None:
                raise ValueError("give input_shape=(C, T, V, M) (the stages' T' are read from a dry run of the "
                                 "encoder) or stage_shapes={block: (C, T', V)}")
            stage_shapes = self._probe(encoder, stages, input_shape)
        shapes = {s: tuple(int(v) for v in stage_shapes[s]) for s in stages}

        self.encoder = encoder
        self.stage_names, self.stage_weights, self.weight = stages, dict(zip(stages, stage_weights)), float(weight)
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        kwargs = dict(alp=alp, tmp=tmp, mom=mom, version=version, pred_threshold=pred_threshold, use_p_map=use_p_map)
        self.stages = nn.ModuleDict({
            s: STRenovate(C, T, V, encoder.num_class, h_channel=h_channel, generator=g, **kwargs)
            for s, (C, T, V) in shapes.items()})
        self.config = dict(h_channel=h_channel, **kwargs)

    @staticmethod
    def _probe(encoder: Encoder, stages: Sequence[str], input_shape: Sequence[int]) -> dict[str, tuple[int, int, int]]:
        C, T, V, M = (int(v) for v in input_shape)
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        shapes: dict[str, tuple[int, int, int]] = {}
        handles = [getattr(encoder, s).register_forward_hook(
            lambda _m, _i, out, s=s: shapes.__setitem__(s, tuple(out.shape[1:]))) for s in stages]
        was_training = encoder.training
        encoder.eval()  # no BatchNorm statistics update
        try:
            with torch.no_grad():
                encoder.features(torch.zeros(1, C, T, V, M, device=device))
        finally:
            encoder.train(was_training)
            for h in handles:
                h.remove()
        return shapes

    @contextlib.contextmanager
    def _capture(self) -> Iterator[dict[str, Tensor]]:
        """Collect the outputs of the stage blocks produced inside the ``with`` body."""
        out: dict[str, Tensor] = {}
        handles = [getattr(self.encoder, s).register_forward_hook(
            lambda _m, _i, y, s=s: out.__setitem__(s, y)) for s in self.stage_names]
        try:
            yield out
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: Tensor, labels: Tensor | None = None, index: Tensor | None = None) -> Tensor | CSREOutput:
        """Eval mode: ``encoder(x)`` exactly. Train mode: :class:`CSREOutput` (needs labels)."""
        if not self.training:
            return self.encoder(x)
        if labels is None:
            raise ValueError("in train mode FRHead needs the batch labels: model(x, labels, index)")
        M = self.encoder.persons_in(x)
        with self._capture() as feats:
            fmap = self.encoder.features(x)
        logits = self.encoder.head(fmap, M)
        labels = labels.to(logits.device, torch.long)
        detached = logits.detach()
        terms = {s: self.stages[s](feats[s], labels, detached, M) for s in self.stage_names}
        contrastive = self.weight * sum(self.stage_weights[s] * terms[s] for s in self.stage_names)
        ones = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        return CSREOutput(logits, contrastive, terms, {s: ones for s in self.stage_names})

    # -- removal and official checkpoints ----------------------------------------------------

    def export(self) -> OrderedDict[str, Tensor]:
        """Encoder-only state_dict (no stage heads, no prototypes): loads strictly into the bare encoder."""
        return encoder_state(self.encoder)

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load an official FR-Head checkpoint: encoder keys unprefixed, stage heads ``ren_low`` / ``ren_mid``
        / ``ren_high`` / ``ren_fin`` (the four stages in order; ``module.`` prefixes stripped). The official
        checkpoints carry no prototypes (a plain attribute there); ours stay as they are."""
        sd = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state_dict.items())
        if len(self.stage_names) != len(OFFICIAL_STAGE_NAMES):
            raise ValueError(f"official checkpoints have {len(OFFICIAL_STAGE_NAMES)} stages, this head has "
                             f"{len(self.stage_names)}")
        prefixes = {f"{o}.": s for o, s in zip(OFFICIAL_STAGE_NAMES, self.stage_names)}
        enc, heads = OrderedDict(), {s: OrderedDict() for s in self.stage_names}
        for k, v in sd.items():
            prefix = next((p for p in prefixes if k.startswith(p)), None)
            if prefix is None:
                enc[k] = v
            else:
                heads[prefixes[prefix]][k[len(prefix):]] = v
        self.encoder.load_state_dict(enc, strict=strict)
        for s, part in heads.items():
            result = self.stages[s].load_state_dict(part, strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("avg_f")]
            if strict and (missing or result.unexpected_keys):
                raise RuntimeError(f"stage {s}: missing keys {missing}, unexpected keys {result.unexpected_keys}")

    def extra_repr(self) -> str:
        return f"stages={self.stage_weights}, weight={self.weight}, seed={self.seed}, " + \
            ", ".join(f"{k}={v!r}" for k, v in self.config.items())
