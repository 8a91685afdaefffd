"""The command line: verbs are listed, prepare builds files, bad input gives a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data import h5
from harness.cli import main
from tests.conftest import REPO, realdata_dir

UCLA_TAR = REPO / "data" / "raw" / "nwucla" / "all_sqe.tar.gz"


def test_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "harness", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    for verb in ("prepare", "summary"):
        assert verb in out


def test_prepare_ucla_and_summary(tmp_path, capsys):
    out = tmp_path / "ucla.h5"
    assert main(["prepare", "ucla", "--raw", str(UCLA_TAR), "--out", str(out), "--no-progress"]) == 0
    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1,484 samples" in text
    assert "split xview: train 1,020" in text and "test 464" in text


def test_prepare_ntu_with_overridden_threshold(tmp_path):
    out = tmp_path / "ntu60.h5"
    raw = realdata_dir() / "ntu_raw_skeleton"
    assert main(["prepare", "ntu60", "--raw", str(raw), "--out", str(out), "--workers", "1",
                 "--min-frames", "5", "--no-progress"]) == 0
    idx = h5.read_index(out)
    assert idx.shape[0] == 4
    assert idx.params["min_frames"] == 5


def test_prepare_missing_raw_dir_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nturgb+d_skeletons"
    code = main(["prepare", "ntu60", "--raw", str(missing), "--out", str(tmp_path / "o.h5"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert str(missing) in err
    assert not (tmp_path / "o.h5").exists()


def test_unknown_verb_fails():
    with pytest.raises(SystemExit):
        main(["nope"])
