"""Completeness that knows what it saw (D4), idempotent results (D7), jobs never stuck (D6).

The SCP runs in-process on a loopback port; completion (``complete_series``) and the
dispatcher are called directly, so that each case is decided in well under a second
and no model is loaded. "No result delivered from a series the node knows is incomplete"
is shown in each of the issue's three ways: after a restart (downtime is not quiet time),
after an A-ABORT, and after the node refused instances (0xA700). Each test names the
behaviour of the code before this change that makes it fail there.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from dicom_node.dimse.status import StoreStatus
from dicom_node.runtime.completion import complete_series
from dicom_node.runtime.dispatch import Dispatcher
from pipelines.options import PipelineOptions
from storage import InstanceFiles, Store, StorageError
from support.dimse import LOOPBACK, send_c_store
from support.inprocess_node import RunningScp
from support.synthetic_ct import ct_datasets, save, volume

LATER = timedelta(hours=1)  # "now" for completion, far past any quiet period


@pytest.fixture
def node(tmp_path):
    """Store + files + receiver + SCP (default admission), like one running node without its loops."""
    running = RunningScp(tmp_path)
    yield running
    running.close()


def _series(tmp_path: Path, name: str, slices: int = 6) -> list[Path]:
    return save(ct_datasets(volume(slices=slices), name=name), tmp_path / name)


def _key(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _complete(node, stable_age_s: float = 30.0, after: timedelta = LATER, since=None) -> list[int]:
    """complete_series as the node's loop calls it (on older code, without what it did not know)."""
    import inspect

    receiver = node.receiver
    getattr(receiver, "flush_marks", lambda: None)()
    known = inspect.signature(complete_series).parameters
    extra = {"since": since, "extra_marks": getattr(receiver, "unwritten_marks", dict)()}
    return complete_series(node.store, stable_age_s, now=datetime.now(timezone.utc) + after,
                           **{name: value for name, value in extra.items() if name in known})


def _send_then_abort(port: int, files: list[Path]) -> None:
    ae = AE(ae_title="SENDER")
    meta = pydicom.filereader.read_file_meta_info(files[0])
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    assoc = ae.associate(LOOPBACK, port, ae_title="SPINENODE")
    assert assoc.is_established
    for path in files:
        assert assoc.send_c_store(path).Status == 0
    assoc.abort()


def _wait_for_event(store: Store, key: str, event: str) -> None:
    from support.waiting import wait_until

    wait_until(lambda: any(e == event for e in _series_events(store, key)), 10, f"series event {event!r}")


def _series_events(store: Store, key: str) -> list[str]:
    from sqlalchemy import select

    from storage.models import Series, SeriesEvent

    with store.db.reading() as session:
        return list(session.scalars(select(SeriesEvent.event).join(Series, SeriesEvent.series_id == Series.id)
                                    .where(Series.series_key == key).order_by(SeriesEvent.id)))


# --- D4: three ways the node knows a series is incomplete -----------------------------------------------

def test_downtime_is_not_quiet_time(node, tmp_path):
    """D4 (restart): a series last received 10 min before the node started is not complete at once.

    Before: the quiet clock ran from the last instance, so a job started the moment the
    node came back, on whatever part of the series had arrived before the crash.
    """
    files = _series(tmp_path, "restart")
    sent = [files[0], files[1], files[3]]  # slice 3 still to come: a gap, so only the quiet period completes it
    assert send_c_store(node.port, sent) == [0] * 3
    started = datetime.now(timezone.utc) + timedelta(minutes=10)  # the node "restarts" 10 min later
    assert _complete(node, after=timedelta(minutes=10, seconds=5), since=started) == []
    assert len(_complete(node, after=timedelta(minutes=10, seconds=31), since=started)) == 1


