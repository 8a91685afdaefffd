"""Every encoder as the trainer builds it: from its gin file (``harness.configurables.parse_gin`` +
``build_encoder()``), on the NTU and NW-UCLA input shapes, trains: forward and backward in train
mode give finite outputs and a non-zero gradient for every parameter.

At the official initialisation some parameters legitimately get a zero gradient (CTR-GCN's
``alpha = 0`` zeroes conv1/conv2/conv4; Hyperformer's attention is switched off by ``alpha``, ``rpe``
and ``w1 = 0``), so the constant-initialised parameters are perturbed first, as in the reference
fixtures' ``perturbed`` block (:func:`tests.models.perturb_parameters`). BlockGCN gets its 3 extra
raw-joint channels, as the trainer feeds it (``wants_joints``).
"""

from __future__ import annotations

from pathlib import Path

import gin
import pytest
import torch

from harness.configurables import GIN_DIR, build_encoder, parse_gin
from models import registry
from tests.models import parameters_without_gradient, perturb_parameters

ENCODERS = ("hcn", "agcn", "ctrgcn", "hyperformer", "blockgcn", "infogcn")
SHAPES = {  # dataset gin file -> (N, C, T, V, M), num_class
    "ntu60_xsub": ((2, 3, 64, 25, 2), 60),
    "ucla": ((2, 3, 52, 20, 1), 10),
}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def gin_files(encoder: str, dataset: str) -> list[str]:
    """The encoder file, the dataset file and, on NW-UCLA, the recipe's ``*_ucla.gin`` variant
    (``ctrgcn_ucla.gin`` for recipes without one)."""
    files = [str(Path("gin", "encoders", f"{encoder}.gin")), str(Path("gin", "datasets", f"{dataset}.gin"))]
    if dataset == "ucla":
        ucla = GIN_DIR / "recipes" / f"{encoder}_ucla.gin"
        files.append(str(Path("gin", "recipes", ucla.name if ucla.exists() else "ctrgcn_ucla.gin")))
    return files


def test_all_six_encoders_are_registered() -> None:
    assert set(ENCODERS) <= set(registry.ENCODERS)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("encoder", sorted(set(ENCODERS) | set(registry.ENCODERS)))
def test_gin_built_encoder_trains(encoder: str, dataset: str) -> None:
    shape, num_class = SHAPES[dataset]
    N, C, T, V, M = shape
    parse_gin(gin_files(encoder, dataset))
    torch.manual_seed(0)
    model = build_encoder()
    assert isinstance(model, registry.encoder_class(encoder))
    assert (model.num_class, model.num_person) == (num_class, M)
    perturb_parameters(model, seed=0).train()

    g = torch.Generator().manual_seed(1)
    x = 0.5 * torch.randn(shape, generator=g)
    if getattr(model, "wants_joints", False):  # BlockGCN: modality stream, then the raw joints
        joints = 0.5 * torch.randn(shape, generator=g)
        x = torch.cat([x, joints], 1)
        assert x.shape[1] == 2 * C
    feats = model.features(x)
    assert feats.shape[:2] == (N * M, model.out_channels) and torch.isfinite(feats).all()
    logits = model.head(feats, M)
    assert logits.shape == (N, num_class) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(N) % num_class)
    assert torch.isfinite(loss)
    loss.backward()
    missing = parameters_without_gradient(model)
    assert not missing, f"{len(missing)} parameters without a finite, non-zero gradient: {missing[:5]}"
