"""End to end: `spine-node serve` as a subprocess, DCMTK storescu in, DCMTK storescp out, SQL telling the story.

Once on SQLite and once on PostgreSQL (the ``database_url`` fixture). The destination is
down while the jobs run and comes up afterwards: the outputs wait in the outbox, their
failed attempts recorded, and arrive once it is up.
"""
from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import select

from storage import Store, open_database
from storage.models import Association, Instance
from support.dimse import StoreScp, echo_ok, storescu
from support.node_process import NodeProcess
from support.series_files import phantom_series, real_series_with_uids
from support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.peer, pytest.mark.real_data]


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    return phantom_series(tmp_path_factory.mktemp("phantom") / "dicom")


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    return real_series_with_uids(tmp_path_factory.mktemp("real"))


def _jobs_finished(store: Store, count: int) -> list[dict] | None:
    jobs = store.list_jobs()
    finished = [j for j in jobs if j["state"] in ("done", "failed", "rejected")]
    return finished if len(finished) >= count else None


def test_series_sent_by_storescu_come_back_as_seg_and_sr_and_sql_tells_the_story(
        database_url, tmp_path, phantom_files, real_files):
    destination = StoreScp(tmp_path / "received")  # down until the jobs are done
    node = NodeProcess(tmp_path / "data", {
        "SPINE_NODE_DATABASE_URL": database_url, "SPINE_NODE_DESTINATIONS": destination.address,
        "SPINE_NODE_ALLOWED_AES": "SENDER,ECHOSCU", "SPINE_NODE_STABLE_AGE": "10", "SPINE_NODE_RETRY_MAX_S": "2",
    }).start()
    store = Store(open_database(database_url))
    try:
        storescu(node.port, phantom_files)
        storescu(node.port, real_files, extra=("-xv",))  # propose JPEG 2000 lossless: sent as stored

        jobs = wait_until(lambda: _jobs_finished(store, 2), 600, "both jobs to finish")
        assert [j["state"] for j in jobs] == ["done", "done"], [j["error"] for j in jobs]
        wait_until(lambda: all(d.attempts >= 1 for d in store.pending_deliveries()), 30, "failed attempts")
        assert store.pending_deliveries(), "the destination is down: the outputs must wait in the outbox"

        destination.start()
        wait_until(lambda: not store.pending_deliveries(), 120, "the outputs to be delivered")
        received = {str(ds.SOPInstanceUID): ds for ds in destination.received()}
        phantom_uid = str(pydicom.dcmread(phantom_files[0], stop_before_pixels=True).SeriesInstanceUID)
        phantom_job = next(j for j in jobs if j["series_instance_uid"] == phantom_uid)
        for job in jobs:
            assert set(job["output_uids"]) <= set(received)
            # the 20-slice real crop: its vertebrae found on the CT alone (pipelines.model.ct_column),
            # a SEG and an SR as for the phantom
            kinds = {o["kind"] for o in job["outputs"]}
            assert kinds == {"seg", "sr"}
            _check_story(store, job["id"], database_url)

        seg = next(received[o["sop_instance_uid"]] for o in phantom_job["outputs"] if o["kind"] == "seg")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == phantom_uid
        _check_instances(store, phantom_files, real_files)
        assert echo_ok(node.port)
    finally:
        code = node.stop()
        destination.stop()
        store.db.close()
    assert code == 0, node.log()[-3000:]
    log = node.log()
    assert "PHANTOM-" not in log and "Phantom^" not in log  # the phantoms' patient ID and name never reach the log


def _check_story(store: Store, job_id: int, database_url: str) -> None:
    """The job's provenance: events in order, model identity, device, parameters, software, deliveries."""
    from pipelines.model.bundles import find_bundle

    detail = store.job_detail(job_id)
    states = [e["state"] for e in detail["events"]]
    for expected in ("queued", "running", "loaded", "submitted", "started", "output", "done", "delivery-failed",
                     "delivered"):
        assert expected in states, (expected, states)
    assert states.index("queued") < states.index("running") < states.index("done") < states.index("delivered")
    bundle = find_bundle("spine-phantom-demo")
    assert detail["model"] == {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256}
    assert detail["device"] == "cpu"
    assert detail["parameters"]["model"] == "spine-phantom-demo"
    assert {"pynetdicom", "pydicom", "highdicom", "torch"} <= set(detail["software"])
    assert detail["timings"]["network"] > 0
    assert detail["reason"].startswith("association released and geometry contiguous")
    assert all(d["state"] == "delivered" and d["attempts"] >= 2 and d["last_error"] for d in detail["deliveries"])
    assert detail["calling_ae"] == "SENDER"


def _check_instances(store: Store, phantom_files, real_files) -> None:
    with store.db.reading() as session:
        rows = list(session.scalars(select(Instance)))
        events = [a.event for a in session.scalars(select(Association).where(Association.calling_ae == "SENDER"))]
    assert len(rows) == len(phantom_files) + len(real_files)
    assert all(r.calling_ae == "SENDER" and r.received_at is not None for r in rows)
    syntaxes = {r.transfer_syntax_uid for r in rows}
    assert JPEG2000Lossless in syntaxes  # stored as received, not decoded
    assert events.count("accepted") == 2 and events.count("released") == 2
