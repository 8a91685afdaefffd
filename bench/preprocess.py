"""Benchmark of the NTU preprocessing: files per second, printed (nothing is asserted).

Writes ``--files`` synthetic ``.skeleton`` files of realistic size (70-300 frames, 1-2 bodies,
CRLF) to a temporary folder and times

  (a) baseline: a straightforward line-by-line reader (one ``np.array(tokens[:3], float32)`` per
      joint line and a ``vstack`` per frame, as the official scripts read) + the same pipeline;
  (b) ``prepare(workers=1)`` (fast parser + pipeline + HDF5 write);
  (c) ``prepare(workers=N)``.

and projects a full NTU120 build (113,945 files) on 16 cores from the per-core rate of (b).

    python bench/preprocess.py [--files 200] [--workers N] [--frames 70 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import ntu, synthetic  # noqa: E402

logging.getLogger("data.ntu").setLevel(logging.ERROR)  # the "partial dataset" warning is expected here

NTU120_FILES = 113_945


def baseline_parse(path: Path) -> ntu.Skeleton:
    """The simple way: read lines, walk them one by one, convert each joint line on its own."""
    with open(path) as f:
        lines = f.readlines()
    n_frames = int(lines[0])
    cur, kept, empty = 1, -1, []
    joints: dict[str, list[np.ndarray]] = {}
    first: dict[str, int] = {}
    for frame in range(n_frames):
        n_bodies = int(lines[cur])
        cur += 1
        if n_bodies == 0:
            empty.append(frame)
            continue
        kept += 1
        for _ in range(n_bodies):
            body_id = lines[cur].split()[0]
            n_joints = int(lines[cur + 1])
            cur += 2
            xyz = np.zeros((n_joints, 3), dtype=np.float32)
            for j in range(n_joints):
                xyz[j] = np.array(lines[cur].split()[:3], dtype=np.float32)
                cur += 1
            first.setdefault(body_id, kept)
            joints[body_id] = joints.get(body_id, []) + [xyz]
    bodies = [ntu.Body(b, np.stack(js), first[b]) for b, js in joints.items()]
    return ntu.Skeleton(path.stem, str(path), n_frames, empty, bodies)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200, help="synthetic files to write (default 200)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for (c) (default: all cores)")
    parser.add_argument("--frames", type=int, nargs=2, default=(70, 300), metavar=("MIN", "MAX"),
                        help="file lengths, uniform (default 70 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        write_s = timed(lambda: synthetic.write_corpus(raw, args.files, seed=args.seed, frames=tuple(args.frames),
                                                       two_body_fraction=0.3))
        paths = sorted(raw.glob("*.skeleton"))
        sizes = [ntu.parse_skeleton(p) for p in paths]
        mean_frames = np.mean([s.n_frames for s in sizes])
        two = np.mean([len(s.bodies) > 1 for s in sizes])
        mb = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{len(paths)} files, {mb:.1f} MiB, mean {mean_frames:.0f} frames, {two:.0%} with 2 bodies "
              f"(written in {write_s:.1f} s); {os.cpu_count()} cores")

        for p in paths[:20]:  # both readers must agree before their speeds mean anything
            a, b = ntu.process_skeleton(baseline_parse(p), "ntu60"), ntu.process_file(p, "ntu60")
            assert np.array_equal(a.x, b.x), p

        base_s = timed(lambda: [ntu.process_skeleton(baseline_parse(p), "ntu60") for p in paths])
        parse_s = timed(lambda: [ntu.parse_skeleton(p) for p in paths])
        one_s = timed(lambda: ntu.prepare(raw, out / "w1.h5", "ntu60", workers=1, progress=False))
        many_s = timed(lambda: ntu.prepare(raw, out / "wn.h5", "ntu60", workers=args.workers, progress=False))

        n = len(paths)
        rate = {"baseline": n / base_s, "one": n / one_s, "many": n / many_s}
        print(f"(a) baseline line-by-line reader + pipeline : {rate['baseline']:8.1f} files/s   1.00x")
        print(f"    fast parser alone                        : {n / parse_s:8.1f} files/s   "
              f"{n / parse_s / rate['baseline']:.2f}x")
        print(f"(b) prepare(workers=1)                       : {rate['one']:8.1f} files/s   "
              f"{rate['one'] / rate['baseline']:.2f}x")
        print(f"(c) prepare(workers={args.workers})".ljust(45) + f": {rate['many']:8.1f} files/s   "
              f"{rate['many'] / rate['baseline']:.2f}x  ({rate['many'] / rate['one']:.2f}x over workers=1)")
        projected = NTU120_FILES / (16 * rate["one"])
        print(f"projected NTU120 build ({NTU120_FILES:,} files) on 16 cores at the per-core rate of (b): "
              f"{projected / 60:.1f} min for files like these (mean {mean_frames:.0f} frames; pick --frames to "
              f"match the real length distribution); writing the ~19 GiB HDF5 may bound it instead")

if __name__ == "__main__":
    main()
