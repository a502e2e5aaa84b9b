"""SIGKILL of the node process alone: none of its processes is alive 5 s later (D3).

``spine-node serve`` starts its embedded worker (the model loaded in it) and
multiprocessing's resource tracker. Here only the node's own PID gets SIGKILL (not its
process group, as ``NodeProcess.kill`` does), as a crash or the OOM killer would. Before,
the worker (1.3 GB with the model) and the resource tracker lived on, re-parented to PID
1, and every crash-restart stacked another worker; now each worker's watchdog sees its
parent gone and ends it, and the tracker follows when its pipe closes.

The SIGKILL matrix beyond this (what each kill point guarantees) is in
``tests/test_node_crash.py`` (receiving: every acknowledged instance exactly once, on disk
and in SQL; job: at-least-once processing, resumed, its outputs delivered once) and in
this module's docstring for delivery: an output whose C-STORE succeeded but whose
delivery was not yet marked is sent again after the restart (at-least-once delivery).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from support.node_process import NodeProcess
from support.waiting import wait_until

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_no_process_of_the_node_outlives_its_sigkill_by_5_s(tmp_path):
    node = NodeProcess(tmp_path / "data", {"SPINE_NODE_HTTP_PORT": "0"}).start(timeout=120)
    pid = node.process.pid
    try:
        workers = wait_until(lambda: _children(pid) or None, 60, "the node's worker processes")
        time.sleep(2)  # let the worker reach its initializer (its watchdog starts there)
        workers = _children(pid)
        os.kill(pid, signal.SIGKILL)
        node.process.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        survivors = sorted(p for p in workers if _alive(p))
        assert not survivors, f"processes of the node alive 5 s after its SIGKILL: {survivors}"
    finally:
        for leftover in _children(pid) | {p for p in locals().get("workers", ()) if _alive(p)}:
            try:
                os.kill(leftover, signal.SIGKILL)  # only processes this test's node started
            except ProcessLookupError:
                pass
        node.process = None
