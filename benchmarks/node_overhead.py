"""End-to-end latency of the node against `spine-node process` on the same series.

Measured, in one run, on one phantom CT series (or ``--series DIR``):

* ``process``: wall time of ``spine-node process SERIES --out DIR`` (a fresh process: Python
  start, model load, load, analyse, SEG/SR, write), and the pipeline's own stages
  (load + analyse + outputs + write, from its summary.json), i.e. without start-up;
* ``node, released``: ``spine-node serve`` (warm: a first series has gone through, so its
  worker holds the model) with DCMTK storescp as the destination. The clock starts when
  storescu has sent the last instance and released the association, and stops when both
  SEG and SR are in storescp's folder. Completion here is "released + contiguous geometry";
* ``node, aborted``: the same series sent again with ``storescu --abort``: no release, so
  the series completes only after the quiet period (``--stable-age`` s).

Target (issue 4): node latency - process time <= quiet period + 10 % of the process time.

    .venv/bin/python benchmarks/node_overhead.py [--stable-age 10] [--series DIR] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def echo(port: int, called: str) -> bool:
    return subprocess.run(["echoscu", "-aec", called, LOOPBACK, str(port)], capture_output=True).returncode == 0


def phantom(folder: Path, seed: int) -> Path:
    from research.phantoms.generator import make_phantom
    from research.phantoms.dicom import write_dicom_series

    write_dicom_series(make_phantom(seed, fov="lumbar", spacing=(3.0, 1.5, 1.5), matrix=256), folder)
    return folder


def time_process(series: Path, out: Path, device: str) -> dict:
    start = time.perf_counter()
    subprocess.run([str(BIN / "spine-node"), "process", str(series), "--out", str(out), "--device", device,
                    "--no-progress"], check=True, capture_output=True)
    wall = time.perf_counter() - start
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    stages = summary["timings_s"]
    pipeline = sum(stages.get(k, 0.0) for k in ("load", "preprocess", "network", "postprocess", "resample_back",
                                                "measure", "lesions", "seg", "sr", "write"))
    return {"wall_s": round(wall, 2), "pipeline_s": round(pipeline, 2)}


def outputs_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(("SG", "SR"))} if folder.is_dir() else set()


def time_node(series: Path, port: int, received: Path, abort: bool, timeout: float) -> float:
    """Seconds from the end of storescu (last instance acknowledged) to SEG and SR both received."""
    before = outputs_in(received)
    files = sorted(str(p) for p in series.iterdir() if p.is_file())
    subprocess.run(["storescu", "-aet", "SENDER", "-aec", "SPINENODE", *(["--abort"] if abort else []), LOOPBACK,
                    str(port), *files], check=True, capture_output=True)
    sent = time.perf_counter()

    def both() -> bool:
        new = outputs_in(received) - before
        return any(n.startswith("SG") for n in new) and any(n.startswith("SR") for n in new)

    wait_for(both, timeout, "SEG and SR at the destination")
    return time.perf_counter() - sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, help="a DICOM series folder (default: a lumbar phantom, matrix 256)")
    parser.add_argument("--stable-age", type=float, default=10.0, help="the node's quiet period, seconds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spine-node-overhead-"))
    series = args.series or phantom(work / "series", 300001)
    warm = phantom(work / "warm", 300002)

    process = time_process(series, work / "process-out", args.device)
    print(f"spine-node process: {process['wall_s']:.1f} s wall, {process['pipeline_s']:.1f} s in the pipeline stages",
          flush=True)

    dest_port, node_port = free_port(), free_port()
    received = work / "received"
    received.mkdir()
    scp = subprocess.Popen(["storescp", "--aetitle", "DEST", "+xa", "--output-directory", str(received),
                            str(dest_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SPINE_NODE_")},
           "SPINE_NODE_DATA_DIR": str(work / "node"), "SPINE_NODE_PORT": str(node_port), "SPINE_NODE_HOST": LOOPBACK,
           "SPINE_NODE_DESTINATIONS": f"DEST@{LOOPBACK}:{dest_port}", "SPINE_NODE_STABLE_AGE": str(args.stable_age),
           "SPINE_NODE_DEVICE": args.device}
    with open(work / "node.log", "wb") as log:
        node = subprocess.Popen([str(BIN / "spine-node"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: echo(node_port, "SPINENODE") and echo(dest_port, "DEST"), 120, "the node and storescp")
        time_node(warm, node_port, received, abort=False, timeout=args.timeout)  # the worker loads the model
        released = time_node(series, node_port, received, abort=False, timeout=args.timeout)
        aborted = time_node(series, node_port, received, abort=True, timeout=args.timeout)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(60)
        scp.terminate()
        scp.wait(10)
    base = process["wall_s"]
    for name, latency, quiet in (("released", released, 0.0), ("aborted", aborted, args.stable_age)):
        overhead = latency - base
        target = quiet + 0.1 * base
        print(f"node, {name:<8}: {latency:.1f} s from last instance to SEG+SR received; overhead vs process "
              f"{overhead:+.1f} s (vs its pipeline stages {latency - process['pipeline_s']:+.1f} s); "
              f"target <= {target:.1f} s: {'met' if overhead <= target else 'NOT met'}")
    print(f"(work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
