"""data/synthetic.py: seeded NTU-format files that the strict parser reads back as written."""

from __future__ import annotations

import numpy as np

from data import h5, ntu, synthetic


def test_same_seed_same_bytes_and_crlf(tmp_path):
    a = synthetic.write_skeleton(tmp_path / "a.skeleton", n_frames=30, bodies=2, seed=3)
    b = synthetic.write_skeleton(tmp_path / "b.skeleton", n_frames=30, bodies=2, seed=3)
    c = synthetic.write_skeleton(tmp_path / "c.skeleton", n_frames=30, bodies=2, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    lines = a.read_bytes().split(b"\r\n")
    assert b"\n" not in b"".join(lines)  # CRLF only
    assert len(lines[2].split()) == 10 and lines[3] == b"25" and len(lines[4].split()) == 12


def test_round_trip_through_the_parser(tmp_path):
    spec = [synthetic.BodySpec(frames=(2, 40), absent=(10, 11, 12), body_id=111),
            synthetic.BodySpec(frames=(0, 49), body_id=222, x_offset=0.8)]
    path = synthetic.write_skeleton(tmp_path / "S001C001P001R001A050.skeleton", n_frames=50, bodies=spec,
                                    empty_frames=[5, 49], seed=1)
    sk = ntu.parse_skeleton(path)
    assert sk.n_frames_in_file == 50 and sk.empty_frames == [5, 49]
    # body 222 is in frame 0 and first in the file; 111 appears from frame 2 (kept index 2)
    assert [b.body_id for b in sk.bodies] == ["222", "111"]
    assert sk.bodies[0].interval == (0, 47)
    assert sk.bodies[1].n_frames == 39 - 1 - 3 and sk.bodies[1].interval == (2, 2 + 35 - 1)
    for body in sk.bodies:
        x, y = body.joints[..., 0], body.joints[..., 1]
        assert body.joints.dtype == np.float32 and np.isfinite(body.joints).all()
        assert not ntu.noisy_frames(body.joints, 0.8).any()  # standing people are not noise
        assert (y.max(1) - y.min(1)).min() > 1.2 and 2 < body.joints[..., 2].mean() < 4
    assert ntu.process_file(path, "ntu60").info.actor_slots is not None


def test_lying_bodies_are_noisy(tmp_path):
    path = synthetic.write_skeleton(tmp_path / "x.skeleton", n_frames=20, seed=0,
                                    bodies=[synthetic.BodySpec(lying=True)])
    assert ntu.noisy_frames(ntu.parse_skeleton(path).bodies[0].joints, 0.8).all()


def test_corpus_and_h5(tmp_path):
    names = synthetic.random_names(20, seed=2, variant="ntu60")
    assert len(set(names)) == 20 and all(ntu.in_variant(ntu.parse_name(n), "ntu60") for n in names)
    assert not set(names) & ntu.missing_samples("ntu60")
    out = synthetic.write_h5(tmp_path / "small.h5", n_samples=6, variant="ntu120", seed=1)
    index = h5.read_index(out)
    assert index.shape[0] == 6 and set(index.splits) == {"xsub", "xset"}
    assert (index.length >= 40).all()
