"""Shared plumbing of the harness tests: the real NW-UCLA file and tiny training cells on it."""

from __future__ import annotations

from pathlib import Path

import gin
import pytest

from data import ucla
from harness.matrix import cell_gin_files
from tests.conftest import REPO

UCLA_TAR = REPO / "data" / "raw" / "nwucla" / "all_sqe.tar.gz"

#: a tiny real NW-UCLA cell: 4 training clips per class (about 3 after the validation carve-out),
#: 2 test clips per class, 16 frames, batch 8, 2 epochs; CSRE sizes that the tiny bank can meet.
TINY = [
    "WINDOW = 16", "Recipe.epochs = 2", "Recipe.warm_up_epochs = 1", "Recipe.base_lr = 0.01",
    "Recipe.batch_size = 8", "Recipe.test_batch_size = 32", "DataConfig.repeat = 2",
    "TrainConfig.train_per_class = 4", "TrainConfig.test_per_class = 2", "TrainConfig.val_fraction = 0.25",
    "TrainConfig.profile = 'ci'", "TrainConfig.progress = False",
]
CSRE_TINY = ["TrainConfig.csre = True", "models.CSRE.K_pos = 2", "models.CSRE.K_hard = 8", "models.CSRE.K_rand = 8"]


def cell_files(encoder: str, csre: bool = False) -> list[str]:
    """gin files of an NW-UCLA cell of ``encoder`` as the matrix builds it, without the profile file
    (these tests bind their own tiny settings, ``TINY``)."""
    return [f for f in cell_gin_files("ucla", encoder, csre, "ci") if not f.startswith("gin/profiles/")]


def cell_params(h5: Path, *extra: str, csre: bool = False) -> list[str]:
    return [f"DataConfig.path = '{h5}'", *TINY, *(CSRE_TINY if csre else []), *extra]


@pytest.fixture(scope="session")
def ucla_h5(tmp_path_factory) -> Path:
    """The bundled NW-UCLA set built once per session."""
    return ucla.prepare(UCLA_TAR, tmp_path_factory.mktemp("ucla") / "ucla.h5", progress=False)


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()
