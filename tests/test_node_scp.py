"""The node's SCP in-process on a free loopback port, against real SCUs (DCMTK storescu, pynetdicom).

Each refusal must give the peer the right answer (A-ASSOCIATE-RJ, a rejected presentation
context, a failure status) and leave a recorded reason; the SCP keeps serving, and what
it acknowledged stays on disk and in SQL.
"""
from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, MPEG2MPML
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dicom_node.dimse.status import StoreStatus
from storage import Store
from storage.models import Association, RejectedInstance
from support.dimse import LOOPBACK, echo_ok, non_dicom_payload, send_c_store, storescu
from support.inprocess_node import RunningScp
from support.paths import REAL_CT, shared
from support.synthetic_ct import ct_datasets, save, volume
from support.waiting import wait_until

ALLOWED = ("SENDER", "ECHOSCU", "PYSCU")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """Store + files + SCP, shared by the module (like one running node)."""
    released: list[list[str]] = []
    running = RunningScp(tmp_path_factory.mktemp("scp"), on_released=released.append, allowed_aes=ALLOWED)
    running.released = released
    yield running
    running.close()


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    """A 6-slice 12x10 CT series as files."""
    return save(ct_datasets(volume(slices=6), name="scp-small"), tmp_path_factory.mktemp("small"))


def _rows(store: Store, model) -> list:
    with store.db.reading() as session:
        return list(session.scalars(select(model).order_by(model.id)))


@pytest.mark.peer
def test_stored_instances_are_on_disk_as_sent_and_in_sql(node, small_series):
    storescu(node.port, small_series)
    store = node.store
    series_uid = str(pydicom.dcmread(small_series[0]).SeriesInstanceUID)
    instances = store.series_instances(series_uid)
    assert len(instances) == len(small_series)
    for row, sent in zip(sorted(instances, key=lambda r: r.sop_instance_uid),
                         sorted(small_series, key=lambda p: str(pydicom.dcmread(p).SOPInstanceUID))):
        on_disk = pydicom.dcmread(row.path)
        original = pydicom.dcmread(sent)
        assert on_disk.SOPInstanceUID == original.SOPInstanceUID
        assert on_disk.PixelData == original.PixelData
        assert row.calling_ae == "SENDER"
        assert row.geometry["position"] == [float(v) for v in original.ImagePositionPatient]
    wait_until(lambda: store.get_series(series_uid).released_at, 10, "the release to be recorded")
    wait_until(lambda: [series_uid] in node.released, 10, "the node to be told of the release")


@pytest.mark.peer
def test_jpeg2000_is_stored_without_decoding(node, tmp_path):
    ds = ct_datasets(volume(slices=2, rows=64, columns=64), name="scp-j2k")[0]
    ds.compress(JPEG2000Lossless)
    path = save([ds], tmp_path)[0]
    storescu(node.port, [path], extra=("-xv",))
    row = node.store.series_instances(str(ds.SeriesInstanceUID))[0]
    assert row.transfer_syntax_uid == JPEG2000Lossless
    assert pydicom.dcmread(row.path).PixelData == pydicom.dcmread(path).PixelData  # same encoded bytes


def test_series_without_uids_gets_a_derived_key(node, tmp_path):
    """Real exports lack Study/Series UIDs: their slices still land in one series."""
    datasets = ct_datasets(volume(slices=3), name="scp-no-uid")
    for ds in datasets:
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
    paths = save(datasets, tmp_path)
    statuses = send_c_store(node.port, paths, calling="PYSCU")
    assert statuses == [0, 0, 0]
    series = [s for s in node.store.receiving_series() if s.instance_count == 3 and s.study_instance_uid is None]
    assert len(series) == 1
    assert {r.sop_instance_uid for r in node.store.series_instances(series[0].series_key)} == \
           {str(d.SOPInstanceUID) for d in datasets}


def test_unknown_calling_ae_is_refused_and_recorded(node):
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, node.port, ae_title="SPINENODE")
    assert assoc.is_rejected
    wait_until(lambda: any(a.event == "rejected" and a.calling_ae == "INTRUDER"
                           for a in _rows(node.store, Association)), 10, "the refusal to be recorded")
    assert echo_ok(node.port)


def test_unsupported_sop_class_and_transfer_syntax_are_rejected_at_negotiation(node):
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.3.4.5.6.7", ["1.2.840.10008.1.2.1"])  # a SOP class nobody defined
    ae.add_requested_context(CTImageStorage, [MPEG2MPML])                 # video: the pipeline cannot decode it
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, node.port, ae_title="SPINENODE")
    assert assoc.is_established
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        assert accepted == {Verification}
        assert rejected == {"1.2.3.4.5.6.7", CTImageStorage}
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


