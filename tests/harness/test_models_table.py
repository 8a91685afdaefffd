"""``python -m harness models``: official parameter counts, MACs from FlopCounterMode, clear errors."""

from __future__ import annotations

import gin
import pytest
import torch

from harness.cli import build_parser, main
from harness.models_table import BENCHMARKS, build_from_gin, count_macs, measure

OFFICIAL_PARAMS_NTU60 = {"ctrgcn": "1,446,672", "agcn": "3,469,510", "hcn": "2,647,868"}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_models_verb_prints_official_parameter_counts(capsys):
    assert main(["models", "--encoders", *OFFICIAL_PARAMS_NTU60]) == 0
    out = capsys.readouterr().out
    assert "FlopCounterMode" in out and "MACs = FLOPs / 2" in out
    assert "(1, 3, 64, 25, 2)" in out and "(1, 3, 52, 20, 1)" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    for name, params in OFFICIAL_PARAMS_NTU60.items():
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == params, (name, cells)  # params on NTU60, the first benchmark
        assert float(cells[2]) > 0 and float(cells[4]) > 0  # GMACs NTU60, NW-UCLA
    assert not gin.config_str().strip()  # the verb leaves no gin state behind


def test_macs_are_half_the_counted_flops_of_convs_and_matmuls():
    conv = torch.nn.Conv2d(3, 8, kernel_size=(3, 1), padding=(1, 0), bias=False)
    macs, by_op = count_macs(conv, (1, 3, 16, 25))
    assert macs == 8 * 3 * 3 * 16 * 25  # out channels x in channels x kernel x output positions
    assert sum(by_op.values()) == macs
    assert count_macs(conv, (1, 3, 16, 25), meta=False) == (macs, by_op)  # meta device = real run


def test_meta_count_equals_a_real_forward():
    model = build_from_gin("hcn", [BENCHMARKS[1].gin_file])
    assert count_macs(model, BENCHMARKS[1].shape) == count_macs(model, BENCHMARKS[1].shape, meta=False)


def test_ctrgcn_ntu60_macs():
    stats = measure("ctrgcn", BENCHMARKS[0])
    assert stats.params == 1_446_672
    # ~1.94 G: CTR-GCN's paper reports 1.97 G "FLOPs" (multiply-adds) for one sample.
    assert stats.macs == pytest.approx(1.939e9, rel=0.01)


def test_unknown_encoder_is_a_clear_error(capsys):
    assert main(["models", "--encoders", "ctrgnc"]) == 2
    err = capsys.readouterr().err
    assert "ctrgnc" in err and "ctrgcn" in err


def test_verb_is_listed():
    assert "models" in build_parser().format_help()
