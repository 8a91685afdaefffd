"""Checkpoint files: atomic save and load, refusal of foreign files, official state_dict unwrapping."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from harness import checkpoint as ckpt_lib


def test_save_load_round_trip_and_rng(tmp_path):
    torch.manual_seed(3)
    state = ckpt_lib.capture_rng()
    ckpt_lib.save(tmp_path / "c.pt", {"epoch": 2, "rng": state})
    assert not list(tmp_path.glob(".*.tmp"))
    a = torch.rand(3)
    ck = ckpt_lib.load(tmp_path / "c.pt")
    assert ck["epoch"] == 2 and ck["format"] == ckpt_lib.FORMAT
    ckpt_lib.restore_rng(ck["rng"])
    assert torch.equal(torch.rand(3), a)


def test_foreign_and_damaged_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt_lib.load(tmp_path / "none.pt")
    torch.save({"model": {}}, tmp_path / "official.pt")
    with pytest.raises(ValueError, match="official.pt: not a csre-bench training checkpoint.*harness eval"):
        ckpt_lib.load(tmp_path / "official.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="torn.pt: unreadable checkpoint"):
        ckpt_lib.load(tmp_path / "torn.pt")


def test_official_encoder_state_unwraps_every_layout():
    w = torch.ones(2)
    expected = OrderedDict([("fc.weight", w)])
    assert ckpt_lib.official_encoder_state({"fc.weight": w}) == expected  # bare state_dict
    assert ckpt_lib.official_encoder_state({"state_dict": {"module.fc.weight": w}}) == expected  # DataParallel
    official_csre = {"fc.weight": w, "std.conv1.weight": w}  # CSRE main.py: encoder keys plus std.*
    assert ckpt_lib.official_encoder_state(official_csre) == expected
    ours = {"format": ckpt_lib.FORMAT, "model": {"encoder.fc.weight": w, "std.convs.weight": w, "banks.s.features": w}}
    assert ckpt_lib.official_encoder_state(ours) == expected
    with pytest.raises(ValueError, match="x.pt: no state_dict of tensors"):
        ckpt_lib.official_encoder_state({"epoch": 3}, "x.pt")
