"""`spine-node serve` refuses to start with one line that says what is wrong; `spine-node echo` checks a peer."""
from __future__ import annotations

import socket
import subprocess

import pytest

from support.dimse import LOOPBACK, StoreScp, free_port
from support.node_process import node_environment
from support.paths import SPINE_NODE


def _serve(tmp_path, **env) -> subprocess.CompletedProcess:
    environ = node_environment(SPINE_NODE_DATA_DIR=str(tmp_path / "data"), SPINE_NODE_HOST=LOOPBACK, **env)
    return subprocess.run([str(SPINE_NODE), "serve"], env=environ, capture_output=True, text=True, timeout=120)


def test_serve_with_an_unknown_model_exits_with_one_line(tmp_path):
    result = _serve(tmp_path, SPINE_NODE_MODEL="no-such-model", SPINE_NODE_PORT=str(free_port()))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("spine-node: error: SPINE_NODE_MODEL: model 'no-such-model'")


def test_serve_on_a_port_in_use_exits_with_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        result = _serve(tmp_path, SPINE_NODE_PORT=str(busy.getsockname()[1]))
    assert result.returncode == 2
    assert "spine-node: error: cannot listen on 127.0.0.1:" in result.stderr.strip().splitlines()[-1]


def test_serve_with_a_bad_variable_lists_the_mistake(tmp_path):
    result = _serve(tmp_path, SPINE_NODE_PORT="abc")
    assert result.returncode == 2
    assert "SPINE_NODE_PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.peer
def test_echo_answers_zero_for_a_live_peer_and_one_for_a_dead_one(tmp_path):
    peer = StoreScp(tmp_path / "received").start()
    try:
        alive = subprocess.run([str(SPINE_NODE), "echo", peer.address], capture_output=True, text=True, timeout=60)
    finally:
        peer.stop()
    dead = subprocess.run([str(SPINE_NODE), "echo", f"DEST@{LOOPBACK}:{free_port()}", "--timeout", "3"],
                          capture_output=True, text=True, timeout=60)
    assert alive.returncode == 0 and "status 0x0000" in alive.stdout
    assert dead.returncode == 1 and "no association" in dead.stderr


def test_serve_on_a_device_this_machine_lacks_exits_with_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # a GPU host has the device; the refusal is what CPU-only hosts must see
    result = _serve(tmp_path, SPINE_NODE_DEVICE="cuda", SPINE_NODE_PORT=str(free_port()))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("spine-node: error: SPINE_NODE_DEVICE:")


def test_a_second_node_on_the_same_data_folder_is_refused(tmp_path):
    import fcntl

    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "node.lock", "a+") as held:  # what a running node holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _serve(tmp_path, SPINE_NODE_PORT=str(free_port()))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "another spine-node is running on the data folder" in last
    assert not (tmp_path / "data" / "spine-node.db").exists(), "nothing may be opened before the lock"
