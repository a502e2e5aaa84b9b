"""Disk watermarks and retention: refuse C-STORE with 0xA700 before writing, purge files, keep rows.

The store is filled with the node's own ``Store`` API (``support.web.seed_store``): one
finished series whose output waits for delivery, one still receiving. ``Retention.purge``
is given a ``now`` in the future instead of waiting days. The watermark is exercised on a
real SCP (pynetdicom on loopback) whose receiver is the node's ``GuardedReceiver``, and
on a small tmpfs the test mounts (skipped, with the reason, where mounting is not allowed).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.cli.main import main
from dicom_node.dimse.scp import ScpSettings, start_scp
from dicom_node.runtime.disk import DiskGuard, GuardedReceiver
from dicom_node.runtime.retention import Retention
from storage import InstanceFiles, StateError
from storage.models import JobEvent, Output, RejectedInstance, Series, SeriesEvent, utcnow
from storage.operations import Operations
from support.dimse import LOOPBACK, free_port, send_c_store
from support.synthetic_ct import ct_datasets, save, volume
from support.web import node_config, seed_store

LATER = timedelta(days=30)
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def seeded(tmp_path, database_url):
    """The seeded store on SQLite and on PostgreSQL (``database_url``): the purge queries run on both."""
    config = node_config(tmp_path / "data", SPINE_NODE_RETENTION_DAYS="14", SPINE_NODE_OUTPUT_RETENTION_DAYS="3",
                         SPINE_NODE_DATABASE_URL=database_url)
    return config, seed_store(config)


def _retention(config, seeded, guard=None, emergency=False) -> Retention:
    return Retention(Operations(seeded.store), config.data_dir, config.retention_days, config.output_retention_days,
                     guard, emergency)


def _instance_paths(seeded, key) -> list[Path]:
    return [i.path for i in seeded.store.series_instances(key)]


def _deliver_all(seeded) -> None:
    for delivery in seeded.store.pending_deliveries():
        seeded.store.mark_delivered(delivery.id)


def test_nothing_undelivered_or_unfinished_is_purged(seeded):
    config, seeded = seeded
    report = _retention(config, seeded).purge(now=utcnow() + LATER)
    assert report.files == 0 and not report.series and not report.outputs
    assert all(p.exists() for p in _instance_paths(seeded, seeded.series_key))  # its output is still pending
    assert all(p.exists() for p in _instance_paths(seeded, seeded.receiving_key))  # still receiving


def test_files_of_delivered_series_and_outputs_go_after_their_days_and_the_rows_stay(seeded):
    config, seeded = seeded
    _deliver_all(seeded)
    retention = _retention(config, seeded)
    assert retention.purge(now=utcnow() + timedelta(days=1)).files == 0  # not old enough yet
    paths = _instance_paths(seeded, seeded.series_key)
    output = seeded.store.job_outputs(seeded.job_id)[0]

    report = retention.purge(now=utcnow() + LATER)

    assert [c.uid for c in report.series] == [seeded.series_uid] and [c.uid for c in report.outputs] == \
        [output.sop_instance_uid]
    assert not any(p.exists() for p in paths) and not output.path.exists()
    assert all(p.exists() for p in _instance_paths(seeded, seeded.receiving_key))
    assert len(seeded.store.series_instances(seeded.series_key)) == len(paths)  # rows kept
    with seeded.store.db.reading() as session:
        series = session.scalar(select(Series).where(Series.series_key == seeded.series_key))
        assert series.purged_at is not None and series.state == "done"
        assert session.scalar(select(Output.purged_at).where(Output.id == output.id)) is not None
        events = [e.event for e in session.scalars(select(SeriesEvent).where(SeriesEvent.series_id == series.id))]
        assert events[-1] == "purged"
        assert "output-purged" in [e.state for e in session.scalars(select(JobEvent))]
    assert retention.purge(now=utcnow() + LATER).files == 0  # each purge happens once


def test_a_purged_series_cannot_be_requeued(seeded):
    config, seeded = seeded
    _deliver_all(seeded)
    _retention(config, seeded).purge(now=utcnow() + LATER)
    with pytest.raises(StateError, match="purged"):
        Operations(seeded.store).requeue_job(seeded.job_id)


def test_a_late_instance_reopens_a_purged_series_with_only_its_own_file_which_retention_can_purge_later(seeded):
    config, seeded = seeded
    _deliver_all(seeded)
    _retention(config, seeded).purge(now=utcnow() + LATER)
    late = ct_datasets(volume(slices=1), name="late")[0]
    path = save([late], config.data_dir / "instances" / "late")[0]
    seeded.store.record_instance(sop_instance_uid=str(late.SOPInstanceUID), sop_class_uid=str(late.SOPClassUID),
                                 series_key=seeded.series_key, series_instance_uid=seeded.series_uid,
                                 study_instance_uid=str(late.StudyInstanceUID),
                                 transfer_syntax_uid=str(late.file_meta.TransferSyntaxUID), calling_ae="ORTHANC",
                                 path=path, size=path.stat().st_size, modality="CT")

    instances = seeded.store.series_instances(seeded.series_key)
    assert [i.sop_instance_uid for i in instances] == [str(late.SOPInstanceUID)] and instances[0].path.exists()
    series = seeded.store.get_series(seeded.series_key)
    assert series.state == "receiving" and series.instance_count == 1
    with seeded.store.db.reading() as session:
        reopened = session.scalars(select(SeriesEvent.detail).where(SeriesEvent.event == "reopened")).all()
    assert reopened and "purged" in reopened[-1]

    job = seeded.store.create_job(seeded.series_key, "association released")
    seeded.store.claim_next_job("test-worker")
    seeded.store.finish_job(job.id, state="failed", timings={})
    report = _retention(config, seeded).purge(now=utcnow() + LATER)
    assert [c.paths for c in report.series] == [(path,)] and not path.exists()


def _record_again(seeded, row, path: Path) -> None:
    """``row``'s SOP instance received again, its file now at ``path``."""
    seeded.store.record_instance(sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
                                 series_key=seeded.series_key, series_instance_uid=seeded.series_uid,
                                 study_instance_uid=None, transfer_syntax_uid=row.transfer_syntax_uid,
                                 calling_ae="ORTHANC", path=path, size=path.stat().st_size, modality="CT")


