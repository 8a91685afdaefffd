"""The ci-profile regression: real tiny NW-UCLA cells against the committed expected values, and
that the check still catches a change of training semantics (see tests/regression/README.md)."""

from __future__ import annotations

import copy

import gin
import numpy as np
import pytest

from harness.configurables import parse_gin
from harness.io import read_json
from harness.regression import BINDINGS, CI_CELLS, EXPECTED, TOLERANCE, ci_cell, cell_name, compare, run_ci_cells


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
    observed[name]["train_loss"][0] *= 1 + TOLERANCE["loss_rel"] / 2
    observed[name]["test_top1"][1] += 5.0  # one of 20 test clips
    assert compare(observed, expected) == []
    observed[name]["train_loss"][1] *= 1 + 2 * TOLERANCE["loss_rel"]
    observed[name]["test_top1"][0] += 10.0
    problems = compare(observed, expected)
    assert len(problems) == 2
    assert any("train_loss[epoch 2]: recorded" in p and ", now " in p for p in problems)
    del observed[cell_name("ctrgcn", True)]
    assert any("missing from this run" in p for p in compare(observed, expected))


#: the cheapest CI cell (HCN without CSRE: well under a second an epoch) carries the sensitivity checks
PROBE = ("hcn", False)


def _bound(cell, key: str):
    """The value ``key`` has in ``cell``'s own configuration (its gin files and bindings)."""
    parse_gin(cell.gin_files, [*cell.gin_params, *BINDINGS])
    try:
        return gin.query_parameter(key)
    finally:
        gin.clear_config()


@pytest.mark.slow
def test_a_ten_percent_larger_learning_rate_fails_the_check(ucla_h5, tmp_path):
    lr = _bound(ci_cell(*PROBE), "Recipe.base_lr")
    observed = run_ci_cells(ucla_h5, tmp_path, cells=[PROBE], extra=(f"Recipe.base_lr = {lr * 1.1!r}",))
    problems = compare(observed, read_json(EXPECTED), only_observed=True)
    assert any("train_loss[epoch" in p for p in problems), problems


@pytest.mark.slow
def test_switching_off_the_view_augmentation_fails_the_check(ucla_h5, tmp_path, monkeypatch):
    """NW-UCLA's random view transform (official ``rand_view_transform``) replaced by the identity."""
    import data.feeder as feeder
    monkeypatch.setattr(feeder, "view_matrix", lambda agx, agy, scale: np.eye(3))
    observed = run_ci_cells(ucla_h5, tmp_path, cells=[PROBE])
    problems = compare(observed, read_json(EXPECTED), only_observed=True)
    assert any("train_loss[epoch 1]" in p for p in problems), problems


def test_the_cells_run_in_float64_and_the_record_says_so():
    """float32 results of these cells move with the CPU's kernels (the module docstring of
    harness.regression); the recorded values must come from the same bindings."""
    assert "TrainConfig.precision = 'fp64'" in BINDINGS
    assert read_json(EXPECTED)["bindings"] == list(BINDINGS)
    assert _bound(ci_cell(*PROBE), "TrainConfig.precision") == "fp64"