@pytest.fixture
def chunked_send(monkeypatch):
    """pynetdicom sends a file's bytes as stored (not re-encoded): the only way to send a broken one."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_truncated_payload_gets_failure_status_and_recorded_reason(node, tmp_path, chunked_send):
    series = save(ct_datasets(volume(slices=6), name="scp-truncated"), tmp_path / "series")
    assert send_c_store(node.port, series, calling="PYSCU") == [0] * len(series)
    broken = tmp_path / "truncated.dcm"
    data = series[0].read_bytes()
    broken.write_bytes(data[: len(data) - 100])
    uid = str(pydicom.dcmread(series[0]).SOPInstanceUID)
    before = node.store.series_instances(str(pydicom.dcmread(series[0]).SeriesInstanceUID))

    [status] = send_c_store(node.port, [broken], calling="PYSCU")

    assert status == StoreStatus.TRUNCATED
    reasons = [r for r in _rows(node.store, RejectedInstance) if r.sop_instance_uid == uid]
    assert reasons and "truncated" in reasons[-1].reason
    after = node.store.series_instances(str(pydicom.dcmread(series[0]).SeriesInstanceUID))
    assert [(r.sop_instance_uid, r.path, r.path.read_bytes()) for r in after] == \
           [(r.sop_instance_uid, r.path, r.path.read_bytes()) for r in before]  # the acknowledged copy is intact
    assert echo_ok(node.port)


def test_non_dicom_payload_gets_cannot_understand(node, tmp_path, chunked_send):
    garbage = non_dicom_payload(tmp_path / "garbage.dcm")

    [status] = send_c_store(node.port, [garbage], calling="PYSCU")

    assert 0xC000 <= status <= 0xCFFF
    assert any(r.sop_instance_uid == "1.2.3.999.1" for r in _rows(node.store, RejectedInstance))
    assert echo_ok(node.port)


@pytest.mark.real_data
def test_other_storage_classes_are_stored(node):
    sr = shared("reference-objects", "highdicom", "sr_document.dcm")
    ds = pydicom.dcmread(sr)
    [status] = send_c_store(node.port, [sr], calling="PYSCU")
    assert status == 0
    rows = node.store.series_instances(str(ds.SeriesInstanceUID))
    assert [r.sop_class_uid for r in rows] == [ds.SOPClassUID]


def test_disk_failure_answers_out_of_resources(tmp_path, small_series):
    """The files' root cannot be created (it lies under a plain file): 0xA700, recorded, SCP still serving."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    scp = RunningScp(tmp_path, files=blocker / "data")
    try:
        [status] = send_c_store(scp.port, [small_series[0]], calling="PYSCU")
        assert status == StoreStatus.OUT_OF_RESOURCES
        assert "cannot write" in _rows(scp.store, RejectedInstance)[-1].reason
        assert scp.store.receiving_series() == []
        assert echo_ok(scp.port)
    finally:
        scp.close()


def test_tls_scp_serves_tls_peers_and_refuses_plain_ones(tmp_path):
    import shutil
    import ssl
    import subprocess

    from dicom_node.dimse.scp import make_ssl_context

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    scp = RunningScp(tmp_path, ssl_context=make_ssl_context(str(cert), str(key)))
    port = scp.port
    try:
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(Verification)
        client = ssl.create_default_context(cafile=str(cert))
        assoc = ae.associate(LOOPBACK, port, ae_title="SPINENODE", tls_args=(client, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        ae.acse_timeout = ae.network_timeout = 5
        assert not ae.associate(LOOPBACK, port, ae_title="SPINENODE").is_established
    finally:
        scp.close()


@pytest.mark.real_data
def test_real_series_as_found_is_stored_as_one_series_named_as_the_pipeline_names_it(node, chunked_send):
    """The real JPEG 2000 files lack SOP Class/Instance UIDs in their data sets and Study/Series UIDs entirely."""
    from pipelines.series.loader import discover_series

    files = sorted(REAL_CT.iterdir())
    assert send_c_store(node.port, files, calling="PYSCU", syntax=JPEG2000Lossless) == [0] * len(files)
    [expected] = discover_series([REAL_CT])
    rows = node.store.series_instances(expected.key)
    assert len(rows) == len(files) and {r.transfer_syntax_uid for r in rows} == {JPEG2000Lossless}
