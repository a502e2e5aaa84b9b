"""Key images (Secondary Capture of the QC picture) for PACS that cannot show a SEG.

Pinned: dciodvfy gives no error and no warning; pydicom and highdicom read it back as an
RGB 8-bit SC image in the CT's study, patient and frame-free (no geometry claimed); its
pixels are the QC picture's exactly; it is the same picture for HFS and FFS (made on the CT
turned to LPS); the vertebra colours appear in it; a series too short is refused with the
reason, and through ``build_optional_outputs`` the others are still made.
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipelines.outputs.codes import level_colour
from pipelines.outputs.optional import build_optional_outputs
from pipelines.outputs.rtstruct import OutputNotBuilt
from research.phantoms.generator import make_phantom
from support.programs import dciodvfy_messages
from support.seg_sr_cases import MODEL, phantom_case, save_dataset

pytest.importorskip("pipelines.outputs.qc", reason="the QC picture (pipelines/outputs/qc.py) is not in this checkout")
from pipelines.outputs.secondary_capture import build_key_images, key_picture  # noqa: E402

PHANTOM = dict(fov="lumbar", spacing=(4.0, 1.5, 1.5), matrix=160)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, **PHANTOM)


@pytest.fixture(scope="module", params=("HFS", "FFS"))
def written(request, phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    case = phantom_case(phantom, request.param, folder)
    (image,) = build_key_images(case.series, case.labels, case.findings, MODEL)
    return case, save_dataset(image, folder / "sc-1.dcm")


@pytest.mark.peer
def test_dciodvfy_gives_no_error_and_no_warning(written):
    _, path = written
    assert dciodvfy_messages(path) == []


def test_it_reads_back_as_an_rgb_secondary_capture_in_the_ct_study(written):
    case, path = written
    ds = pydicom.dcmread(path)
    source = case.series.source_images[0]
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (ds.StudyInstanceUID, ds.PatientID) == (case.series.study_instance_uid, source.PatientID)
    assert ds.SeriesInstanceUID != case.series.series_instance_uid
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
    assert ds.BurnedInAnnotation == "NO" and "not for clinical use" in ds.ImageComments
    assert "ImageOrientationPatient" not in ds and not ds.PatientOrientation
    image = hd.imread(path)  # highdicom's own reader of image objects
    assert image.get_frame(1).shape == (ds.Rows, ds.Columns, 3)


def test_its_pixels_are_the_qc_picture_with_the_level_colours(written):
    case, path = written
    pixels = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(pixels, key_picture(case.series, case.labels, case.findings, MODEL))
    flat = pixels.reshape(-1, 3).astype(int)
    for finding in case.findings:
        colour = np.array(level_colour(finding.level))
        assert (np.abs(flat - colour).max(axis=1) <= 2).any(), f"no pixel of {finding.level}'s colour {colour}"


def test_hfs_and_ffs_give_the_same_picture(phantom, tmp_path):
    pictures = [key_picture(c.series, c.labels, c.findings, MODEL)
                for c in (phantom_case(phantom, o, tmp_path / o) for o in ("HFS", "FFS"))]
    assert pictures[0].shape == pictures[1].shape
    assert (pictures[0] != pictures[1]).any(axis=2).mean() < 0.01  # the same picture, title and rounding aside


def test_a_short_series_gets_no_key_images_and_the_others_are_still_made(phantom, tmp_path):
    case = phantom_case(phantom, "HFS", tmp_path)
    short = case.series
    middle = case.labels.shape[0] // 2
    keep = slice(middle - 2, middle + 2)
    short.hu, labels = short.hu[keep], case.labels[keep]
    short.source_images = short.source_images[keep]
    findings = [f for f in case.findings if (labels == f.label).any()]
    with pytest.raises(OutputNotBuilt, match="slices"):
        build_key_images(short, labels, findings, MODEL)
    made = build_optional_outputs(short, labels, findings, MODEL, ("seg", "sr", "sc", "pdf"))
    assert "slices" in made.not_built["sc"]
    assert [kind for kind, _, _ in made.datasets] == ["pdf"]


def test_with_a_prior_the_key_images_note_each_level_s_change_and_name_the_prior(written):
    case, _ = written
    level = case.findings[0].level
    change = {"prior": {"study_instance_uid": "1.2.826.0.1.3680043.8.498.7"}, "only_now": [], "only_before": [],
              "warnings": [], "vertebrae": {level: {"compared": True, "lesion_change": "new", "new_collapse": False}}}
    plain = key_picture(case.series, case.labels, case.findings, MODEL)
    noted = key_picture(case.series, case.labels, case.findings, MODEL, change)
    assert noted.shape[1] > plain.shape[1]  # the listing widened for the notes
    from pipelines.outputs.qc import FOOTER_PX, HEADER_PX

    def yellow_in_listing(rgb):  # the notes' colour, between header and footer (the footer is yellow too)
        right = rgb[HEADER_PX:-FOOTER_PX, plain.shape[1] - 60:]
        return bool(((right[..., 0] > 200) & (right[..., 1] > 170) & (right[..., 2] < 160)).any())

    assert yellow_in_listing(noted) and not yellow_in_listing(plain)
    (image,) = build_key_images(case.series, case.labels, case.findings, MODEL, change=change)
    assert "prior study 1.2.826.0.1.3680043.8.498.7" in image.ImageComments
