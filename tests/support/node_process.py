"""``spine-node serve`` as a subprocess, and the environment a node subprocess starts from.

``NodeProcess`` runs in its own session (so SIGKILL takes its worker processes too) with
``SPINE_NODE_*`` variables; its log goes to a file beside its data folder. It is up once it
answers a C-ECHO from ``calling_ae`` (a node that accepts only Orthanc's AE title needs that).
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from support.dimse import LOOPBACK, echo_ok, free_port
from support.paths import SPINE_NODE
from support.waiting import wait_until


def node_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any SPINE_NODE_* variable, plus ``variables``.

    The dashboard is off unless a test asks for it (``SPINE_NODE_HTTP_PORT``): nodes of
    parallel tests would all reach for its default port.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_NODE_")}
    return {**base, "SPINE_NODE_HTTP_PORT": "0", **variables}


class NodeProcess:
    """``spine-node serve`` in its own session; ``stop`` (SIGTERM) or ``kill`` (SIGKILL to the group)."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None, calling_ae: str = "ECHOSCU"):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.calling_ae = calling_ae
        self.env = node_environment(SPINE_NODE_DATA_DIR=str(data_dir), SPINE_NODE_PORT=str(self.port),
                                    SPINE_NODE_HOST=LOOPBACK, SPINE_NODE_DEVICE="cpu", **env)
        self.log_path = data_dir.parent / f"{data_dir.name}-node.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(SPINE_NODE), "serve"], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, cwd=self.data_dir.parent)
        wait_until(self._up, timeout, f"the node on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"spine-node serve exited {self.process.returncode}: {self.log()[-2000:]}")
        return echo_ok(self.port, self.env.get("SPINE_NODE_AE_TITLE", "SPINENODE"), calling=self.calling_ae)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful); SIGKILL to the group if it does not end in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return process.wait(10)

    def kill(self) -> None:
        """SIGKILL the node and its worker processes at once (a power cut, as far as the processes see)."""
        process, self.process = self.process, None
        if process is not None:
            _kill_group(process)
            process.wait(10)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
