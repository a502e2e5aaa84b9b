"""Each output's SOP class on the wire, and the SEG every-frame option.

* The SCU proposes one presentation context per SOP class it sends (SEG, SR, RTSTRUCT,
  Secondary Capture, Encapsulated PDF), read on the receiving side of the association; a
  receiver that supports every class but Segmentation Storage refuses only the SEG, the
  refusal is recorded for that object and the others are stored (Slicer #5654, fo-dicom #1368).
* ``seg_all_frames``: a BINARY SEG with one frame per CT slice and segment, empty ones
  included, each at its CT slice's position; LABELMAP one frame per slice; dciodvfy-clean;
  highdicom reads back the same voxels.
"""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import (Comprehensive3DSRStorage, EncapsulatedPDFStorage, RTStructureSetStorage,
                         SecondaryCaptureImageStorage, SegmentationStorage, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, RLELossless)

from dicom_node.dimse.scu import c_store
from dicom_node.config.values import DimsePeer
from pipelines.outputs.pdf_report import build_pdf_report
from pipelines.outputs.rtstruct import build_rtstruct
from pipelines.outputs.seg import build_seg
from pipelines.outputs.sr import build_sr
from research.phantoms.generator import make_phantom
from support.dimse import LOOPBACK, StoreReceiver
from support.programs import dciodvfy_messages
from support.seg_sr_cases import MODEL, PHANTOM, phantom_case, save_dataset

SENT_CLASSES = {SegmentationStorage, Comprehensive3DSRStorage, RTStructureSetStorage, EncapsulatedPDFStorage,
                SecondaryCaptureImageStorage}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return phantom_case(make_phantom(5, **PHANTOM), "HFS", tmp_path_factory.mktemp("delivery"))


@pytest.fixture(scope="module")
def files(case, tmp_path_factory) -> dict[str, Path]:
    """Every output of the phantom written as a file (the key image is a small SC of its own)."""
    folder = tmp_path_factory.mktemp("outputs")
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    sr = build_sr(case.series, seg, case.findings, MODEL)
    sc = hd.sc.SCImage.from_ref_dataset(
        case.series.source_images[0], np.zeros((16, 16, 3), np.uint8), "RGB", 8, "PATIENT", hd.UID(), 903, hd.UID(),
        1, "spine-node", patient_orientation=("P", "F"))
    datasets = {"seg": seg, "sr": sr, "rtstruct": build_rtstruct(case.series, case.labels, case.findings, MODEL),
                "sc": sc, "pdf": build_pdf_report(case.series, case.findings, MODEL)}
    return {kind: save_dataset(ds, folder / f"{kind}.dcm") for kind, ds in datasets.items()}


def test_the_scu_proposes_each_outputs_class_and_a_refused_one_stops_only_itself(files):
    with StoreReceiver("NOSEG", SENT_CLASSES - {SegmentationStorage},
                       syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian]) as receiver:
        results = c_store(DimsePeer("NOSEG", LOOPBACK, receiver.port), list(files.values()), "SPINENODE")
    assert set().union(*receiver.requested) == SENT_CLASSES
    assert results[files["seg"]] is not None and "not sent" in results[files["seg"]]
    assert {kind: results[path] for kind, path in files.items() if kind != "seg"} == {
        "sr": None, "rtstruct": None, "sc": None, "pdf": None}
    assert receiver.stored_classes() == sorted(SENT_CLASSES - {SegmentationStorage})


@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_seg_all_frames_has_every_slice_at_its_position_and_the_same_voxels(case, labelmap, tmp_path):
    seg = build_seg(case.series, case.labels, case.findings, MODEL, labelmap=labelmap, all_frames=True)
    n_slices, n_segments = case.series.hu.shape[0], len(case.findings)
    assert int(seg.NumberOfFrames) == n_slices * (1 if labelmap else n_segments)
    positions = np.array([fg.PlanePositionSequence[0].ImagePositionPatient
                          for fg in seg.PerFrameFunctionalGroupsSequence], float)
    expected = np.array([case.series.geometry.frame_position(k) for k in range(n_slices)])
    assert {tuple(np.round(p, 3)) for p in positions} == {tuple(np.round(p, 3)) for p in expected}
    path = save_dataset(seg, tmp_path / "seg.dcm")
    read = hd.seg.segread(path)
    uids = [h.SOPInstanceUID for h in case.series.source_images]
    pixels = read.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    number_of = {f.label: f.segment_number for f in case.findings}
    expected_labels = np.vectorize(lambda v: number_of.get(int(v), 0))(case.labels)
    np.testing.assert_array_equal(pixels, expected_labels)
    if labelmap:
        assert seg.file_meta.TransferSyntaxUID == RLELossless


@pytest.mark.peer
def test_seg_all_frames_passes_dciodvfy_without_any_message(case, tmp_path):
    seg = build_seg(case.series, case.labels, case.findings, MODEL, all_frames=True)
    assert dciodvfy_messages(save_dataset(seg, tmp_path / "seg.dcm")) == []
