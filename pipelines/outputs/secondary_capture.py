"""Key images for PACS that cannot show a SEG: the QC picture as a DICOM Secondary Capture, in the source study.

The picture is ``qc.qc_picture``'s: sagittal and coronal slabs that follow the spine, each
vertebra tinted in its level colour (the SEG's), named beside the spine, with its lesion
call marked, and a listing of the levels and calls, each with its collapse (Genant grade) and,
when the node holds a prior study of the patient, its change since it; the footer names
that prior. It is made on the CT turned to LPS
(``orientation.lps_reorientation``), so it reads the same for every patient position.

Written with highdicom (``hd.sc.SCImage.from_ref_dataset``: patient and study copied from the
CT) as RGB, 8 bits, uncompressed, in a new series of the source study; the picture holds
no patient data (BurnedInAnnotation NO) and says it is not for clinical use. A series that
cannot give a picture (too few slices, say) gets none: ``OutputNotBuilt`` with the reason.
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.model.orientation import lps_reorientation
from pipelines.outputs.rtstruct import OutputNotBuilt
from pipelines.outputs.seg import MANUFACTURER, SOFTWARE_VERSION, reference_headers
from pipelines.records import CTSeries, ModelIdentity, VertebraFinding

MIN_SLICES = 8
"""A picture of fewer slices would show no vertebra whole."""
NOT_CLINICAL = "Demonstration model: not for clinical use."


def key_picture(series: CTSeries, labels: np.ndarray, findings: list[VertebraFinding], model: ModelIdentity,
                change: dict | None = None) -> np.ndarray:
    """The QC picture (RGB uint8, rows x columns x 3) of ``findings`` on ``series``.

    Each vertebra's collapse and, with ``change`` (``change.compare``'s), its change since the
    prior study are noted beside its call (``report_text.level_notes``); the footer names the prior.
    """
    from pipelines.outputs.qc import VertebraMark, qc_picture
    from pipelines.outputs.report_text import level_notes, prior_line

    if series.hu.shape[0] < MIN_SLICES:
        raise OutputNotBuilt(f"the series has {series.hu.shape[0]} slices; key images need at least {MIN_SLICES}")
    reorient = lps_reorientation(series.geometry)
    notes = level_notes(findings, change)
    return qc_picture(reorient.to_lps(series.hu), reorient.to_lps(labels), reorient.spacing(series.geometry.spacing),
                      {f.label: f.level for f in findings},
                      marks=[VertebraMark(f.level, f.lesion, notes.get(f.level, "")) for f in findings],
                      title=f"Vertebrae by {model.name} {model.version}",
                      footer=" ".join(filter(None, [NOT_CLINICAL, prior_line(change)])))


def build_key_images(series: CTSeries, labels: np.ndarray, findings: list[VertebraFinding], model: ModelIdentity,
                     *, series_number: int = 903, picture: np.ndarray | None = None,
                     change: dict | None = None) -> list[Dataset]:
    """The key images of ``findings`` on ``series`` (one Secondary Capture: the QC picture).

    ``picture`` is the RGB picture when the caller made it already (the PDF report shows the
    same one). Raises OutputNotBuilt when no picture can be made, with the reason.
    """
    if not findings:
        raise OutputNotBuilt("no vertebra was found: there is nothing to show in key images")
    rgb = key_picture(series, labels, findings, model, change) if picture is None else picture
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise OutputNotBuilt(f"the key picture is {rgb.dtype} {rgb.shape}, not RGB uint8")
    source = reference_headers(series)[0]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, patient_orientation=("P", "F"),  # emptied below
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="Vertebrae key images (spine-node)",
    )
    sc.StudyInstanceUID = series.study_instance_uid
    sc.PatientOrientation = ""  # type 2, left empty: the sagittal (P, F) and coronal (L, F) panels differ
    sc.BodyPartExamined = "SPINE"  # a midline part: Laterality (type 2C) is then rightly absent
    sc.SoftwareVersions = SOFTWARE_VERSION
    sc.BurnedInAnnotation = "NO"
    prior = (change or {}).get("prior", {}).get("study_instance_uid")
    sc.ImageComments = (f"Sagittal and coronal views of the vertebrae named by {model.name} {model.version}"
                        + (f", with the change since the prior study {prior}" if prior else "") + f". {NOT_CLINICAL}")
    sc.DerivationDescription = "Thin-slab projections of the CT with the vertebra segmentation drawn over them"
    return [sc]
