"""SIGKILL the node (and its worker processes) while it receives, then while it runs the job.

After each restart every instance storescu saw acknowledged is in SQL and on disk, whole;
the interrupted job is resumed, and its outputs reach the destination.
"""
from __future__ import annotations

import subprocess

import pydicom
import pytest

from storage import Store, open_database
from storage.errors import NotFoundError
from support.dimse import StoreScp, acknowledged_uids, storescu_command
from support.node_process import NodeProcess
from support.series_files import phantom_series
from support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.peer]


def _instances(store: Store, series_uid: str) -> list:
    try:
        return store.series_instances(series_uid)
    except NotFoundError:
        return []


def _job_in_worker(store: Store):
    """The job, once a worker is analysing it (its 'submitted' event is recorded)."""
    for job in store.running_jobs():
        if any(e["state"] == "submitted" for e in store.job_detail(job.id)["events"]):
            return job
    return None


def test_sigkill_while_receiving_and_while_processing_loses_nothing_acknowledged(tmp_path):
    files = phantom_series(tmp_path / "phantom", seed=100002)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    destination = StoreScp(tmp_path / "received").start()
    env = {"SPINE_NODE_DESTINATIONS": destination.address, "SPINE_NODE_STABLE_AGE": "3",
           "SPINE_NODE_RETRY_MAX_S": "2"}
    data = tmp_path / "data"
    node = NodeProcess(data, env).start()
    store = Store(open_database(f"sqlite:///{data / 'spine-node.db'}"))
    try:
        # 1. killed while receiving
        sender = subprocess.Popen(storescu_command(node.port, files, verbose=True), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: len(_instances(store, series_uid)) >= 30, 120, "30 instances received", interval=0.02)
        node.kill()
        output, _ = sender.communicate(timeout=120)
        acknowledged = acknowledged_uids(output, files)
        # the 30th row may be recorded before its C-STORE response left: one instance fewer may be acknowledged
        assert 29 <= len(acknowledged) < len(files), "the node must die before the series is complete"

        node = NodeProcess(data, env, port=node.port).start()
        stored = {row.sop_instance_uid: row for row in _instances(store, series_uid)}
        assert set(acknowledged) <= set(stored)
        for uid in acknowledged:  # whole files, the bytes as sent
            assert pydicom.dcmread(stored[uid].path).PixelData == _pixels_of(files, uid)

        # 2. killed while the worker analyses the series (completed by the quiet period: the association died)
        job = wait_until(lambda: _job_in_worker(store), 180, "the job to reach a worker")
        node.kill()
        assert store.get_job(job.id).state == "running"

        node = NodeProcess(data, env, port=node.port).start()
        wait_until(lambda: store.get_job(job.id).state in ("done", "failed", "rejected"), 300, "the resumed job")
        wait_until(lambda: not store.pending_deliveries(), 60, "the deliveries")
        detail = store.job_detail(job.id)
        assert detail["state"] == "done", detail["error"]
        assert detail["attempts"] == 2
        assert "resumed" in [e["state"] for e in detail["events"]]
        assert detail["instances"] == len(stored)
        received = {str(ds.SOPInstanceUID) for ds in destination.received()}
        assert set(detail["output_uids"]) <= received
        assert len(detail["output_uids"]) == 2
    finally:
        node.stop()
        destination.stop()
        store.db.close()


def _pixels_of(files, uid: str) -> bytes:
    for path in files:
        ds = pydicom.dcmread(path)
        if ds.SOPInstanceUID == uid:
            return ds.PixelData
    raise AssertionError(f"{uid} was not sent")
