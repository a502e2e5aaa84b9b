"""What the benchmark scripts share: paths, loopback ports, waiting, peers (the node, storescp, Orthanc),
phantom series, ``spine-node process`` timed, and the verdict and ratio lines they print.

The scripts run as ``.venv/bin/python benchmarks/NAME.py``: this folder is then first on
``sys.path``, so ``import common`` finds this file; it puts the repository on ``sys.path`` too,
so that the packages import from a checkout that is not installed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))
BIN = Path(sys.executable).parent
SHARED_DATA = REPO.parent / "shared" / "data"  # the real data sets beside the checkout (as the tests find them)
LOOPBACK = "127.0.0.1"
# The stages of ``spine-node process`` that are the pipeline's own work (summary.json "timings_s").
PIPELINE_STAGES = ("load", "preprocess", "network", "postprocess", "resample_back", "measure", "lesions", "seg",
                   "sr", "write")


# ------------------------------------------------------------------ waiting, ports, verdicts

def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy and return that; exit the script after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def ratio_line(ours: str, peer: str, seconds: tuple[float, float], peak_gb: tuple[float, float]) -> str:
    """``ratio OURS / PEER: time 0.85x, peak memory 1.10x`` (ours first in each pair)."""
    return (f"ratio {ours} / {peer}: time {seconds[0] / seconds[1]:.2f}x, "
            f"peak memory {peak_gb[0] / peak_gb[1]:.2f}x")


# ------------------------------------------------------------------ peers

def echo(port: int, called: str, calling: str = "ECHOSCU") -> bool:
    """True when the AE at ``port`` answers DCMTK echoscu's C-ECHO."""
    return subprocess.run(["echoscu", "-aet", calling, "-aec", called, LOOPBACK, str(port)],
                          capture_output=True).returncode == 0


def node_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any SPINE_NODE_* variable, plus ``variables`` (dashboard off unless given)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_NODE_")}
    return {**base, "SPINE_NODE_HTTP_PORT": "0", **variables}


def start_node(env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """``spine-node serve`` in its own process group (stop it with ``stop_group``), its output in ``log``."""
    with open(log, "wb") as handle:
        return subprocess.Popen([str(BIN / "spine-node"), "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)


def start_storescp(aet: str, port: int, folder: Path, *options: str) -> subprocess.Popen:
    """DCMTK storescp writing into ``folder``, in its own process group."""
    return subprocess.Popen(["storescp", "--aetitle", aet, *options, "--output-directory", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_group(process: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Send ``sig`` to the process group of ``process`` and reap it."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout)


def local_orthanc():
    """orthanc/local_orthanc.py as a module (orthanc/ is a folder of files, not a package); loaded once."""
    name = "spine_node_local_orthanc"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "orthanc" / "local_orthanc.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses need the module registered
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------ series and the process

def thoracolumbar_phantom(seed: int, slices: int, spacing: tuple[float, float, float], matrix: int):
    """A thoraco-lumbar phantom on a ``matrix``-square grid, cut to its first ``slices`` slices."""
    from research.phantoms.generator import Grid, make_phantom

    phantom = make_phantom(seed, fov="thoracolumbar", spacing=spacing, matrix=matrix)
    n = min(slices, phantom.image.shape[0])
    grid = Grid((n, *phantom.grid.shape[1:]), phantom.grid.spacing, phantom.grid.origin)
    return dataclasses.replace(phantom, grid=grid, image=phantom.image[:n], labels=phantom.labels[:n],
                               lesions=phantom.lesions[:n])


def lumbar_series(folder: Path, seed: int, matrix: int) -> Path:
    """A lumbar phantom at 3 x 1.5 x 1.5 mm written as a DICOM series into ``folder``."""
    from research.phantoms.dicom import write_dicom_series
    from research.phantoms.generator import make_phantom

    write_dicom_series(make_phantom(seed, fov="lumbar", spacing=(3.0, 1.5, 1.5), matrix=matrix), folder)
    return folder


def time_process(series: Path, out: Path, device: str) -> dict:
    """``spine-node process`` in a fresh process: wall seconds, the sum of its pipeline stages, its timings."""
    start = time.perf_counter()
    subprocess.run([str(BIN / "spine-node"), "process", str(series), "--out", str(out), "--device", device,
                    "--no-progress"], check=True, capture_output=True)
    wall = time.perf_counter() - start
    timings = json.loads(next(out.glob("*/summary.json")).read_text())["timings_s"]
    return {"wall_s": wall, "pipeline_s": sum(timings.get(k, 0.0) for k in PIPELINE_STAGES), "timings_s": timings}
