"""The storage layer: schema by migration, receiving, jobs, the outbox and durable files, on SQLite and PostgreSQL.

Every test that takes ``database_url`` runs twice: against a SQLite file and against the
real PostgreSQL server on 127.0.0.1:5432 (see conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError

import storage.files as storage_files
from storage import InstanceFiles, NotFoundError, StateError, Store, StorageError, open_database
from storage.database import current_revision, head_revision
from storage.incoming import NAME_DURABLE_WITH_FILE, filesystem_type
from storage.models import Association, Base, RejectedInstance, SeriesEvent, utcnow
from storage.store import backoff_delay
from support.paths import REPO

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def store(database_url):
    db = open_database(database_url)
    yield Store(db)
    db.close()


def receive(store: Store, sop: str, series: str = "1.2.3", study: str = "1.2", ae: str = "PACS", **extra):
    """Record one CT instance of ``series`` as the SCP does after writing its file."""
    return store.record_instance(sop_instance_uid=sop, sop_class_uid=CT, series_key=series,
                                 series_instance_uid=series, study_instance_uid=study,
                                 transfer_syntax_uid=EXPLICIT_LE, calling_ae=ae, path=f"/data/{sop}.dcm",
                                 size=1000, modality="CT", geometry={"z": float(sop.rsplit(".", 1)[-1])}, **extra)


def queue_series(store: Store, key: str, n: int = 2) -> int:
    for i in range(n):
        receive(store, f"{key}.{i + 1}", series=key)
    return store.create_job(key, "test").id


def events(store: Store, job_id: int) -> list[str]:
    return [e["state"] for e in store.job_detail(job_id)["events"]]


# --- schema ------------------------------------------------------------------------------------------------

def test_migrations_create_the_schema_of_the_models(database_url):
    db = open_database(database_url)
    try:
        assert current_revision(db) == head_revision()
        inspector = inspect(db.engine)
        assert set(inspector.get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
        for name, table in Base.metadata.tables.items():
            assert {c["name"] for c in inspector.get_columns(name)} == set(table.columns.keys()), name
    finally:
        db.close()
    again = open_database(database_url)  # opening an up-to-date database changes nothing
    assert current_revision(again) == head_revision()
    again.close()


OPENER = """
import pathlib, sys, time
from storage import open_database
from storage.database import current_revision
start = pathlib.Path(sys.argv[2])
print("ready", flush=True)
while not start.exists():
    time.sleep(0.01)
db = open_database(sys.argv[1])
print(current_revision(db), flush=True)
"""


def run_together(script: str, args: list[list[str]], start: Path) -> list[str]:
    """Run ``script URL START [ARGS]`` once per argument list, release them together, return their last lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", script, a[0], str(start), *a[1:]], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for a in args]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    start.touch()
    lines = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        lines.append(out.strip().splitlines()[-1])
    return lines


def test_two_processes_opening_a_fresh_database_at_once_migrate_it_once(database_url, tmp_path):
    assert run_together(OPENER, [[database_url], [database_url]], tmp_path / "start") == [head_revision()] * 2


def test_sqlite_connections_are_wal_full_sync_with_foreign_keys(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'sub' / 'node.db'}")
    with db.engine.connect() as connection:
        pragma = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                  for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    db.close()
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000}


