"""Names and codes shared by the trainer, the matrix, the launchers and the checkers (no torch import)."""

from __future__ import annotations

__all__ = ["ENSEMBLES", "INTERRUPTED", "PROFILES", "STREAMS"]

#: the four skeleton streams (``DataConfig.modality``), in the official order
STREAMS = ("joint", "bone", "joint_motion", "bone_motion")
#: the multi-stream ensembles and their member streams
ENSEMBLES: dict[str, tuple[str, ...]] = {"2S": ("joint", "bone"), "4S": STREAMS}
#: run profiles: the official recipes, and two shortened ones (never compared with the paper)
PROFILES = ("paper", "quick", "ci")
#: exit code of a training run stopped by SIGTERM/SIGINT after writing its checkpoint
INTERRUPTED = 3
