"""CSRE cost at NTU120 X-Sub scale: the vectorised loss against a per-anchor loop, and the step overhead.

Setting: one memory bank of 63,026 x 256 (the NTU120 X-Sub training set), fully filled (the
steady state after the first epoch), 120 classes with the real X-Sub class counts (from the
CTR-GCN statistics files under ``shared/realdata`` when present, else a seeded stand-in with the
same total), batch 64, K_pos = 128, K_hard = K_rand = 512, tau = 0.8.

* **loss**: one call for one bank (what the official ``ContrastLoss.forward`` does per step and
  bank): normalise, write the batch, select, score. ``vectorised`` = :func:`models.csre.csre_infonce`
  with :class:`models.csre.MemoryBank`; ``loop`` = a straightforward per-anchor implementation
  written below in the style of the official code (Python loop, ``masked_select``, two full sorts,
  ``random.sample`` over a list of negatives). Forward only, and forward + backward. Both also
  compute the hard-negatives-only loss once, as a check that they agree.
* **step**: a CTR-GCN training step (forward, backward, SGD step) at batch ``--step-batch`` and
  ``--frames`` frames, without and with CSRE (two banks), interleaved A/B/A/B. The overhead is
  ``csre / baseline - 1``. It shrinks with the clip length (the encoder's cost grows with T, the
  head's does not): the default 64 frames is the official NTU input. On 2 CPU cores one step takes
  about 20 s and varies by several per cent from step to step, so the difference of two medians
  is noise-dominated; ``head_s`` times the CSRE head alone (STFD, both bank writes and losses,
  their backward) on the encoder's real final map, and ``overhead_head = head_s / baseline_s`` is
  the overhead without that noise.

Aims of issue 4: loss >= 10x faster than the loop on CPU (>= 50x on a GPU), step overhead <= 5 %.

    python -m bench.csre                # text; about 3 minutes on 2 CPU cores
    python -m bench.csre --json         # one JSON object on stdout
    python -m bench.csre --frames 32 --step-batch 32 --steps 3 --device cuda

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python bench/csre.py` as well as `python -m bench.csre`
    sys.path.insert(0, str(REPO))

from bench.timing import timed  # noqa: E402
from models.csre import CSRE, MemoryBank, class_slot_table, csre_infonce  # noqa: E402
from models.ctrgcn import CTRGCN  # noqa: E402

NTU120_XSUB_TRAIN = 63_026
STATISTICS = REPO.parent / "shared" / "realdata" / "ntu_statistics_ctrgcn" / "ntu120"


# ---------------------------------------------------------------------------------- data

def class_counts(num_class: int = 120) -> tuple[torch.Tensor, str]:
    """NTU120 X-Sub training counts per class: real metadata if available, else a seeded stand-in."""
    try:
        from data.ntu import NTU120_XSUB_TRAIN_SUBJECTS
        labels = [int(v) for v in (STATISTICS / "label.txt").read_text().split()]
        performers = [int(v) for v in (STATISTICS / "performer.txt").read_text().split()]
        train = [lab - 1 for lab, p in zip(labels, performers) if p in NTU120_XSUB_TRAIN_SUBJECTS]
        counts = torch.bincount(torch.tensor(train), minlength=num_class)
        if int(counts.sum()) == NTU120_XSUB_TRAIN and counts.numel() == num_class:
            return counts, "NTU120 X-Sub train (CTR-GCN statistics files)"
    except (OSError, ValueError, ImportError):
        pass
    g = torch.Generator().manual_seed(0)
    weights = 1 + 0.15 * torch.randn(num_class, generator=g).clamp(-2, 2)
    counts = (weights / weights.sum() * NTU120_XSUB_TRAIN).floor().long()
    counts[: NTU120_XSUB_TRAIN - int(counts.sum())] += 1
    return counts, "seeded stand-in (statistics files not found)"


def make_bank(counts: torch.Tensor, dim: int, device: torch.device, seed: int = 0) -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    labels = labels[torch.randperm(labels.numel(), generator=g)]  # dataset order is not class order
    bank = MemoryBank(dim, labels)
    bank.features.copy_(F.normalize(torch.randn(labels.numel(), dim, generator=g), dim=1))
    bank.filled.fill_(True)
    return bank.to(device)


# ---------------------------------------------------------------------------------- the loop

def loop_loss(f: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, bank: torch.Tensor, flag: torch.Tensor,
              label_all: torch.Tensor, P: int, N: int, T: float, rng: random.Random, hard_only: bool = False
              ) -> torch.Tensor:
    """Per-anchor loop in the style of the official ``ContrastLoss.forward`` (for comparison only)."""
    z = f / f.norm(dim=1, keepdim=True)
    bank[index] = z.detach()
    flag[index] = 1
    sim = z @ bank.t()  # (n, S)
    rows = []
    for i in range(z.shape[0]):
        pos_mask = (label_all == labels[i]) & (flag == 1)
        neg_mask = (label_all != labels[i]) & (flag == 1)
        if pos_mask.sum() < P or neg_mask.sum() < N:  # host syncs
            continue
        pos = torch.masked_select(sim[i], pos_mask)
        neg = torch.masked_select(sim[i], neg_mask)
        pos = torch.sort(pos)[0][:P]  # hardest positives: lowest similarity
        hard = torch.sort(neg, descending=True)[0][:N]  # hardest negatives: highest similarity
        rows.append(torch.cat([pos[:, None], hard[None, :].expand(P, N)], 1))
        if not hard_only:
            rand = neg[rng.sample(list(range(len(neg))), N)]
            rows.append(torch.cat([pos[:, None], rand[None, :].expand(P, N)], 1))
    if not rows:
        return torch.zeros(1, device=f.device)
    logits = torch.cat(rows) / T
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=f.device))


def vectorised_loss(f: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, bank: MemoryBank, slots: torch.Tensor,
                    P: int, N: int, T: float, generator: torch.Generator, hard_only: bool = False) -> torch.Tensor:
    """What :class:`models.csre.CSRE` runs per bank: normalise, write, loss (positives via the class-slot table)."""
    z = F.normalize(f, dim=1)
    bank.update(z, labels, index)
    return csre_infonce(z, bank.features, bank.labels, bank.filled, labels, K_pos=P, K_hard=N, K_rand=N, tau=T,
                        neg_strategy="H" if hard_only else "R+H", candidates=slots[labels],
                        generator=generator).loss


# ---------------------------------------------------------------------------------- timing

def bench_loss(args: argparse.Namespace, device: torch.device, counts: torch.Tensor) -> dict:
    bank = make_bank(counts, args.dim, device)
    label_all = bank.labels.clone()
    slots = class_slot_table(label_all.cpu()).to(device)
    loop_bank, loop_flag = bank.features.clone(), bank.filled.float()
    g = torch.Generator(device=device).manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    S = label_all.numel()

    def batch():
        index = torch.randperm(S, generator=gen)[: args.batch].to(device)
        f = (torch.randn(args.batch, args.dim, generator=gen) * 2).to(device).requires_grad_()
        return f, label_all[index], index

    rng = random.Random(0)
    P, N, T = args.k_pos, args.k_neg, args.tau
    out: dict = {}
    for backward in (False, True):
        def ours():
            f, y, idx = batch()
            loss = vectorised_loss(f, y, idx, bank, slots, P, N, T, g)
            if backward:
                loss.backward()

        def loop():
            f, y, idx = batch()
            loss = loop_loss(f, y, idx, loop_bank, loop_flag, label_all, P, N, T, rng)
            if backward:
                loss.backward()

        key = "fwd_bwd" if backward else "fwd"
        t_ours = timed(ours, device, args.loss_repeats)
        t_loop = timed(loop, device, args.loop_repeats)
        out[f"vectorised_{key}_s"] = statistics.median(t_ours)
        out[f"loop_{key}_s"] = statistics.median(t_loop)
        out[f"vectorised_{key}_min_s"] = min(t_ours)
        out[f"loop_{key}_min_s"] = min(t_loop)
        out[f"speedup_{key}"] = out[f"loop_{key}_s"] / out[f"vectorised_{key}_s"]

    # agreement on the draw-independent part (hard negatives only), same bank state and batch
    f, y, idx = batch()
    with torch.no_grad():
        a = vectorised_loss(f, y, idx, bank, slots, P, N, T, g, hard_only=True)
        b = loop_loss(f, y, idx, bank.features.clone(), bank.filled.float(), label_all, P, N, T, rng, hard_only=True)
    out["hard_only_abs_diff"] = abs(float(a) - float(b))
    return out


def bench_step(args: argparse.Namespace, device: torch.device, counts: torch.Tensor) -> dict:
    num_class, M, V = counts.numel(), 2, 25
    torch.manual_seed(0)
    base = CTRGCN(num_class=num_class, num_point=V, num_person=M, graph="ntu").to(device).train()
    torch.manual_seed(0)
    labels = make_bank(counts, args.dim, torch.device("cpu")).labels
    csre = CSRE(CTRGCN(num_class=num_class, num_point=V, num_person=M, graph="ntu"), labels.numel(), labels,
                input_shape=(3, args.frames, V, M), K_pos=args.k_pos, K_hard=args.k_neg, K_rand=args.k_neg,
                tau=args.tau).to(device).train()
    for bank in csre.banks.values():  # steady state: every slot filled
        bank.features.copy_(F.normalize(torch.randn_like(bank.features), dim=1))
        bank.filled.fill_(True)
    opt_base = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9)
    opt_csre = torch.optim.SGD(csre.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(2)

    def batch():
        index = torch.randperm(labels.numel(), generator=gen)[: args.step_batch]
        x = torch.randn(args.step_batch, 3, args.frames, V, M, generator=gen)
        return x.to(device), labels[index].to(device), index.to(device)

    def step_base():
        x, y, _ = batch()
        loss = F.cross_entropy(base(x), y)
        opt_base.zero_grad(set_to_none=True)
        loss.backward()
        opt_base.step()

    def step_csre():
        x, y, idx = batch()
        out = csre(x, y, idx)
        loss = F.cross_entropy(out.logits, y) + out.contrastive
        opt_csre.zero_grad(set_to_none=True)
        loss.backward()
        opt_csre.step()

    for _ in range(args.warmup):
        step_base()
        step_csre()
    t_base, t_csre = [], []
    for _ in range(args.steps):  # interleaved, so slow drifts of the machine hit both alike
        t_base += timed(step_base, device, 1, warmup=0)
        t_csre += timed(step_csre, device, 1, warmup=0)
    b, c = statistics.median(t_base), statistics.median(t_csre)

    # the head alone (STFD, two bank writes and losses, their backward) on the encoder's real final
    # map: the step difference above is within the noise of a ~20 s CPU step, this is not
    x, y, idx = batch()
    with torch.no_grad():
        fmap = csre.encoder.features(x)  # (N·M, C', T', V)

    def head():
        f = fmap.detach().requires_grad_()
        terms, _ = csre.contrast(csre.branch_features(f, M), y, idx)
        sum(csre.weights[k] * v for k, v in terms.items()).backward()

    t_head = timed(head, device, args.head_repeats)
    h = statistics.median(t_head)
    return {"baseline_s": b, "csre_s": c, "baseline_min_s": min(t_base), "csre_min_s": min(t_csre),
            "overhead": c / b - 1, "overhead_min": min(t_csre) / min(t_base) - 1,
            "head_s": h, "overhead_head": h / b,
            "csre_params": sum(p.numel() for n, p in csre.named_parameters() if not n.startswith("encoder."))}


# ---------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="anchors per loss call")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k-pos", type=int, default=128)
    ap.add_argument("--k-neg", type=int, default=512, help="K_hard = K_rand")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--loss-repeats", type=int, default=7, help="timed vectorised calls (median reported)")
    ap.add_argument("--loop-repeats", type=int, default=3, help="timed loop calls (median reported)")
    ap.add_argument("--step-batch", type=int, default=64)
    ap.add_argument("--frames", type=int, default=64, help="clip length of the training-step comparison")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model (interleaved)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    ap.add_argument("--head-repeats", type=int, default=7, help="timed calls of the CSRE head alone")
    ap.add_argument("--skip-step", action="store_true", help="only the loss comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    counts, source = class_counts()

    result: dict = {"config": {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "bank": [int(counts.sum()), args.dim], "classes": int(counts.numel()),
        "class_counts": {"source": source, "min": int(counts.min()), "max": int(counts.max())},
        "batch": args.batch, "K_pos": args.k_pos, "K_hard": args.k_neg, "K_rand": args.k_neg, "tau": args.tau,
        "step": None if args.skip_step else {"batch": args.step_batch, "frames": args.frames, "steps": args.steps,
                                            "warmup": args.warmup, "encoder": "ctrgcn", "banks": 2},
    }}
    t0 = time.perf_counter()
    result["loss"] = bench_loss(args, device, counts)
    if not args.skip_step:
        result["step"] = bench_step(args, device, counts)
    gpu = device.type == "cuda"
    result["aims"] = {"loss_speedup_min": 50 if gpu else 10, "step_overhead_max": 0.05,
                      "loss_met": result["loss"]["speedup_fwd"] >= (50 if gpu else 10),
                      "step_met": None if args.skip_step else result["step"]["overhead"] <= 0.05,
                      "head_met": None if args.skip_step else result["step"]["overhead_head"] <= 0.05}
    result["wall_s"] = time.perf_counter() - t0

    if args.json:
        print(json.dumps(result, indent=2))
        return result
    cfg, loss = result["config"], result["loss"]
    print(f"CSRE bench on {cfg['device']} ({cfg['cpu_threads']} CPU threads), bank {cfg['bank'][0]:,} x "
          f"{cfg['bank'][1]}, {cfg['classes']} classes ({cfg['class_counts']['source']}), batch {args.batch}")
    print(f"{'loss, one bank':22} {'vectorised':>11} {'loop':>9} {'speed-up':>9}")
    for key, name in (("fwd", "forward"), ("fwd_bwd", "forward + backward")):
        print(f"{name:22} {loss[f'vectorised_{key}_s'] * 1e3:9.1f}ms {loss[f'loop_{key}_s'] * 1e3:7.0f}ms "
              f"{loss[f'speedup_{key}']:8.1f}x")
    print(f"hard-negatives-only loss, |vectorised - loop| = {loss['hard_only_abs_diff']:.2e}")
    if not args.skip_step:
        st = result["step"]
        print(f"CTR-GCN step, batch {args.step_batch}, {args.frames} frames: baseline {st['baseline_s']:.3f}s, "
              f"+CSRE {st['csre_s']:.3f}s, overhead {st['overhead'] * 100:+.1f}% (min-based "
              f"{st['overhead_min'] * 100:+.1f}%), head parameters {st['csre_params']:,}")
        print(f"CSRE head alone (STFD + 2 banks, forward + backward): {st['head_s'] * 1e3:.0f}ms = "
              f"{st['overhead_head'] * 100:.2f}% of the baseline step")
    print(f"aims: loss >= {result['aims']['loss_speedup_min']}x: {result['aims']['loss_met']}; "
          f"step overhead <= 5%: {result['aims']['step_met']} (head alone: {result['aims']['head_met']})  "
          f"({result['wall_s']:.0f}s)")
    return result


if __name__ == "__main__":
    main()