def test_open_database_refuses_unsupported_urls_and_missing_files_in_one_line(tmp_path):
    with pytest.raises(StorageError, match="unsupported database 'mysql://u:\\*\\*\\*@h/db'"):
        open_database("mysql://u:secret@h/db")
    with pytest.raises(StorageError, match="no database at"):
        open_database(f"sqlite:///{tmp_path / 'absent.db'}", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_read_only_opening_neither_creates_nor_migrates(database_url):
    with pytest.raises(StorageError, match="no database at|no spine-node tables"):
        open_database(database_url, create=False)
    open_database(database_url).close()
    db = open_database(database_url, create=False)
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(StorageError, match="at schema revision 0000, this spine-node needs .*start the node once"):
        open_database(database_url, create=False)
    db.close()


def test_times_are_timezone_aware_utc(store):
    row = receive(store, "1.2.3.1")
    assert row.received_at.tzinfo is not None and row.received_at.utcoffset() == timedelta(0)
    assert abs(row.received_at - utcnow()) < timedelta(minutes=1)


# --- receiving ---------------------------------------------------------------------------------------------

def test_record_instance_creates_a_receiving_series_with_counts(store):
    first = receive(store, "1.2.3.1")
    receive(store, "1.2.3.2")
    [series] = store.receiving_series()
    assert (series.series_key, series.state, series.version, series.instance_count) == ("1.2.3", "receiving", 1, 2)
    assert series.calling_ae == "PACS" and series.study_instance_uid == "1.2" and series.released_at is None
    assert series.last_received_at >= first.received_at
    instances = store.series_instances("1.2.3")
    assert [i.sop_instance_uid for i in instances] == ["1.2.3.1", "1.2.3.2"]
    assert instances[0].path == Path("/data/1.2.3.1.dcm") and instances[0].geometry == {"z": 1.0}
    assert instances[0].transfer_syntax_uid == EXPLICIT_LE and instances[0].size == 1000


def test_duplicate_sop_instance_replaces_the_earlier_row_and_is_recorded(store):
    receive(store, "1.2.3.1", ae="FIRST")
    receive(store, "1.2.3.1", ae="SECOND")
    [instance] = store.series_instances("1.2.3")
    assert instance.calling_ae == "SECOND" and instance.replaced == 1
    assert store.get_series("1.2.3").instance_count == 1
    with store.db.reading() as session:
        details = session.scalars(select(SeriesEvent.detail).where(SeriesEvent.event == "duplicate")).all()
    assert len(details) == 1 and "FIRST" in details[0]


def test_association_release_stamps_its_series(store):
    receive(store, "1.2.3.1")
    receive(store, "4.5.6.1", series="4.5.6")
    store.mark_association_released(["1.2.3"])
    released = {s.series_key: s.released_at for s in store.receiving_series()}
    assert released["1.2.3"] is not None and released["4.5.6"] is None


def test_rejected_instances_and_associations_are_recorded(store):
    store.record_association(calling_ae="INTRUDER", called_ae="SPINENODE", peer_host="127.0.0.1", peer_port=40000,
                             event="rejected")
    store.record_rejected_instance(calling_ae="PACS", reason="0xA900 SOP class differs", sop_instance_uid="9.9",
                                   sop_class_uid=CT, transfer_syntax_uid=EXPLICIT_LE)
    with store.db.reading() as session:
        association = session.scalars(select(Association)).one()
        rejected = session.scalars(select(RejectedInstance)).one()
    assert (association.calling_ae, association.event, association.peer_port) == ("INTRUDER", "rejected", 40000)
    assert (rejected.reason, rejected.sop_instance_uid) == ("0xA900 SOP class differs", "9.9")


def test_concurrent_instances_of_one_new_series_make_one_series_row(store):
    barrier = threading.Barrier(4)
    failures = []

    def send(thread: int) -> None:
        barrier.wait()
        try:
            for i in range(8):
                receive(store, f"1.2.3.{thread}{i}")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=send, args=(t + 1,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    [series] = store.receiving_series()
    assert series.instance_count == 32 and len(store.series_instances("1.2.3")) == 32


# --- re-opening --------------------------------------------------------------------------------------------

def test_late_instance_after_a_done_job_reopens_the_series_as_a_new_version(store):
    job = queue_series(store, "1.2.3")
    store.claim_next_job("w")
    store.finish_job(job, state="done")
    assert store.get_series("1.2.3").state == "done"
    late = receive(store, "1.2.3.9")
    series = store.get_series("1.2.3")
    assert (series.state, series.version, series.instance_count) == ("receiving", 2, 3)
    assert late.series_version == 2 and series.released_at is None
    second = store.create_job("1.2.3", "late instance")
    assert second.id != job and second.series_version == 2
    assert store.get_job(job).state == "done", "the finished job and its outputs stay as they were"


def test_late_instance_supersedes_a_queued_job(store):
    job = queue_series(store, "1.2.3")
    receive(store, "1.2.3.9")
    assert store.get_job(job).state == "superseded" and events(store, job)[-1] == "superseded"
    assert store.claim_next_job("w") is None, "a superseded job never runs"
    assert store.get_series("1.2.3").state == "receiving"


def test_job_running_when_the_series_reopens_keeps_its_version(store):
    job = queue_series(store, "1.2.3")
    store.claim_next_job("w")
    receive(store, "1.2.3.9")
    store.finish_job(job, state="done")
    assert store.get_series("1.2.3").state == "receiving", "the new version still waits for its own job"
    assert "series-reopened" in events(store, job)


def test_create_job_returns_the_job_already_queued_for_the_series(store):
    first = queue_series(store, "1.2.3")
    assert store.create_job("1.2.3", "again").id == first
    assert [j.id for j in store.queued_jobs()] == [first]
    with pytest.raises(NotFoundError, match="no series with key 'nope'"):
        store.create_job("nope", "x")


# --- claiming ----------------------------------------------------------------------------------------------

def test_claim_next_job_takes_the_oldest_and_marks_it_running(store):
    first, second = queue_series(store, "1.1"), queue_series(store, "2.2")
    claimed = store.claim_next_job("worker-a")
    assert (claimed.id, claimed.state, claimed.worker, claimed.attempts) == (first, "running", "worker-a", 1)
    assert claimed.series_key == "1.1" and claimed.calling_ae == "PACS" and claimed.started_at is not None
    assert store.get_series("1.1").state == "running"
    assert [j.id for j in store.queued_jobs()] == [second]


def test_claim_next_job_is_atomic_across_threads(store):
    jobs = {queue_series(store, f"9.{n}", n=1) for n in range(24)}
    barrier = threading.Barrier(4)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def work(index: int) -> None:
        barrier.wait()
        while (job := store.claim_next_job(f"thread-{index}")) is not None:
            claimed[index].append(job.id)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [job for ids in claimed for job in ids]
    assert sorted(everything) == sorted(jobs), "each job claimed exactly once"


CLAIMER = """
import json, pathlib, sys, time
from storage import Store, open_database
store = Store(open_database(sys.argv[1]))
start = pathlib.Path(sys.argv[2])
print("ready", flush=True)
while not start.exists():
    time.sleep(0.01)
ids = []
while (job := store.claim_next_job(sys.argv[3])) is not None:
    ids.append(job.id)
print(json.dumps(ids), flush=True)
"""


def test_claim_next_job_is_atomic_across_processes(store, database_url, tmp_path):
    jobs = {queue_series(store, f"8.{n}", n=1) for n in range(30)}
    lines = run_together(CLAIMER, [[database_url, "process-1"], [database_url, "process-2"]], tmp_path / "start")
    claimed = [json.loads(line) for line in lines]
    assert sorted(claimed[0] + claimed[1]) == sorted(jobs), "each job claimed exactly once"
    assert {j["state"] for j in store.list_jobs()} == {"running"}


def test_requeue_interrupted_jobs_puts_running_jobs_back_in_the_queue(store):
    running, queued = queue_series(store, "1.1"), queue_series(store, "2.2")
    store.claim_next_job("dead-worker")
    assert store.requeue_interrupted_jobs() == [running]
    assert [j.id for j in store.queued_jobs()] == [running, queued]
    assert events(store, running)[-1] == "resumed" and store.get_series("1.1").state == "queued"
    again = store.claim_next_job("new-worker")
    assert (again.id, again.attempts) == (running, 2)
    assert store.requeue_interrupted_jobs() == [running]


# --- finishing and the story of a job -----------------------------------------------------------------------

def test_events_tell_the_story_of_a_job(store):
    job = queue_series(store, "1.2.3")
    store.claim_next_job("w1")
    store.set_job_running(job, worker="w1", device="cpu", model_name="spine-phantom-demo", model_version="0.2",
                          model_sha256="ab" * 32, parameters={"step_size": 0.5}, software={"nnunetv2": "2.8.1"})
    store.add_event(job, "segmented", "17 vertebrae")
    store.record_output(job, kind="seg", sop_instance_uid="2.25.1", sop_class_uid=SEG, series_instance_uid="2.25.2",
                        path="/out/seg.dcm", destinations=["PACS@127.0.0.1:104"])
    [delivery] = store.due_deliveries()
    store.mark_delivery_failed(delivery.id, "connection refused", retry_in_s=0)
    store.mark_delivered(delivery.id)
    store.finish_job(job, state="done", timings={"inference_s": 12.5}, summary={"vertebrae": 17})
    detail = store.job_detail(job)
    assert [e["state"] for e in detail["events"]] == [
        "queued", "running", "started", "segmented", "output", "delivery-failed", "delivered", "done"]
    assert "connection refused" in detail["events"][5]["detail"]
    assert detail["model"] == {"name": "spine-phantom-demo", "version": "0.2", "sha256": "ab" * 32}
    assert (detail["device"], detail["parameters"], detail["software"]) == ("cpu", {"step_size": 0.5},
                                                                          {"nnunetv2": "2.8.1"})
    assert detail["timings"] == {"inference_s": 12.5} and detail["summary"] == {"vertebrae": 17}
    assert detail["output_uids"] == ["2.25.1"] and detail["instances"] == 2
    assert detail["deliveries"][0]["state"] == "delivered" and detail["deliveries"][0]["attempts"] == 2
    json.dumps(detail)  # JSON-ready as it is


def test_json_columns_take_numpy_values_and_paths(store):
    import numpy as np

    job = queue_series(store, "1.2.3")
    store.claim_next_job("w")
    store.set_job_running(job, worker="w", device="cpu", model_name="m", model_version="1", model_sha256="0",
                          parameters={"step_size": np.float32(0.5), "patch": np.array([64, 128]),
                                      "bundle": Path("/models/m")}, software={})
    store.finish_job(job, state="done", summary={"voxels": np.int64(7)})
    detail = store.job_detail(job)
    assert detail["parameters"] == {"step_size": 0.5, "patch": [64, 128], "bundle": "/models/m"}
    assert detail["summary"] == {"voxels": 7}


def test_job_events_are_append_only_in_the_database(store):
    job = queue_series(store, "1.2.3")
    for statement in ("UPDATE job_events SET detail = 'rewritten'", "DELETE FROM job_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with store.db.engine.begin() as connection:
                connection.execute(text(statement))
    assert events(store, job) == ["queued"]


def test_failed_job_keeps_its_reason_and_cannot_finish_twice(store):
    job = queue_series(store, "1.2.3")
    store.claim_next_job("w")
    store.finish_job(job, state="failed", error="CUDA out of memory")
    assert store.get_series("1.2.3").state == "failed"
    detail = store.job_detail(job)
    assert detail["error"] == "CUDA out of memory" and detail["events"][-1]["detail"].endswith(": CUDA out of memory")
    with pytest.raises(StateError, match="already failed"):
        store.finish_job(job, state="done")
    with pytest.raises(StateError, match="not 'finished'"):
        store.finish_job(job, state="finished")
    with pytest.raises(StateError, match="not running"):
        store.set_job_running(job, worker="w", device="cpu", model_name="m", model_version="1", model_sha256="0",
                              parameters={}, software={})


def test_earlier_outputs_are_those_of_the_done_jobs_of_the_same_series(store):
    first = queue_series(store, "1.2.3")
    other = queue_series(store, "4.5.6")
    for job in (first, other):
        store.claim_next_job("w")
        record_seg(store, job, [])
        store.record_output(job, kind="sr", sop_instance_uid=f"2.25.{job}.2", sop_class_uid="1.2",
                            series_instance_uid="2.25.98", path="/out/sr.dcm", destinations=[])
        store.finish_job(job, state="done")
    receive(store, "1.2.3.9")
    second = store.create_job("1.2.3", "late instance").id
    assert [o.sop_instance_uid for o in store.earlier_outputs(second, kind="sr")] == [f"2.25.{first}.2"]
    assert len(store.earlier_outputs(second)) == 2 and store.earlier_outputs(first) == []


def test_rejected_series_is_finished_before_any_worker_claims_it(store):
    job = queue_series(store, "1.2.3", n=1)
    store.finish_job(job, state="rejected", error="1 slice; at least 20 needed")
    assert store.get_series("1.2.3").state == "rejected" and store.claim_next_job("w") is None


# --- the outbox ----------------------------------------------------------------------------------------------

def record_seg(store: Store, job: int, destinations: list[str]):
    return store.record_output(job, kind="seg", sop_instance_uid=f"2.25.{job}", sop_class_uid=SEG,
                               series_instance_uid="2.25.99", path=f"/out/{job}/seg.dcm", destinations=destinations)


def test_one_delivery_per_output_and_destination_due_at_once(store):
    job = queue_series(store, "1.2.3")
    output = record_seg(store, job, ["PACS@10.0.0.1:104", "stow:http://orthanc:8042/dicom-web", "PACS@10.0.0.1:104"])
    due = store.due_deliveries()
    assert [d.destination for d in due] == ["PACS@10.0.0.1:104", "stow:http://orthanc:8042/dicom-web"]
    assert {(d.output_id, d.job_id, d.state, d.attempts, d.sop_instance_uid, d.path) for d in due} == {
        (output.id, job, "pending", 0, "2.25.1", Path("/out/1/seg.dcm"))}
    assert store.job_outputs(job) == [output]


def test_failed_delivery_waits_for_its_backoff_then_is_delivered(store):
    job = queue_series(store, "1.2.3")
    record_seg(store, job, ["PACS@10.0.0.1:104"])
    [delivery] = store.due_deliveries()
    store.mark_delivery_failed(delivery.id, "association rejected", retry_in_s=60)
    assert store.due_deliveries() == [], "not due before its next attempt"
    [pending] = store.pending_deliveries()
    assert (pending.attempts, pending.last_error) == (1, "association rejected")
    assert pending.next_attempt_at - utcnow() > timedelta(seconds=50)
    [due] = store.due_deliveries(now=utcnow() + timedelta(seconds=61))
    store.mark_delivered(due.id)
    store.mark_delivered(due.id)  # a second confirmation changes nothing
    assert store.pending_deliveries() == [] and store.due_deliveries(now=utcnow() + timedelta(days=1)) == []
    [row] = store.job_detail(job)["deliveries"]
    assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 2, "association rejected")
    with pytest.raises(StateError, match="already delivered"):
        store.mark_delivery_failed(due.id, "late failure", 1)


def test_due_deliveries_come_most_overdue_first_up_to_the_limit(store):
    for n in range(3):
        record_seg(store, queue_series(store, f"7.{n}", n=1), ["A@h:1"])
    first, second, third = store.due_deliveries()
    store.mark_delivery_failed(first.id, "down", retry_in_s=0)
    assert [d.id for d in store.due_deliveries(limit=2)] == [second.id, third.id]


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(n, cap_s=60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_database_errors_become_one_line_storage_errors(store):
    job = queue_series(store, "1.2.3")
    record_seg(store, job, [])
    with pytest.raises(StorageError) as caught:
        record_seg(store, job, [])  # the same SOP Instance UID twice
    assert "\n" not in str(caught.value) and "sop_instance_uid" in str(caught.value).lower()
    with pytest.raises(NotFoundError, match="no job 999"):
        store.job_detail(999)


# --- list_jobs -----------------------------------------------------------------------------------------------

def test_list_jobs_newest_first_with_uids_timings_and_outputs(store):
    first, second = queue_series(store, "1.1"), queue_series(store, "2.2")
    store.claim_next_job("w")
    record_seg(store, first, [])
    store.finish_job(first, state="done", timings={"total_s": 3.0})
    jobs = store.list_jobs()
    assert [j["id"] for j in jobs] == [second, first]
    assert jobs[1]["series_instance_uid"] == "1.1" and jobs[1]["output_uids"] == [f"2.25.{first}"]
    assert jobs[1]["timings"] == {"total_s": 3.0} and jobs[1]["run_s"] is not None and jobs[0]["run_s"] is None
    assert jobs[1]["created_at"].endswith("+00:00")


# --- durable files -----------------------------------------------------------------------------------------

def test_write_instance_keeps_the_exact_bytes_and_leaves_no_temporary_file(tmp_path):
    files = InstanceFiles(tmp_path)
    data = os.urandom(4096) + b"DICM"
    path = files.write_instance("1.2", "1.2.3", "1.2.3.4", data)
    assert path == tmp_path / "instances" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["1.2.3.4.dcm"]


def test_writing_again_replaces_the_file_whole(tmp_path):
    files = InstanceFiles(tmp_path)
    files.write_instance("1.2", "1.2.3", "1.2.3.4", b"first version, longer than the second")
    path = files.write_instance("1.2", "1.2.3", "1.2.3.4", b"second")
    assert path.read_bytes() == b"second" and len(list(path.parent.iterdir())) == 1


def test_write_output_goes_under_the_job(tmp_path):
    path = InstanceFiles(tmp_path).write_output(7, "seg.dcm", b"SEG")
    assert path == tmp_path / "outputs" / "7" / "seg.dcm" and path.read_bytes() == b"SEG"


@pytest.mark.parametrize("study, series, sop", [("..", "1.2.3", "1.2.3.4"), ("1.2", "a/b", "1.2.3.4"),
                                                ("1.2", "1.2.3", "1.2 3"), ("1.2", "1.2.3", "")])
def test_unsafe_names_are_refused_before_anything_is_written(tmp_path, study, series, sop):
    with pytest.raises(StorageError, match="cannot name a file"):
        InstanceFiles(tmp_path).write_instance(study, series, sop, b"x")
    assert not (tmp_path / "instances").exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    files = InstanceFiles(tmp_path)
    target = files.instance_path("1.2", "1.2.3", "1.2.3.4")
    target.mkdir(parents=True)  # a folder where the file should go: the rename fails
    with pytest.raises(StorageError, match="cannot write"):
        files.write_instance("1.2", "1.2.3", "1.2.3.4", b"data")
    assert [p.name for p in target.parent.iterdir()] == ["1.2.3.4.dcm"] and target.is_dir()


def test_remove_leftovers_deletes_only_temporary_files(tmp_path):
    files = InstanceFiles(tmp_path)
    kept = files.write_instance("1.2", "1.2.3", "1.2.3.4", b"kept")
    crash = kept.parent / ".1.2.3.5.dcm.abc123.tmp"
    crash.write_bytes(b"half")
    assert files.remove_leftovers() == [crash]
    assert not crash.exists() and kept.read_bytes() == b"kept"


# --- one fsync per received instance: checksummed incoming files, commits that are not fsynced ---------------

def _written(files: InstanceFiles, sop: str, data: bytes):
    incoming = files.incoming(sop, data)
    incoming.write()
    return incoming


def test_an_incoming_instance_is_fsynced_under_a_checksummed_name_then_moved_into_its_series(tmp_path):
    files = InstanceFiles(tmp_path)
    data = os.urandom(5000)
    incoming = _written(files, "1.2.3.4", data)
    assert incoming.path.parent == tmp_path / "instances" / ".incoming"
    assert incoming.path.name.startswith(f".1.2.3.4.dcm.{zlib.crc32(data):08x}.")
    assert incoming.path.read_bytes() == data
    path = files.place_instance(incoming, "1.2", "1.2.3")
    assert path == files.instance_path("1.2", "1.2.3", "1.2.3.4") and path.read_bytes() == data
    assert list(files.incoming_dir.iterdir()) == [] and files.instance_files() == [("1.2.3.4", path)]


def test_interrupted_instances_keeps_the_newest_whole_copy_and_removes_partial_writes(tmp_path):
    files = InstanceFiles(tmp_path)
    older = _written(files, "1.2.3.4", b"first copy")
    newer = _written(files, "1.2.3.4", b"second copy")
    os.utime(older.path, ns=(10**9, 10**9))
    partial = _written(files, "1.2.3.5", b"x" * 100)
    with open(partial.path, "r+b") as handle:  # a power cut in the middle of the write
        handle.truncate(50)
    legacy = files.write_instance("1.2", "1.2.3", "1.2.3.6", b"kept").parent / ".1.2.3.7.dcm.abc123.tmp"
    legacy.write_bytes(b"half")

    whole, removed = files.interrupted_instances()

    assert whole == [newer.path]
    assert sorted(removed) == sorted([older.path, partial.path, legacy])
    assert files.place_instance(whole[0], "1.2", "1.2.3").read_bytes() == b"second copy"
    assert [uid for uid, _ in files.instance_files()] == ["1.2.3.4", "1.2.3.6"]


def test_a_refused_or_failed_incoming_instance_leaves_no_file(tmp_path):
    files = InstanceFiles(tmp_path)
    _written(files, "1.2.3.4", b"refused").discard()
    target = files.instance_path("1.2", "1.2.3", "1.2.3.5")
    target.mkdir(parents=True)  # a folder where the file should go: the rename fails
    with pytest.raises(StorageError, match="cannot write"):
        files.place_instance(_written(files, "1.2.3.5", b"data"), "1.2", "1.2.3")
    assert list(files.incoming_dir.iterdir()) == []


def test_the_folder_is_fsynced_after_each_rename_only_where_the_file_system_needs_it(tmp_path, monkeypatch):
    assert filesystem_type(Path("/proc")) == "proc"
    assert InstanceFiles(tmp_path).sync_folder_after_rename == (filesystem_type(tmp_path) not in NAME_DURABLE_WITH_FILE)
    synced: list[Path] = []
    monkeypatch.setattr(storage_files, "_fsync_dir", synced.append)
    for sync in (True, False):
        files = InstanceFiles(tmp_path / str(sync), sync_folder_after_rename=sync)
        files.write_instance("1.2", "1.2.3", "1.2.3.4", b"a")  # new folders: each fsynced into its parent
        synced.clear()
        path = files.write_instance("1.2", "1.2.3", "1.2.3.5", b"b")
        assert synced == ([path.parent] if sync else [])


def test_not_durable_commits_skip_the_fsync_and_every_other_commit_keeps_it(database_url):
    db = open_database(database_url)
    query = "PRAGMA synchronous" if db.dialect == "sqlite" else "SHOW synchronous_commit"
    try:
        with db.writing_connection(durable=False) as connection:
            relaxed = connection.exec_driver_sql(query).scalar()
        with db.writing_connection() as connection:
            durable = connection.exec_driver_sql(query).scalar()
        with db.writing() as session:
            session_default = session.execute(text(query)).scalar()
    finally:
        db.close()
    assert (relaxed, durable, session_default) == ((1, 2, 2) if db.dialect == "sqlite" else ("off", "on", "on"))


def test_an_instance_recorded_without_fsync_is_in_the_same_database(store):
    for sop in ("1.2.3.1", "1.2.3.2", "1.2.3.2"):  # new series, then the common case, then a duplicate
        receive(store, sop, durable=False)
    assert [i.sop_instance_uid for i in store.series_instances("1.2.3")] == ["1.2.3.1", "1.2.3.2"]
    assert store.get_series("1.2.3").instance_count == 2
    assert store.recorded_sop_instance_uids() == {"1.2.3.1", "1.2.3.2"}
