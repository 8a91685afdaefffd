"""Contrastive add-ons the paper compares CSRE with (Table 4), behind CSRE's interface.

* :class:`~models.heads.skeletongcl.SkeletonGCL` (``OliverHxh/SkeletonGCL``, ICLR 2023): graph
  contrastive learning on the learned topology of the last block, with CSRE's label-indexed banks,
  hybrid sampling and InfoNCE (reused from :mod:`models.csre`).
* :class:`~models.heads.frhead.FRHead` (``zhysora/FR-Head``, CVPR 2023): class prototypes with
  false-negative / false-positive calibration on four stages of the trunk.

Both wrap an encoder exactly like :class:`models.csre.CSRE`: ``model(x, labels, index)`` in
``train()`` mode returns a :class:`models.csre.CSREOutput` (training loss = CE(logits) +
``contrastive``, already weighted); in ``eval()`` mode ``model(x)`` is exactly ``encoder(x)``;
``export()`` is the encoder-only state_dict. Both are specific to graph convolutions in the official
code and support CTR-GCN and 2s-AGCN only (other encoders raise a ``ValueError`` at construction).
"""

from models.heads.frhead import FRHead
from models.heads.skeletongcl import SkeletonGCL

#: head name -> class (the names the trainer and the gin files use)
HEADS = {"skeletongcl": SkeletonGCL, "frhead": FRHead}

__all__ = ["FRHead", "HEADS", "SkeletonGCL"]
