"""nox sessions of csre-bench.

Sessions run in the environment that runs nox (``default_venv_backend = "none"``): torch is
installed once by ``scripts/setup.sh`` and never per session. Everything is invoked as
``sys.executable -m ...`` so the interpreter is the one nox runs in, whatever PATH says.

    nox                 # = nox -s tests
    nox -s tests -- -k feeder -x
    nox -s demo         # the README's main job on the bundled NW-UCLA data
    nox -s ucla -- --profile quick --encoders ctrgcn --streams joint,bone --seeds 2
    nox -t paper        # every paper matrix (Tables 1-8), paper profile: needs GPUs and NTU
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
    """The unit and fixture tests (pytest), then the fixture tests again on the second CPU's encoder
    files (session `reference_cpu2`). Extra arguments go to pytest (and skip the second pass)."""
    session.run(PY, "-m", "pytest", "-q", *session.posargs)
    if not session.posargs:
        reference_cpu2(session)


@nox.session
def reference_cpu2(session: nox.Session) -> None:
    """The reference tests on a copy of the fixtures whose encoders/ comes from another kind of CPU
    ($CSRE_REFERENCE_CPU2_DIR, default ../shared/reference-cpu2: the same official code run on an
    AVX2-only machine). The copy is a temporary folder of links; nothing of ../shared is committed."""
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tests.conftest import SHARED, reference_dir  # the tests' own rule for where fixtures live
    explicit = "CSRE_REFERENCE_CPU2_DIR" in os.environ
    cpu2 = Path(os.environ.get("CSRE_REFERENCE_CPU2_DIR", SHARED / "reference-cpu2"))
    if not (cpu2 / "encoders").is_dir():
        if explicit:
            session.error(f"CSRE_REFERENCE_CPU2_DIR={cpu2}: no encoders/ folder there")
        session.log(f"skipped: no second-CPU fixtures at {cpu2 / 'encoders'}")
        return
    base = reference_dir()
    with tempfile.TemporaryDirectory(prefix="csre-reference-cpu2-") as tmp:
        for family in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "encoders"):
            (Path(tmp) / family.name).symlink_to(family.resolve(), target_is_directory=True)
        (Path(tmp) / "encoders").symlink_to((cpu2 / "encoders").resolve(), target_is_directory=True)
        session.log(f"reference tests on {base} with encoders/ from {cpu2 / 'encoders'}")
        session.run(PY, "-m", "pytest", "-q", "-m", "reference", *session.posargs, env={"CSRE_REFERENCE_DIR": tmp})


def _matrix(session: nox.Session, benchmark: str, *extra: str) -> None:
    """``python -m harness matrix <benchmark>`` with the session's options (``-- --profile quick ...``)."""
    session.run(PY, "-m", "harness", "matrix", benchmark, *extra, *session.posargs)


def _benchmark_session(benchmark: str, table: str) -> None:
    def session_fn(session: nox.Session) -> None:
        _matrix(session, benchmark)

    session_fn.__doc__ = (f"{table}: {benchmark}, encoders x streams x CSRE on/off x seeds, 2S/4S ensembles, "
                          f"paper check. Options after --: --profile paper|quick|ci --seeds N --encoders a,b "
                          f"--streams joint,bone --csre both|on|off")
    session_fn.__name__ = benchmark
    nox.session(name=benchmark, tags=["paper"])(session_fn)


for _benchmark, _table in (("ntu60_xsub", "Table 1"), ("ntu60_xview", "Table 1"), ("ntu120_xsub", "Table 2"),
                           ("ntu120_xset", "Table 2"), ("ucla", "Table 3")):
    _benchmark_session(_benchmark, _table)


# Tables 4-8 run on NTU RGB+D 120 X-Sub (the paper's setting); pass -- --profile quick ... to shorten.
TABLE5_VARIANTS = {"sc": "gin/csre/sc.gin", "tc": "gin/csre/tc.gin", "gc": "gin/csre/gc.gin",
                   "csre+gc": "gin/csre/csre_gc.gin"}
TABLE6_SAMPLING = ("R_R", "R_H", "R_RH", "H_R", "H_H", "RH_RH")  # H_RH = the default CSRE cell
CTRGCN_J = ("ntu120_xsub", "--encoders", "ctrgcn", "--streams", "joint")  # the cell of Tables 4-6


@nox.session(tags=["paper"])
def table4(session: nox.Session) -> None:
    """Table 4: CTR-GCN joint on NTU120 X-Sub with no head, CSRE, SkeletonGCL and FR-Head; Hyperformer
    with and without CSRE (both competitor heads are defined for GCNs only)."""
    _matrix(session, *CTRGCN_J, "--heads", "skeletongcl,frhead")
    _matrix(session, "ntu120_xsub", "--encoders", "hyperformer", "--streams", "joint")


@nox.session(tags=["paper"])
def table5(session: nox.Session) -> None:
    """Table 5: CTR-GCN joint on NTU120 X-Sub, baseline, CSRE and its SC / TC / GC / CSRE+GC variants."""
    _matrix(session, *CTRGCN_J)
    for tag, gin_file in TABLE5_VARIANTS.items():
        _matrix(session, *CTRGCN_J, "--csre", "on", "--gin_file", gin_file, "--tag", tag)


@nox.session(tags=["paper"])
def table6(session: nox.Session) -> None:
    """Table 6: CTR-GCN w/CSRE joint on NTU120 X-Sub over the positive x negative sampling grid (R, H, R+H)."""
    _matrix(session, *CTRGCN_J)
    for tag in TABLE6_SAMPLING:
        _matrix(session, *CTRGCN_J, "--csre", "on", "--gin_file", f"gin/csre/sampling_{tag}.gin", "--tag", tag)


@nox.session(tags=["paper"])
def levels(session: nox.Session) -> None:
    """Table 7 and Table 8: 2s-AGCN, CTR-GCN, Hyperformer joint on NTU120 X-Sub with and without CSRE;
    difficulty levels and training cost are read from these runs (see the report)."""
    _matrix(session, "ntu120_xsub", "--encoders", "agcn,ctrgcn,hyperformer", "--streams", "joint")


@nox.session  # not tagged: `nox -t paper` runs these cells once, through `levels`
def cost(session: nox.Session) -> None:
    """Table 8: the same cells as `levels` (finished cells are skipped); the cost table is in the report."""
    levels(session)


@nox.session
def demo(session: nox.Session) -> None:
    """Main job: build the NW-UCLA HDF5 with DVC, train CTR-GCN with and without CSRE (quick profile),
    print the comparison and write the report with figures to runs/quick/ucla/report/."""
    session.run(PY, "-m", "dvc", "repro", "ucla")
    session.run(PY, "-m", "harness", "summary", "data/h5/ucla.h5")
    session.run(PY, "-m", "harness", "matrix", "ucla", "--profile", "quick", "--encoders", "ctrgcn",
                "--streams", "joint", "--seeds", "1", *session.posargs)
    session.run(PY, "-m", "harness", "report", "runs/quick/ucla", "--out", "runs/quick/ucla/report")
    session.run(PY, "-c", "import sys; t = open('runs/quick/ucla/report/report.md').read(); "
                          "print(t.split('\\n## ')[1] if '\\n## ' in t else t)")


@nox.session(venv_backend="venv", default=False)
def install_check(session: nox.Session) -> None:
    """Prove the declared dependencies install from scratch into a fresh venv (~1 GB)."""
    session.install("torch==2.13.0")
    session.install("-e", ".")
    session.run("python", "-m", "harness", "--help")