def test_aborted_association_holds_the_series_until_it_is_sent_again(node, tmp_path):
    """D4 (A-ABORT): 3 of 6 slices then A-ABORT: no job however long it stays quiet; the resend completes it.

    Before: the partial series was processed once quiet, and its result delivered.
    """
    files = _series(tmp_path, "aborted")
    key = _key(files)
    _send_then_abort(node.port, files[:3])
    _wait_for_event(node.store, key, "incomplete")
    assert _complete(node) == [], "a series whose association was aborted must wait for the sender to send again"
    assert send_c_store(node.port, files) == [0] * len(files)  # the resend: 3 identical, 3 new, released
    assert _complete(node, after=timedelta(seconds=5)) == [], "held: the quiet period must follow the resend"
    [job] = _complete(node)
    assert node.store.get_job(job).series_version == 1
    assert len(node.store.series_instances(key)) == 6


def test_refused_instances_hold_their_series(node, tmp_path, monkeypatch):
    """D4 (refused, 0xA700): instances 4-6 refused as on a full disk; the series waits for a later instance.

    Before: the 3 stored slices were processed once quiet (the issue: 88 of 339).
    """
    files = _series(tmp_path, "refused")
    key = _key(files)
    real_incoming = node.files.incoming
    refused = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files[3:]}

    def full_disk(sop_uid, data):
        if sop_uid in refused:
            raise StorageError("cannot write: No space left on device")
        return real_incoming(sop_uid, data)

    monkeypatch.setattr(node.files, "incoming", full_disk)
    statuses = send_c_store(node.port, files)
    assert statuses == [0, 0, 0] + [StoreStatus.OUT_OF_RESOURCES] * 3
    assert "incomplete" in _series_events(node.store, key)
    assert _complete(node) == [], "a series the node refused instances of is not complete"
    monkeypatch.setattr(node.files, "incoming", real_incoming)
    assert send_c_store(node.port, files[3:]) == [0] * 3
    assert _complete(node, after=timedelta(seconds=5)) == []
    assert len(_complete(node)) == 1


def test_outputs_of_a_version_superseded_while_it_ran_are_not_queued(node, tmp_path):
    """D4 (superseded): a late instance re-opens the series while its job runs: the job's outputs are refused
    in the transaction that would queue them, and the job ends 'superseded'.

    Before: record_output queued them, and the PACS got a result of the partial version.
    """
    from storage import SupersededError

    store = node.store
    files = _series(tmp_path, "superseded", slices=7)
    assert send_c_store(node.port, files[:6]) == [0] * 6
    [job_id] = _complete(node)
    job = store.claim_next_job("test")
    assert job.id == job_id
    assert send_c_store(node.port, files[6:]) == [0]  # re-opens the series: version 2
    with pytest.raises(SupersededError):
        store.record_output(job.id, kind="seg", sop_instance_uid="2.25.1", sop_class_uid="1.2", path="/x",
                            series_instance_uid="2.25.2", destinations=["DEST@127.0.0.1:1"], series_version=1)
    store.finish_job(job.id, state="superseded", error="outputs not delivered")
    assert store.due_deliveries() == [] and store.pending_deliveries() == []
    assert store.get_job(job.id).state == "superseded"


# --- D7: idempotent results ------------------------------------------------------------------------------

def test_identical_resend_reopens_nothing(node, tmp_path):
    """D7: a processed series sent again byte for byte keeps its version and gets no new job.

    Before: every resend re-opened the series (version 2) and produced a second SEG + SR.
    """
    store = node.store
    files = _series(tmp_path, "resend")
    key = _key(files)
    assert send_c_store(node.port, files) == [0] * 6
    [job] = _complete(node)
    store.finish_job(store.claim_next_job("test").id, state="done")
    assert send_c_store(node.port, files) == [0] * 6
    assert store.get_series(key).version == 1 and store.get_series(key).state == "done"
    assert _complete(node) == [] and store.queued_jobs() == []
    del job


