"""The C-STORE handler never raises (D8), over the corpus of broken payloads and a Hypothesis fuzz.

A wrong or unknown VR (Rows as US with 3 bytes, VR "ZZ") is read by pydicom only when a
value is converted; the error used to escape the handler: pynetdicom answered 0xC211, the
log got tracebacks and no ``rejected_instances`` row was written. Now every such payload
gets 0xC000 with a reason, and a row. The fuzz test mutates a valid CT payload (byte
flips, truncation, inserted garbage, VR codes swapped) and asserts that the handler
answers a status for each, never an exception; it is bounded (``max_examples``) and
touches only a temporary folder.
"""
from __future__ import annotations

import io
import struct
from types import SimpleNamespace

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import _config
from sqlalchemy import select

from dicom_node.dimse.payload import PayloadError, inspect_payload
from dicom_node.dimse.scp import Receiver, ScpSettings, start_scp
from dicom_node.dimse.status import StoreStatus
from storage import InstanceFiles, Store, open_database
from storage.models import RejectedInstance
from support.dimse import LOOPBACK, free_port, send_c_store
from support.synthetic_ct import ct_datasets, save, volume

CT = "1.2.840.10008.5.1.4.1.1.2"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _payload_with(extra: bytes, uid: str) -> bytes:
    """A CT data set's Part-10 bytes with ``extra`` raw elements (then a native Pixel Data) appended."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CT, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.2"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 8) + b"\0" * 8
    return buffer.getvalue() + extra + pixels


BAD_VR = {
    "rows-us-3-bytes": _element(0x0028, 0x0010, b"US", b"\x01\x02\x03") + _element(0x0028, 0x0011, b"US", b"\x02\0")
    + _element(0x0028, 0x0100, b"US", b"\x10\0"),
    "columns-vr-zz": _element(0x0028, 0x0010, b"US", b"\x02\0") + _element(0x0028, 0x0011, b"ZZ", b"\x02\0")
    + _element(0x0028, 0x0100, b"US", b"\x10\0"),
    "rows-vr-zz": _element(0x0028, 0x0010, b"ZZ", b"\x02\0"),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("payload")
    store = Store(open_database(f"sqlite:///{root / 'node.db'}"))
    receiver = Receiver(store, InstanceFiles(root / "data"))
    port = free_port()
    server = start_scp(ScpSettings("SPINENODE", LOOPBACK, port), receiver)
    yield {"store": store, "receiver": receiver, "port": port, "root": root}
    server.shutdown()
    receiver.close()
    store.db.close()


@pytest.mark.parametrize("case", sorted(BAD_VR))
def test_wrong_or_unknown_vr_is_cannot_understand_with_a_recorded_reason(node, tmp_path, monkeypatch, case):
    """D8: before, pynetdicom answered 0xC211 (the handler raised) and no rejected_instances row was written."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as written, not re-encoded
    uid = f"1.2.826.0.1.3680043.10.3.{sorted(BAD_VR).index(case) + 1}"
    path = tmp_path / f"{case}.dcm"
    path.write_bytes(_payload_with(BAD_VR[case], uid))
    assert send_c_store(node["port"], [path]) == [StoreStatus.CANNOT_UNDERSTAND]
    with node["store"].db.reading() as session:
        [row] = session.scalars(select(RejectedInstance).where(RejectedInstance.sop_instance_uid == uid))
    assert row.reason.startswith("0xC000 cannot read the data set")
    assert "(0028,001" in row.reason


@pytest.fixture(scope="module")
def valid_payload(tmp_path_factory) -> bytes:
    [path] = save(ct_datasets(volume(slices=1, rows=4, columns=4), name="fuzz"), tmp_path_factory.mktemp("fuzz"))
    return path.read_bytes()


def _event(data: bytes, sop_uid: str):
    """A stand-in for pynetdicom's C-STORE event: what the handler reads of it."""
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="FUZZ", primitive=None))
    return SimpleNamespace(request=SimpleNamespace(AffectedSOPClassUID=CT, AffectedSOPInstanceUID=sop_uid),
                           context=SimpleNamespace(transfer_syntax=pydicom.uid.ExplicitVRLittleEndian),
                           assoc=assoc, encoded_dataset=lambda include_meta=True: data)


_VRS = [b"US", b"UL", b"SS", b"DS", b"IS", b"ZZ", b"OB", b"SQ", b"UN", b"\0\0"]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """A valid payload with one to three mutations (data set part only: the file meta stays readable)."""
    start = 132 + 200 if len(data) > 400 else 132
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "vr", "length"]))
        at = draw(st.integers(start, len(out) - 1))
        if kind == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "vr":
            position = out.find(b"US", at)
            if position > 0:
                out[position:position + 2] = draw(st.sampled_from(_VRS))
        else:
            out[at:at + 2] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        if len(out) <= start + 1:
            break
    return bytes(out)


def test_fuzzed_payloads_always_get_a_status_never_an_exception(valid_payload, tmp_path_factory):
    """D8 (fuzz): 150 mutated payloads; each is stored (0x0000) or refused with a failure status and a reason."""
    root = tmp_path_factory.mktemp("fuzz-node")
    store = Store(open_database(f"sqlite:///{root / 'node.db'}"))
    receiver = Receiver(store, InstanceFiles(root / "data"))
    counter = iter(range(1, 10**6))
    statuses: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutated(valid_payload))
    def check(data: bytes) -> None:
        try:
            inspect_payload(data, CT, "1.2.3")
        except PayloadError:
            pass  # the one exception it may raise
        answer = receiver.store_instance(_event(data, f"1.2.826.0.1.3680043.10.9.{next(counter)}"))
        status = int(answer.Status)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (StoreStatus.SUCCESS, StoreStatus.CANNOT_UNDERSTAND, StoreStatus.TRUNCATED,
                          StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
        if status != StoreStatus.SUCCESS:
            assert answer.ErrorComment

    try:
        check()
    finally:
        receiver.close()
        store.db.close()
    assert sum(statuses.values()) >= 100
