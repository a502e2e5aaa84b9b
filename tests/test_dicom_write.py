"""write_dataset: a DICOM file appears whole or not at all, and a failed write leaves the old one."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pipelines.dicom_write import write_dataset
from pipelines.errors import DicomWriteError


def _dataset(patient_id: str = "P1") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = patient_id
    return ds


def test_write_dataset_writes_a_part10_file_and_leaves_no_temporary_file(tmp_path):
    path = write_dataset(_dataset(), tmp_path / "out" / "a.dcm")
    assert path == tmp_path / "out" / "a.dcm"
    assert pydicom.dcmread(path).PatientID == "P1"
    assert [p.name for p in path.parent.iterdir()] == ["a.dcm"]
    assert path.stat().st_mode & 0o044 == 0o044  # readable by a sender running as another user


def test_write_dataset_replaces_an_existing_file(tmp_path):
    write_dataset(_dataset("OLD"), tmp_path / "a.dcm")
    write_dataset(_dataset("NEW"), tmp_path / "a.dcm")
    assert pydicom.dcmread(tmp_path / "a.dcm").PatientID == "NEW"


def test_a_failed_write_keeps_the_old_file_and_says_where_in_one_line(tmp_path):
    write_dataset(_dataset("OLD"), tmp_path / "a.dcm")
    broken = _dataset("SECRET-ID")
    with pytest.warns(UserWarning):  # pydicom warns on the assignment, fails on the write
        broken.add_new(0x00280010, "US", "not a number")  # Rows
    with pytest.raises(DicomWriteError) as caught:
        write_dataset(broken, tmp_path / "a.dcm")
    message = str(caught.value)
    assert str(tmp_path / "a.dcm") in message and "\n" not in message and "SECRET-ID" not in message
    assert pydicom.dcmread(tmp_path / "a.dcm").PatientID == "OLD"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]
