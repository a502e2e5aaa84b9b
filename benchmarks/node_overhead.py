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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (LOOPBACK, echo, free_port, lumbar_series, node_environment, start_node, start_storescp,
                    stop_group, time_process, verdict, wait_for)


def phantom(folder: Path, seed: int) -> Path:
    return lumbar_series(folder, seed, matrix=256)


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

    wait_for(both, timeout, "SEG and SR at the destination", interval=0.05)
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
    scp = start_storescp("DEST", dest_port, received, "+xa")
    env = node_environment(SPINE_NODE_DATA_DIR=str(work / "node"), SPINE_NODE_PORT=str(node_port),
                           SPINE_NODE_HOST=LOOPBACK, SPINE_NODE_DESTINATIONS=f"DEST@{LOOPBACK}:{dest_port}",
                           SPINE_NODE_STABLE_AGE=str(args.stable_age), SPINE_NODE_DEVICE=args.device)
    node = start_node(env, work / "node.log")
    try:
        wait_for(lambda: echo(node_port, "SPINENODE") and echo(dest_port, "DEST"), 120, "the node and storescp",
                 interval=0.05)
        time_node(warm, node_port, received, abort=False, timeout=args.timeout)  # the worker loads the model
        released = time_node(series, node_port, received, abort=False, timeout=args.timeout)
        aborted = time_node(series, node_port, received, abort=True, timeout=args.timeout)
    finally:
        stop_group(node, signal.SIGTERM, 60)
        stop_group(scp, signal.SIGTERM, 10)
    base = process["wall_s"]
    for name, latency, quiet in (("released", released, 0.0), ("aborted", aborted, args.stable_age)):
        overhead = latency - base
        target = quiet + 0.1 * base
        print(f"node, {name:<8}: {latency:.1f} s from last instance to SEG+SR received; overhead vs process "
              f"{overhead:+.1f} s (vs its pipeline stages {latency - process['pipeline_s']:+.1f} s); "
              f"target <= {target:.1f} s: {verdict(overhead <= target)}")
    print(f"(work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
