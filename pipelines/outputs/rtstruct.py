"""The RT Structure Set (RTSTRUCT) of the vertebrae of one CT series, for radiotherapy planning.

highdicom has no RTSTRUCT class, so the data set is assembled with pydicom's own data
structures (no hand-made encoding: pydicom writes every element), module by module of the
RT Structure Set IOD (PS3.3 A.19):

* Patient, General Study: copied from the CT (``seg.reference_headers``), so it files in
  the source study; RT Series: modality RTSTRUCT, a new series; General Equipment;
* Structure Set: the CT's frame of reference, study, series and every CT image
  (ContourImageSequence); one ROI per vertebra, named "L1 vertebra", generated AUTOMATIC
  by the model (its name and version in ROIGenerationDescription);
* ROI Contour: each ROI's display colour is its level colour (``codes.level_colour``, the
  SEG's); one CLOSED_PLANAR contour per outline of the vertebra on each CT slice
  (``contours.slice_outlines``: outer boundaries and holes, such as the spinal canal,
  which readers combine by the even-odd rule), in patient millimetres, each referencing
  the CT image (and frame, for an Enhanced CT) it lies on;
* RT ROI Observations: interpreted type ORGAN, coded by its SNOMED CT level code
  (RTROIIdentificationCodeSequence); the lesion class is in the ROI's description;
* Frame of Reference: the CT's (the contours are in its patient coordinates).

A resampled volume (tilt corrected) lies on no CT image, so no RTSTRUCT is made for it:
``build_rtstruct`` raises ``OutputNotBuilt`` with the reason, and the other outputs go on.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from pipelines.errors import DicomWriteError
from pipelines.levels import LEVELS
from pipelines.outputs.codes import lesion_code, level_colour, vertebra_code
from pipelines.outputs.contours import slice_outlines
from pipelines.outputs.seg import MANUFACTURER, SOFTWARE_VERSION, TYPE2_COPIED, reference_headers
from pipelines.records import CTSeries, ModelIdentity, VertebraFinding

STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # the Referenced SOP Class of RTReferencedStudySequence
COPIED = ("SpecificCharacterSet", "StudyInstanceUID", "FrameOfReferenceUID", "PatientAge", "PatientWeight",
          "PatientSize", "StudyDescription", "IssuerOfPatientID")


class OutputNotBuilt(DicomWriteError):
    """An optional output cannot be made for this series (the reason says why); the others are still sent."""


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _image_refs(series: CTSeries) -> list[tuple[str, str, int | None]]:
    """(SOP Class, SOP Instance, frame number or None) of the CT image under each slice of ``series.hu``."""
    headers = reference_headers(series)
    if len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1)) > 1:
        from pipelines.outputs.sr import _frame_number

        return [(headers[0].SOPClassUID, headers[0].SOPInstanceUID, _frame_number(series, k))
                for k in range(series.hu.shape[0])]
    return [(h.SOPClassUID, h.SOPInstanceUID, None) for h in headers]


def _contour_image(ref: tuple[str, str, int | None]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref[0], ref[1]
    if ref[2] is not None:
        item.ReferencedFrameNumber = ref[2]
    return item


def _header(series: CTSeries, model: ModelIdentity, series_number: int) -> Dataset:
    """Patient, study, RT series, equipment and SOP common attributes."""
    source = reference_headers(series)[0]
    ds = Dataset()
    for keyword, _ in TYPE2_COPIED:
        setattr(ds, keyword, source.get(keyword, ""))
    for keyword in COPIED:
        if keyword in source and source.get(keyword) not in (None, ""):
            setattr(ds, keyword, source.get(keyword))
    now = dt.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, generate_uid()
    ds.StudyInstanceUID = series.study_instance_uid
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), series_number
    ds.SeriesDescription = "Vertebrae (spine-node RTSTRUCT)"
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, model.name[:64]
    ds.SoftwareVersions, ds.DeviceSerialNumber = SOFTWARE_VERSION, model.sha256[:16] or "unknown"
    ds.InstanceNumber = 1
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StructureSetLabel = "VERTEBRAE"
    ds.StructureSetName = f"Vertebrae by {model.name}"[:64]
    ds.StructureSetDescription = f"Vertebrae T1-L5 by {model.name} {model.version}; not for clinical use"[:1024]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")  # Frame of Reference, type 2
    return ds


def _references(series: CTSeries, frame_of_reference: str, refs: list) -> Sequence:
    """ReferencedFrameOfReferenceSequence: frame of reference > study > series > every CT image."""
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_instance_uid
    rt_series.ContourImageSequence = Sequence([_contour_image(ref) for ref in dict.fromkeys(refs)])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_MANAGEMENT, series.study_instance_uid
    study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = Sequence([study])
    return Sequence([frame])


def _roi_contours(labels: np.ndarray, label: int, series: CTSeries, refs: list) -> list[Dataset]:
    """One CLOSED_PLANAR contour per outline of ``label`` on each slice, in patient mm (last point not repeated)."""
    contours = []
    for k in np.flatnonzero((labels == label).any(axis=(1, 2))):
        for outline in slice_outlines(labels[k] == label, int(k)):
            points = outline.patient(series.geometry)[:-1]
            item = Dataset()
            item.ContourImageSequence = Sequence([_contour_image(refs[int(k)])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.3f}" for v in points.ravel()]
            contours.append(item)
    return contours


def _roi(number: int, finding: VertebraFinding, frame_of_reference: str, model: ModelIdentity) -> Dataset:
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_of_reference
    roi.ROIName = f"{finding.level} vertebra"
    roi.ROIDescription = f"{finding.level} vertebra, lesion class: {lesion_code(finding.lesion).meaning}"[:1024]
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{model.name} {model.version}"[:64]
    return roi


def _observation(number: int, finding: VertebraFinding) -> Dataset:
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = number, number
    observation.ROIObservationLabel = f"{finding.level} vertebra"[:16]
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIInterpreter = ""
    observation.RTROIIdentificationCodeSequence = Sequence([_code_item(vertebra_code(finding.level))])
    return observation


def build_rtstruct(series: CTSeries, labels: np.ndarray, findings: list[VertebraFinding], model: ModelIdentity, *,
                   series_number: int = 902) -> Dataset:
    """The RTSTRUCT of ``findings`` (one ROI per vertebra, head to feet) on ``series`` from ``labels``.

    Raises OutputNotBuilt when the series cannot carry one (no finding, a resampled volume)
    and DicomWriteError when a finding has no contour.
    """
    if not findings:
        raise OutputNotBuilt("no vertebra was found: an RTSTRUCT needs at least one ROI")
    if series.resampled:
        raise OutputNotBuilt("the volume was resampled (tilt corrected): its slices lie on no CT image, "
                             "which every RTSTRUCT contour must reference")
    if labels.shape != series.hu.shape:
        raise DicomWriteError(f"label map shape {labels.shape} differs from the CT's {series.hu.shape}")
    refs = _image_refs(series)
    frame_of_reference = str(reference_headers(series)[0].FrameOfReferenceUID)
    ds = _header(series, model, series_number)
    ds.ReferencedFrameOfReferenceSequence = _references(series, frame_of_reference, refs)
    rois, contours, observations = [], [], []
    ordered = sorted(findings, key=lambda f: LEVELS.index(f.level))
    for number, finding in enumerate(ordered, start=1):
        items = _roi_contours(labels, finding.label, series, refs)
        if not items:
            raise DicomWriteError(f"{finding.level} vertebra (label {finding.label}) has no contour")
        rois.append(_roi(number, finding, frame_of_reference, model))
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(level_colour(finding.level))
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = Sequence(items)
        contours.append(roi_contour)
        observations.append(_observation(number, finding))
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
