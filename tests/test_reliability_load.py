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

import pytest

from dicom_node.runtime.completion import complete_series
from support.dimse import acknowledged_uids, storescu_command
from support.inprocess_node import RunningScp
from support.synthetic_ct import ct_datasets, save, volume

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
        complete_series(store, stable_age_s=3600)  # released + contiguous: complete without waiting
        jobs = store.queued_jobs()
        inputs = {row.sop_instance_uid for job in jobs for row in store.series_instances(job.series_key)}
        assert len(acknowledged) == senders * SLICES
        assert acknowledged == on_disk == rows == inputs
        assert len(jobs) == senders
    finally:
        scp.close()