def test_a_purged_series_sent_again_counts_every_instance_it_holds_again(seeded):
    """Its SOP instances come back under their old UIDs (rows kept): each is counted, and a later re-open keeps them."""
    config, seeded = seeded
    earlier = seeded.store.series_instances(seeded.series_key)
    _deliver_all(seeded)
    _retention(config, seeded).purge(now=utcnow() + LATER)
    again = config.data_dir / "instances" / "again"
    again.mkdir(parents=True)
    for row in earlier:
        (again / row.sop_instance_uid).write_bytes(b"resent")
        _record_again(seeded, row, again / row.sop_instance_uid)

    series = seeded.store.get_series(seeded.series_key)
    assert series.instance_count == len(earlier) == 4
    assert sorted(i.path for i in seeded.store.series_instances(seeded.series_key)) == \
        sorted(again / row.sop_instance_uid for row in earlier)

    job = seeded.store.create_job(seeded.series_key, "association released")
    seeded.store.claim_next_job("test-worker")
    seeded.store.finish_job(job.id, state="done", timings={})
    late = ct_datasets(volume(slices=1), name="late")[0]
    path = save([late], config.data_dir / "instances" / "late")[0]
    seeded.store.record_instance(sop_instance_uid=str(late.SOPInstanceUID), sop_class_uid=str(late.SOPClassUID),
                                 series_key=seeded.series_key, series_instance_uid=seeded.series_uid,
                                 study_instance_uid=None, transfer_syntax_uid=str(late.file_meta.TransferSyntaxUID),
                                 calling_ae="ORTHANC", path=path, size=path.stat().st_size, modality="CT")
    assert seeded.store.get_series(seeded.series_key).instance_count == 5  # not reset: nothing was purged since


def test_a_series_with_a_queued_job_is_not_purged(seeded):
    config, seeded = seeded
    _deliver_all(seeded)
    Operations(seeded.store).requeue_job(seeded.job_id)
    assert _retention(config, seeded).purge(now=utcnow() + LATER).series == []


def test_purge_dry_run_lists_what_would_go_and_removes_nothing(seeded, capsys, monkeypatch):
    config, seeded = seeded
    _deliver_all(seeded)
    for name, value in {"SPINE_NODE_DATA_DIR": str(config.data_dir), "SPINE_NODE_DESTINATIONS": "PACS@127.0.0.1:4242",
                        "SPINE_NODE_HTTP_PORT": "0", "SPINE_NODE_DATABASE_URL": config.database_url}.items():
        monkeypatch.setenv(name, value)
    paths = _instance_paths(seeded, seeded.series_key)
    time.sleep(0.2)  # --days 0.000001 is 86 ms: on a quiet machine the seeding is younger than that

    assert main(["purge", "--dry-run", "--days", "0.000001"]) == 0

    out = capsys.readouterr().out
    assert f"series {seeded.series_uid}: {len(paths)} instance file(s)" in out
    assert out.strip().splitlines()[-1].startswith(f"would remove {len(paths)} file(s)")
    assert all(p.exists() for p in paths)
    assert main(["purge"]) == 0 and "retention is off" in capsys.readouterr().out
    assert main(["purge", "--days", "0.000001"]) == 0
    assert not any(p.exists() for p in paths)


