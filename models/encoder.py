"""The encoder contract: a skeleton classifier split at its last feature map.

Every encoder maps skeletons ``x`` of shape (N, C, T, V, M) to logits (N, num_class) in two
steps, so that add-ons (CSRE's STFD, SkeletonGCL, FR-Head) can tap the final feature map without
hooks and without running the trunk twice:

* ``features(x)`` -> (N·M, C', T', V): the map right before global pooling (persons folded into
  the batch in (n, m) order, i.e. row ``n * M + m``);
* ``head(features, M)`` -> logits: pooling over persons/time/joints and the classifier;
* ``forward(x) == head(features(x), M)`` exactly: ``forward`` is defined that way here and
  subclasses do not override it.

Attributes the add-ons read: ``num_class``, ``num_person`` (the M the model was built for) and
``out_channels`` (C'). Parameter and buffer names follow the official implementation of each
encoder so official checkpoints load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    """Base class of all encoders; see the module docstring for the contract."""

    num_class: int
    num_person: int
    out_channels: int

    def features(self, x: Tensor) -> Tensor:
        """(N, C, T, V, M) -> final feature map (N·M, C', T', V)."""
        raise NotImplementedError

    def head(self, features: Tensor, num_person: int) -> Tensor:
        """Final feature map (N·M, C', T', V) and the number of persons M -> logits (N, num_class)."""
        raise NotImplementedError

    def regulariser(self, labels: Tensor) -> Tensor | None:
        """The encoder's own term of the training loss, from its last train-mode forward, or None.

        Called by the trainer after each training forward with the batch labels (InfoGCN: its MMD
        and latent-mean terms); most encoders have none.
        """
        return None

    @staticmethod
    def persons_in(x: Tensor) -> int:
        """M of an input batch (the last axis of (N, C, T, V, M))."""
        return x.shape[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x), self.persons_in(x))


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or kept in float64: losses and banks run in float32 under autocast (fp16 /
    bf16 inputs are upcast), and in float64 when the whole model does (``precision='fp64'``)."""
    return t if t.dtype == torch.float64 else t.float()


def mean_pool(features: Tensor, num_person: int) -> Tensor:
    """Global average over T'·V, then over persons: (N·M, C, T', V) -> (N, C).

    Kept in the official order (space-time mean first, then person mean) so results match the
    references to the last bit.
    """
    NM, C = features.shape[:2]
    x = features.view(NM // num_person, num_person, C, -1)  # (N, M, C, T'·V)
    return x.mean(3).mean(1)  # (N, C)


def encoder_state(encoder: nn.Module) -> OrderedDict[str, Tensor]:
    """A detached copy of ``encoder``'s state_dict: what a head's ``export()`` returns."""
    return OrderedDict((k, v.detach().clone()) for k, v in encoder.state_dict().items())
