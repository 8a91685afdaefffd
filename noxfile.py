"""nox sessions of csre-bench.

Sessions run in the environment that runs nox (``default_venv_backend = "none"``): torch is
installed once by ``scripts/setup.sh`` and never per session. Everything is invoked as
``sys.executable -m ...`` so the interpreter is the one nox runs in, whatever PATH says.

    nox                 # = nox -s tests
    nox -s tests -- -k feeder -x
    nox -s demo         # the README's main job on the bundled NW-UCLA data
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]

# Offline and quiet DVC everywhere (see .dvc/config too).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DVC_STUDIO_OFFLINE", "1")
# `dvc repro` runs stage commands through a shell: make `python` there mean this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

PY = sys.executable


@nox.session
def tests(session: nox.Session) -> None:
    """The unit and fixture tests (pytest). Extra arguments go to pytest."""
    session.run(PY, "-m", "pytest", "-q", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Main job: build the NW-UCLA HDF5 from the bundled real data with DVC and summarise it."""
    session.run(PY, "-m", "dvc", "repro", "ucla")
    session.run(PY, "-m", "harness", "summary", "data/h5/ucla.h5")


@nox.session(venv_backend="venv", default=False)
def install_check(session: nox.Session) -> None:
    """Prove the declared dependencies install from scratch into a fresh venv (~1 GB)."""
    session.install("torch==2.13.0")
    session.install("-e", ".")
    session.run("python", "-m", "harness", "--help")
