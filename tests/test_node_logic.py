"""The node's rules in-process: completion, job outcomes, re-opened series, and the outbox against real peers.

The SCP, the store and the outbox are the real ones; the worker task is replaced by a
stub that 'finds' one vertebra where the volume is bright, because these tests are about
what the node does around the pipeline, not about segmentation (``test_node_e2e`` runs
the real model).
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.presentation import StoragePresentationContexts

from dicom_node.runtime.completion import complete_series, contiguity, judge
from dicom_node.runtime.delivery import Deliverer
from pipelines.options import PipelineOptions
from storage import Store, open_database
from support.dimse import LOOPBACK, StoreScp, free_port, send_c_store as send
from support.inprocess_node import InProcessNode, ct_series
from support.paths import shared
from support.synthetic_ct import save
from support.waiting import wait_until

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


# --- completion rule -----------------------------------------------------------------------------------

def _geometry(z: float, orientation=AXIAL) -> dict:
    return {"position": [0.0, 0.0, z], "orientation": list(orientation), "rows": 8, "columns": 8, "frames": 1}


def test_evenly_spaced_slices_are_contiguous_in_any_order():
    ok, why = contiguity([_geometry(z) for z in (4.0, 0.0, 2.0, 6.0)])
    assert ok, why


def test_a_missing_slice_is_a_gap():
    ok, why = contiguity([_geometry(z) for z in (0.0, 2.0, 6.0, 8.0)])
    assert not ok and "gap" in why


def test_duplicate_positions_and_mixed_orientations_are_not_contiguous():
    assert not contiguity([_geometry(z) for z in (0.0, 0.0, 0.0)])[0]
    assert not contiguity([_geometry(0.0), _geometry(2.0, [1, 0, 0, 0, 0, -1])])[0]


def test_one_multi_frame_instance_is_contiguous():
    assert contiguity([{"frames": 40, "position": None, "orientation": AXIAL}])[0]


class _Series:
    def __init__(self, last: datetime, released: datetime | None):
        self.last_received_at, self.released_at = last, released


def test_release_completes_a_contiguous_series_at_once_but_a_gap_waits_for_the_quiet_period():
    now = datetime.now(timezone.utc)
    released = _Series(now - timedelta(seconds=1), now)
    contiguous = [_geometry(z) for z in (0.0, 2.0, 4.0)]
    gapped = [_geometry(z) for z in (0.0, 2.0, 8.0)]
    assert judge(released, contiguous, now, stable_age_s=30).complete
    assert not judge(released, gapped, now, stable_age_s=30).complete
    assert judge(released, gapped, now + timedelta(seconds=31), stable_age_s=30).complete


def test_an_instance_after_the_release_waits_for_the_next_release_or_the_quiet_period():
    now = datetime.now(timezone.utc)
    series = _Series(now, now - timedelta(seconds=5))  # released before its last instance arrived
    assert not judge(series, [_geometry(z) for z in (0.0, 2.0)], now, stable_age_s=30).complete
    assert judge(series, [_geometry(z) for z in (0.0, 2.0)], now + timedelta(seconds=30), 30).complete


# --- a node in-process, with a stub worker -------------------------------------------------------------

@pytest.fixture
def node(tmp_path):
    """The in-process node (stub worker) with a deliverer, driven step by step by the test."""
    running = InProcessNode(tmp_path, PipelineOptions(min_slices=5))
    running.deliverer = Deliverer(running.store, "SPINENODE", retry_max_s=0.2, timeout_s=10)
    yield running
    running.close()


def test_late_instance_reopens_the_series_and_new_outputs_reference_their_predecessor(node, tmp_path):
    datasets = ct_series("reopen", 9)
    paths = save(datasets, tmp_path / "series")
    assert send(node.port, paths[:8]) == [0] * 8
    [first] = node.run_completed_jobs()
    assert first["state"] == "done", first["error"]
    first_uids = set(first["output_uids"])

    assert send(node.port, paths[8:]) == [0]  # the late slice: adjacent, so the series is contiguous again
    [second] = node.run_completed_jobs()

    assert second["state"] == "done", second["error"]
    assert second["series_version"] == 2 and second["instances"] == 9
    assert not first_uids & set(second["output_uids"])
    sr = pydicom.dcmread(next(o["path"] for o in second["outputs"] if o["kind"] == "sr"))
    old_sr_uid = next(o["sop_instance_uid"] for o in first["outputs"] if o["kind"] == "sr")
    referenced = [sop.ReferencedSOPInstanceUID for study in sr.PredecessorDocumentsSequence
                  for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence]
    assert referenced == [old_sr_uid]


def test_a_series_the_pipeline_refuses_is_rejected_with_its_reason(node, tmp_path):
    paths = save(ct_series("too-short", 3), tmp_path / "short")
    assert send(node.port, paths) == [0, 0, 0]
    [job] = node.run_completed_jobs()
    assert job["state"] == "rejected"
    assert "too_few_slices" in job["error"] or "slices" in job["error"]
    assert job["outputs"] == []
    assert job["instances"] == 3  # nothing acknowledged is lost: the instances stay recorded


def test_a_series_uid_reused_in_two_studies_is_rejected_naming_both_and_kept(node, tmp_path):
    datasets = ct_series("two-studies", 8)
    other = "1.2.826.0.1.3680043.8.498.424242"
    for ds in datasets[4:]:
        ds.StudyInstanceUID = other
    paths = save(datasets, tmp_path / "two-studies")
    assert send(node.port, paths) == [0] * 8
    [job] = node.run_completed_jobs()
    assert job["state"] == "rejected" and job["error"].startswith("mixed_studies"), job["error"]
    assert other in job["error"] and datasets[0].StudyInstanceUID in job["error"]
    assert job["outputs"] == [] and job["instances"] == 8


@pytest.mark.real_data
def test_a_series_of_another_storage_class_is_stored_not_processed(node):
    sr = shared("reference-objects", "highdicom", "sr_document.dcm")
    assert send(node.port, [sr]) == [0]
    [job] = node.run_completed_jobs(stable_age=0.01)
    assert job["state"] == "rejected" and job["error"].startswith("not_ct") and "stored, not processed" in job["error"]


# --- the outbox against real destinations --------------------------------------------------------------

def _job_with_outputs(node, tmp_path) -> dict:
    paths = save(ct_series(f"out-{tmp_path.name}", 6), tmp_path / "s")
    send(node.port, paths)
    [job] = node.run_completed_jobs()
    assert job["state"] == "done", job["error"]
    return job


class RefusingScp:
    """A pynetdicom storage SCP that answers 0xA700 (out of resources) to the first ``refusals`` C-STOREs."""

    def __init__(self, refusals: int):
        self.refusals = refusals
        self.received: list[str] = []
        self.port = free_port()
        self._lock = threading.Lock()
        ae = AE(ae_title="REFUSER")
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server((LOOPBACK, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        with self._lock:
            if self.refusals > 0:
                self.refusals -= 1
                return 0xA700
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000


def test_a_destination_that_refuses_is_recorded_with_its_status_and_retried(node, tmp_path):
    refuser = RefusingScp(refusals=2)
    node.destinations.append(f"REFUSER@{LOOPBACK}:{refuser.port}")
    try:
        job = _job_with_outputs(node, tmp_path)
        node.deliverer.run_once()
        detail = node.store.job_detail(job["id"])
        refused = [d for d in detail["deliveries"] if d["state"] == "pending"]
        assert len(refused) == 2 and all("0xA700" in d["last_error"] for d in refused)
        wait_until(lambda: node.deliverer.run_once() or not node.store.pending_deliveries(), 20,
                   "the retried deliveries")
        detail = node.store.job_detail(job["id"])
        assert all(d["state"] == "delivered" and d["attempts"] == 2 for d in detail["deliveries"])
        assert sorted(refuser.received) == sorted(job["output_uids"])
        assert any(e["state"] == "delivery-failed" and "0xA700" in e["detail"] for e in detail["events"])
    finally:
        refuser.server.shutdown()


@pytest.mark.peer
def test_outputs_wait_in_the_outbox_until_the_destination_is_up(node, tmp_path):
    destination = StoreScp(tmp_path / "received")
    node.destinations.append(destination.address)
    job = _job_with_outputs(node, tmp_path)
    for _ in range(2):
        node.deliverer.run_once()
        time.sleep(0.3)
    pending = node.store.pending_deliveries()
    assert len(pending) == 2 and all(d.attempts >= 1 and "no association" in d.last_error for d in pending)
    assert all(d.path.is_file() for d in pending)  # nothing deleted before delivery
    destination.start()
    try:
        wait_until(lambda: node.deliverer.run_once() or not node.store.pending_deliveries(), 20,
                   "delivery once the destination is up")
        received = {str(ds.SOPInstanceUID) for ds in destination.received()}
        assert received == set(job["output_uids"])
    finally:
        destination.stop()


@pytest.mark.peer
def test_stow_rs_delivers_to_a_dicomweb_server(node, tmp_path, orthanc_factory):
    orthanc = orthanc_factory(stable_age=60)
    node.destinations.append(f"stow:{orthanc.dicomweb_url}")
    job = _job_with_outputs(node, tmp_path)
    wait_until(lambda: node.deliverer.run_once() or not node.store.pending_deliveries(), 30, "STOW-RS delivery")
    import requests

    for uid in job["output_uids"]:
        found = requests.post(f"{orthanc.url}/tools/lookup", data=uid, timeout=10).json()
        assert [item["Type"] for item in found] == ["Instance"]


def test_completion_does_not_read_a_series_that_is_neither_released_nor_quiet(tmp_path, monkeypatch):
    store = Store(open_database(f"sqlite:///{tmp_path / 'node.db'}"))
    try:
        store.record_instance(sop_instance_uid="1.2.3.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                              series_key="1.2.3", series_instance_uid="1.2.3", study_instance_uid="1.2",
                              transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="SENDER", path="/x.dcm",
                              size=1, geometry=_geometry(0.0))
        read: list[str] = []
        monkeypatch.setattr(store, "series_instances", lambda key: read.append(key) or [])
        assert complete_series(store, stable_age_s=30) == [] and read == []  # still arriving: not read
        store.mark_association_released(["1.2.3"])
        assert complete_series(store, stable_age_s=30) == [] and read == ["1.2.3"]  # released: geometry judged
    finally:
        store.db.close()
