"""The ci-profile regression: real tiny NW-UCLA cells against the committed expected values."""

from __future__ import annotations

import copy

import pytest

from harness.io import read_json
from harness.regression import CI_CELLS, EXPECTED, cell_name, compare, run_ci_cells


@pytest.mark.slow
def test_ci_cells_reproduce_the_recorded_values(ucla_h5, tmp_path):
    observed = run_ci_cells(ucla_h5, tmp_path)
    problems = compare(observed, read_json(EXPECTED))
    assert not problems, ("ci regression values moved (re-record on purpose with "
                          "`python -m harness regression --record`):\n" + "\n".join(problems))
    csre = observed[cell_name("ctrgcn", True)]
    assert any(v > 0 for v in csre["train_contrastive"])  # the CSRE cells really contrast


def test_compare_shows_old_and_new_and_respects_tolerances():
    expected = read_json(EXPECTED)
    assert set(expected["cells"]) == {cell_name(e, c) for e, c in CI_CELLS}
    observed = copy.deepcopy(expected["cells"])
    assert compare(observed, expected) == []
    name = cell_name("hcn", False)
    observed[name]["train_loss"][0] *= 1 + 5e-4  # within the relative tolerance
    observed[name]["test_top1"][1] += 5.0  # one of 20 test clips
    assert compare(observed, expected) == []
    observed[name]["train_loss"][1] *= 1.01
    observed[name]["test_top1"][0] += 10.0
    problems = compare(observed, expected)
    assert len(problems) == 2
    assert any("train_loss[epoch 2]: recorded" in p and ", now " in p for p in problems)
    del observed[cell_name("ctrgcn", True)]
    assert any("missing from this run" in p for p in compare(observed, expected))
