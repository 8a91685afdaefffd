"""Encoder names -> classes, imported lazily (only the encoder a run uses is imported).

The name is what gin files, run directories and the reference fixtures' ``encoder`` field use.
"""

from __future__ import annotations

import importlib

from models.encoder import Encoder

ENCODERS: dict[str, str] = {
    "hcn": "models.hcn:HCN",
    "agcn": "models.agcn:AGCN",
    "ctrgcn": "models.ctrgcn:CTRGCN",
    "blockgcn": "models.blockgcn:BlockGCN",
    "hyperformer": "models.hyperformer:Hyperformer",
    "infogcn": "models.infogcn:InfoGCN",
}


def encoder_class(name: str) -> type[Encoder]:
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    module, cls = ENCODERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
