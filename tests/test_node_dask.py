"""Multi-process: a real Dask scheduler and two `dask worker` processes on loopback run the node's jobs.

Three series are sent at once (three storescu associations in parallel); the node submits
each analysis to the scheduler, and both workers take part. The workers are plain
`dask worker` processes of this environment: the task they run is
``pipelines.process.analyse``; the node keeps the DICOM I/O.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from storage import Store, open_database
from support.dimse import LOOPBACK, StoreScp, free_port, storescu_command
from support.node_process import NodeProcess
from support.series_files import phantom_series
from support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.peer]
DASK = Path(sys.executable).parent / "dask"


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` + two single-threaded `dask worker` processes; yields the scheduler address."""
    port = free_port()
    address = f"tcp://{LOOPBACK}:{port}"
    log = open(tmp_path / "dask.log", "ab")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on a small machine: one core each
    processes = [subprocess.Popen([str(DASK), "scheduler", "--host", LOOPBACK, "--port", str(port),
                                   "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)]
    for name in ("worker-a", "worker-b"):
        processes.append(subprocess.Popen(
            [str(DASK), "worker", address, "--name", name, "--nthreads", "1", "--nworkers", "1", "--host", LOOPBACK,
             "--no-dashboard", "--memory-limit", "0", "--death-timeout", "60"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()


def test_a_dask_scheduler_and_two_workers_run_the_jobs_of_series_sent_at_once(tmp_path, dask_cluster):
    series = [phantom_series(tmp_path / f"phantom{seed}", seed=seed) for seed in (100003, 100004, 100005)]
    uids = {str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID) for files in series}
    destination = StoreScp(tmp_path / "received").start()
    data = tmp_path / "data"
    node = NodeProcess(data, {"SPINE_NODE_DASK_SCHEDULER": dask_cluster, "SPINE_NODE_STABLE_AGE": "30",
                              "SPINE_NODE_DESTINATIONS": destination.address}).start()
    store = Store(open_database(f"sqlite:///{data / 'spine-node.db'}"))
    try:
        senders = [subprocess.Popen(storescu_command(node.port, files)) for files in series]
        assert [s.wait(300) for s in senders] == [0, 0, 0]

        jobs = wait_until(lambda: (lambda js: js if len(js) == 3 and all(j["state"] != "queued" and
                                                                          j["state"] != "running" for j in js)
                                   else None)(store.list_jobs()), 600, "three finished jobs")
        assert {j["series_instance_uid"] for j in jobs} == uids
        assert [j["state"] for j in jobs] == ["done"] * 3, [j["error"] for j in jobs]
        workers = {store.job_detail(j["id"])["worker"] for j in jobs}
        assert all(w.startswith("dask:tcp://127.0.0.1:") for w in workers)
        assert len(workers) == 2, f"both workers should take part: {workers}"
        wait_until(lambda: not store.pending_deliveries(), 60, "the deliveries")
        received = {str(ds.SOPInstanceUID) for ds in destination.received()}
        assert {u for j in jobs for u in j["output_uids"]} <= received
    finally:
        node.stop()
        destination.stop()
        store.db.close()