class _FakeSpaceGuard(DiskGuard):
    """Free space is 'files under the folder' short of a fixed total: removing files makes room."""

    def __init__(self, folder: Path, needed_bytes: int):
        super().__init__(folder, min_free_mb=0)
        self.needed = needed_bytes

    def _measure(self):
        from dicom_node.runtime.disk import DiskSpace

        used = sum(p.stat().st_size for p in self.folder.rglob("*.dcm"))
        return DiskSpace(free_bytes=10_000_000 - used, total_bytes=10_000_000, min_free_bytes=self.needed)


def test_the_emergency_clean_removes_the_oldest_delivered_series_until_there_is_room(seeded):
    config, seeded = seeded
    _deliver_all(seeded)
    paths = _instance_paths(seeded, seeded.series_key)
    used = sum(p.stat().st_size for p in config.data_dir.rglob("*.dcm"))
    guard = _FakeSpaceGuard(config.data_dir, needed_bytes=10_000_000 - used + 1)  # one byte short
    assert not guard.space(fresh=True).ok

    report = _retention(config, seeded, guard, emergency=True).clean_for_room()

    assert [c.uid for c in report.series] == [seeded.series_uid]  # not old, but delivered: it goes first
    assert not any(p.exists() for p in paths)
    assert all(p.exists() for p in _instance_paths(seeded, seeded.receiving_key))
    assert guard.space(fresh=True).ok


def _scp(config, seeded, guard):
    receiver = GuardedReceiver(guard, seeded.store, InstanceFiles(config.data_dir))
    port = free_port()
    server = start_scp(ScpSettings("SPINENODE", LOOPBACK, port), receiver)
    return server, receiver, port


def test_below_the_watermark_c_store_is_0xa700_nothing_is_written_and_it_resumes_by_itself(seeded, tmp_path):
    config, seeded = seeded
    guard = DiskGuard(config.data_dir, min_free_mb=10 ** 12, interval_s=0.0)  # no disk has an exabyte free
    files = save(ct_datasets(volume(slices=3), name="watermark"), tmp_path / "send")
    server, receiver, port = _scp(config, seeded, guard)
    try:
        before = sorted(config.data_dir.rglob("*"))
        assert send_c_store(port, files) == [OUT_OF_RESOURCES] * 3
        assert sorted(config.data_dir.rglob("*")) == before  # nothing written
        with seeded.store.db.reading() as session:
            reasons = list(session.scalars(select(RejectedInstance.reason)
                                           .where(RejectedInstance.reason.like("0xA700%"))))
        assert len(reasons) == 3 and "disk nearly full" in reasons[0]

        guard.min_free_mb = 0  # space came back
        assert send_c_store(port, files) == [0x0000] * 3
    finally:
        server.shutdown()
        receiver.close()


def _mount_tmpfs(folder: Path, size_mb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {result.stderr.strip()}")


def test_on_a_small_filesystem_filling_it_gives_0xa700_loses_nothing_acknowledged_and_resumes(tmp_path):
    small = tmp_path / "small"
    _mount_tmpfs(small, 24)
    try:
        config = node_config(small / "data", SPINE_NODE_MIN_FREE_MB="8",
                             SPINE_NODE_DATABASE_URL=f"sqlite:///{tmp_path / 'node.db'}")
        seeded = seed_store(config)
        guard = DiskGuard.of(config)
        guard.interval_s = 0.0
        filler = small / "filler.bin"
        free_mb = guard.space(fresh=True).free_bytes // (1024 * 1024)
        filler.write_bytes(b"\0" * ((free_mb - 10) * 1024 * 1024))  # 10 MB left: 2 MB above the watermark
        datasets = ct_datasets(volume(slices=40, rows=256, columns=256), name="fill")  # 128 kB each: 5 MB
        files = save(datasets, tmp_path / "send")
        server, receiver, port = _scp(config, seeded, guard)
        try:
            statuses = send_c_store(port, files)
            acknowledged = [ds.SOPInstanceUID for ds, s in zip(datasets, statuses) if s == 0x0000]
            assert OUT_OF_RESOURCES in statuses and acknowledged, statuses
            first_refused = statuses.index(OUT_OF_RESOURCES)
            recorded = {i.sop_instance_uid: i.path for i in seeded.store.series_instances(str(datasets[0].SeriesInstanceUID))}
            for uid in acknowledged:
                assert uid in recorded and recorded[uid].exists()  # nothing acknowledged is lost
            assert first_refused > 0

            filler.unlink()  # space returns
            assert send_c_store(port, files[first_refused:]) == [0x0000] * (len(files) - first_refused)
        finally:
            server.shutdown()
            receiver.close()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=30)
