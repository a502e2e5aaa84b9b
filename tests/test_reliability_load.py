"""16 and 32 concurrent associations from DCMTK storescu: no refusal, nothing lost (D2, D5).

Each storescu process sends its own 6-slice series at the same moment to the SCP running
in-process on a loopback port (default admission settings). The counts must agree:
instances storescu saw acknowledged = instance files = instance rows = the inputs of the
jobs that completion creates (one per series, released and contiguous).

Fails on the code before ``dicom_node.dimse.admission``: pynetdicom's hard-coded limit of
10 associations refused the 11th concurrent sender (A-ASSOCIATE-RJ, local limit exceeded).
"""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from dicom_node.runtime.completion import complete_series
from support.dimse import acknowledged_uids, storescu_command
from support.inprocess_node import RunningScp
from support.synthetic_ct import ct_datasets, save, volume
from support.waiting import wait_until

pytestmark = pytest.mark.peer
SLICES = 6


@pytest.mark.parametrize("senders", [16, 32])
def test_concurrent_associations_are_all_accepted_and_nothing_is_lost(tmp_path, senders):
    series = [save(ct_datasets(volume(slices=SLICES, seed=n), name=f"load-{senders}-{n}"), tmp_path / f"s{n}")
              for n in range(senders)]
    scp = RunningScp(tmp_path)
    store, files, port = scp.store, scp.files, scp.port
    try:
        start = threading.Barrier(senders)
        outputs: list[str | None] = [None] * senders

        def send(index: int) -> None:
            start.wait(30)
            result = subprocess.run(storescu_command(port, series[index], verbose=True), capture_output=True,
                                    text=True, timeout=120)
            outputs[index] = result.stdout + result.stderr

        threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        refused = [out for out in outputs if out is None or "Association Rejected" in out]
        assert not refused, f"{len(refused)} of {senders} senders were refused: {(refused[0] or '')[-600:]}"
        acknowledged = {uid for index, out in enumerate(outputs) for uid in acknowledged_uids(out, series[index])}
        on_disk = {uid for uid, _ in files.instance_files()}
        rows = store.recorded_sop_instance_uids()
        # pynetdicom answers A-RELEASE before it fires EVT_RELEASED: storescu may exit before the node stamps
        # the release, so wait for every series' stamp before completion (which needs it to skip the quiet period)
        wait_until(lambda: sum(1 for s in store.receiving_series() if s.released_at) == senders, 30,
                   "every association's release to be recorded")
        complete_series(store, stable_age_s=3600)  # released + contiguous: complete without waiting
        jobs = store.queued_jobs()
        inputs = {row.sop_instance_uid for job in jobs for row in store.series_instances(job.series_key)}
        assert len(acknowledged) == senders * SLICES
        assert acknowledged == on_disk == rows == inputs, _differences(acknowledged, on_disk, rows, inputs, store)
        assert len(jobs) == senders
    finally:
        scp.close()


def _differences(acknowledged: set[str], on_disk: set[str], rows: set[str], inputs: set[str], store) -> str:
    """Which acknowledged UIDs each count lacks, with the path of their row: what a failure needs to be diagnosed."""
    paths = store.recorded_instance_paths()
    lines = []
    for name, found in (("files", on_disk), ("rows", rows), ("job inputs", inputs)):
        for uid in sorted(acknowledged ^ found):
            path = paths.get(uid)
            where = "extra" if uid in found else "missing"
            lines.append(f"{name}: {where} {uid} row path {path} exists {path is not None and Path(path).exists()}")
    return "\n".join(lines)