def test_one_series_on_two_associations_at_once_gives_one_job(node, tmp_path):
    """D7: the same series on two concurrent associations gives one job.

    Before: the second copy's instances re-opened the series once the first copy's job existed.
    """
    import threading

    store = node.store
    files = _series(tmp_path, "twice")
    results = []
    threads = [threading.Thread(target=lambda: results.append(send_c_store(node.port, files)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [[0] * 6, [0] * 6]
    jobs = _complete(node)
    assert len(jobs) == 1 and store.get_series(_key(files)).version == 1
    assert send_c_store(node.port, files) == [0] * 6
    assert _complete(node) == [] and len(store.list_jobs()) == 1


# --- D6: jobs never stuck --------------------------------------------------------------------------------

class _NoExecutor:
    name = "none"


def _dispatcher(store: Store, files: InstanceFiles) -> Dispatcher:
    return Dispatcher(store, files, _NoExecutor(), PipelineOptions(), lambda job: [], "test-node")


def test_a_job_whose_end_could_not_be_recorded_is_recorded_once_storage_answers(node, tmp_path, monkeypatch):
    """D6: the first finish_job fails (disk full); the dispatcher's next pass records it, without a restart.

    Before: the job stayed 'running' for ever ("could not record its end"); only a restart requeued it.
    """
    store = node.store
    files = _series(tmp_path, "stuck")
    assert send_c_store(node.port, files) == [0] * 6
    _complete(node)
    dispatcher = _dispatcher(store, node.files)
    monkeypatch.setattr(dispatcher, "_process", lambda job: ("failed", None, None, "cannot write outputs: disk full"))
    real_finish = store.finish_job
    calls = []

    def finish_fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("database or disk is full")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish_job", finish_fails_once)
    job = store.claim_next_job("test-node")
    getattr(dispatcher, "_claimed", set()).add(job.id)
    assert dispatcher.run_job(job) == "failed"
    assert store.get_job(job.id).state == "running", "storage refused the end"
    dispatcher.run_once()
    assert store.get_job(job.id).state == "failed"
    assert store.get_job(job.id).error == "cannot write outputs: disk full"


def test_watchdog_requeues_a_running_job_without_a_live_worker(node, tmp_path):
    """D6: a job this node claimed, 'running' in SQL, with no thread running it, is queued again by the watchdog.

    Before: nothing looked for such jobs while the node ran.
    """
    store = node.store
    files = _series(tmp_path, "orphan")
    assert send_c_store(node.port, files) == [0] * 6
    _complete(node)
    dispatcher = _dispatcher(store, node.files)
    job = store.claim_next_job("test-node")
    dispatcher._claimed.add(job.id)  # claimed here; its thread is gone (as if it died)
    assert dispatcher.watch() == [job.id]
    assert store.get_job(job.id).state == "queued"
    assert "resumed" in [e["state"] for e in store.job_detail(job.id)["events"]]


# --- orphan files (minor defects, item 9) ----------------------------------------------------------------

def test_a_duplicate_moved_to_another_series_leaves_no_file_behind(node, tmp_path):
    """Before: the earlier copy stayed in the old series' folder with no row naming it."""
    from pydicom.uid import generate_uid

    files = _series(tmp_path, "moved", slices=2)
    assert send_c_store(node.port, files[:1]) == [0]
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["moved elsewhere"])
    moved = tmp_path / "moved.dcm"
    ds.save_as(moved, enforce_file_format=True)
    assert send_c_store(node.port, [moved]) == [0]
    [(uid, path)] = node.files.instance_files()
    assert uid == str(ds.SOPInstanceUID) and str(ds.SeriesInstanceUID) in str(path)


def test_reconcile_removes_an_orphan_copy_whose_row_names_the_newer_file(node, tmp_path):
    """Item 9: a copy left in an old series folder (killed before its removal) is removed at start."""
    import shutil

    from dicom_node.runtime.reconcile import reconcile_instances

    files = _series(tmp_path, "orphan-copy", slices=2)
    assert send_c_store(node.port, files[:1]) == [0]
    [(uid, path)] = node.files.instance_files()
    stale = path.parent.parent / "1.2.826.0.1.3680043.10.99" / path.name
    stale.parent.mkdir()
    shutil.copy(path, stale)
    done = reconcile_instances(node.store, node.files)
    assert done.orphans == [stale] and not stale.exists() and path.exists()
