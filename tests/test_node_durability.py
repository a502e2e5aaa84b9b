"""One fsync per received instance, and nothing acknowledged lost: the start-up reconciliation.

The SCP answers Success once an instance's file is fsynced (under a checksummed temporary
name) and its row is committed without fsync; a power cut may then take the rename into
the series folder, the row, or both. These tests make those losses by hand, on files the
real SCP wrote, and check that ``reconcile_instances`` (run by the node at start) puts
every acknowledged instance back: file in its series folder, row in SQL, series ready to
complete. Partial writes and refused payloads never come back.
"""
from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pynetdicom import _config
from sqlalchemy import delete

from dicom_node.runtime.completion import complete_series
from dicom_node.runtime.reconcile import reconcile_instances
from storage import InstanceFiles, Store
from storage.models import Instance
from support.dimse import non_dicom_payload, send_c_store as send
from support.inprocess_node import RunningScp
from support.synthetic_ct import ct_datasets, save, volume


@pytest.fixture
def scp(tmp_path):
    """The real SCP on a store and files under tmp_path."""
    running = RunningScp(tmp_path)
    yield running
    running.close()


@pytest.fixture
def series(tmp_path) -> list[Path]:
    return save(ct_datasets(volume(slices=6), name="durability"), tmp_path / "series")


def series_uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def lose_rows(store: Store) -> None:
    """What a power cut does to commits that were not fsynced."""
    with store.db.writing() as session:
        session.execute(delete(Instance))


def lose_rename(files: InstanceFiles, path: Path) -> Path:
    """What a power cut does to a rename that was not yet journalled: the file is back under its temporary name."""
    temp = files.incoming(path.stem, path.read_bytes()).path  # same name and checksum as the SCP gave it
    os.replace(path, temp)
    return temp


def test_acknowledged_instances_whose_rows_and_renames_were_lost_are_all_back_after_reconciliation(scp, series):
    store, files = scp.store, scp.files
    assert send(scp.port, series) == [0] * len(series)
    stored = {r.sop_instance_uid: r.path for r in store.series_instances(series_uid(series))}
    acknowledged = {uid: path.read_bytes() for uid, path in stored.items()}
    lose_rows(store)
    temps = [lose_rename(files, stored[uid]) for uid in sorted(stored)[:2]]

    done = reconcile_instances(store, files)

    assert sorted(done.placed) == sorted(stored[uid] for uid in sorted(stored)[:2])
    assert sorted(done.recorded) == sorted(stored) and not done.removed and not done.unreadable
    rows = store.series_instances(series_uid(series))
    assert {r.sop_instance_uid: r.path for r in rows} == stored
    assert all(r.path.read_bytes() == acknowledged[r.sop_instance_uid] for r in rows)  # whole, as acknowledged
    assert all(r.geometry and r.calling_ae is None for r in rows)
    assert not any(t.exists() for t in temps) and list(files.incoming_dir.iterdir()) == []
    assert complete_series(store, stable_age_s=0)  # the series goes on to a job


def test_instances_with_their_rows_are_left_alone(scp, series):
    assert send(scp.port, series) == [0] * len(series)
    before = scp.store.series_instances(series_uid(series))
    done = reconcile_instances(scp.store, scp.files)
    assert (done.placed, done.removed, done.recorded, done.unreadable) == ([], [], [], [])
    assert scp.store.series_instances(series_uid(series)) == before


def test_partial_writes_and_refused_payloads_left_by_a_crash_are_removed_never_recorded(scp, series):
    store, files = scp.store, scp.files
    partial = files.incoming("1.2.3.4", series[0].read_bytes())
    partial.write()
    with open(partial.path, "r+b") as handle:  # the power cut came in the middle of the write
        handle.truncate(1000)
    garbage = files.incoming("1.2.3.5", b"\0" * 128 + b"DICM not a data set")
    garbage.write()  # whole, but the SCP refused it (and had no time to delete it)

    done = reconcile_instances(store, files)

    assert sorted(done.removed) == sorted([partial.path, garbage.path])
    assert (done.placed, done.recorded) == ([], []) and files.instance_files() == []
    assert store.recorded_sop_instance_uids() == set()


def test_a_refused_payload_leaves_no_file_behind(scp, tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the broken bytes as they are
    garbage = non_dicom_payload(tmp_path / "garbage.dcm")

    [status] = send(scp.port, [garbage])

    assert 0xC000 <= status <= 0xCFFF
    assert list(scp.files.incoming_dir.iterdir()) == [] and scp.files.instance_files() == []
