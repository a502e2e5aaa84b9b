"""The TID 1500 Measurement Report (Comprehensive 3D SR) of the vertebrae in one CT series.

Written with highdicom, in the source study, as DICOM_REFERENCE.md §3.4 lays out:

* observer: a *device*, the algorithm (name, model version, manufacturer "spine-node",
  a Device Observer UID derived from the model's identity, so one model is one device);
* procedure reported: (25045-6, LN, "CT unspecified body region");
* one Volumetric ROI measurement group (TID 1411) per vertebra, in segment order: its
  tracking identifier and the SEG segment's Tracking UID, the referenced SEG segment
  (pointing at the CT *series*, not at each slice, to keep the SR small), finding
  (51282000, SCT, "Vertebra"), finding site = the level's SNOMED CT code, volume in ml
  and mean attenuation in Hounsfield units, and two qualitative evaluations: the lesion
  class in the private scheme 99VERTMET (declared in CodingSchemeIdentificationSequence)
  and the standard (94222008, SCT, "Bony metastasis") = Present / Absent (Indeterminate
  for the class ``indeterminate``: never Present) for readers that know no private codes;
* evidence: every CT instance and the SEG (CurrentRequestedProcedureEvidenceSequence);
* a ``predecessor`` SR (an earlier report on the same series, when a late instance
  re-opened it) is listed in PredecessorDocumentsSequence;
* no vertebra found (no SEG): one TID 1501 group "Vertebra = Absent" on the CT;
* a ``comment`` (why no vertebra is reported, or that the levels are uncertain) is a TEXT
  (121106, DCM, "Comment") in the first measurement group;
* for viewers that draw only image coordinates (OHIF skips groups without SCOORD/SCOORD3D),
  one TID 1410 group per vertebra after the TID 1411 groups (``outline_group``): the
  vertebra's outline on the slice through its centre as a closed SCOORD POLYLINE on that CT
  image (SCOORD3D in the frame of reference for a resampled volume), its finding site and
  lesion class, with the same Tracking UID as its TID 1411 group, so that OHIF merges the
  two and labels the outline with the volume, mean HU and the other numbers; then one
  TID 1410 group per vertebra naming it (``name_group``: a small marker at the top of the
  outline, a tracked finding of its own with the level and lesion class and no number, so
  that OHIF's five-line label shows the level);
* per measured vertebra, its anterior, middle and posterior body heights drawn
  (``height_groups``): one TID 1410 group each, a two-point SCOORD3D POLYLINE in the frame of
  reference (a height crosses many axial slices, so it lies on no single CT image) with the
  length as its measurement (VML-101..103, mm), a tracked finding of its own;
* with a prior study (``change``, from ``pipelines.measure.change.compare``): one TID 1501
  group per level present in both (``change_group``), with the prior's Study Instance UID
  (110180, DCM) as a UIDREF, the change in lesion volume (ml, %) and in each height (mm),
  the lesion change (new, no longer seen, persisting, none) and whether the body newly
  collapsed; a Comment says which prior, warns when it was analysed by another model or
  version (naming both), and why a level was not compared.
"""
from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.records import CTSeries, ModelIdentity, VertebraFinding
from pipelines.outputs.report_items import (MILLIMETRE, POSITIONS, PRIOR_STUDY, change_evaluations,
                                            change_measurements, report_measurements)
from pipelines.outputs.codes import (ABSENT, ATTENUATION, BONY_METASTASIS, CT_PROCEDURE, HOUNSFIELD_UNIT, LESION_TYPE,
                          MEAN, MILLILITRE, PRESENT, VERTEBRA, VOLUME, coding_scheme_identification,
                          free_text_scheme_identification, viewer_label,
                          lesion_code, metastasis_value, vertebra_code)
from pipelines.errors import DicomWriteError
from pipelines.levels import LEVELS
from pipelines.outputs.contours import Outline
from pipelines.outputs.seg import MANUFACTURER, character_set, reference_headers


def device_observer_uid(model: ModelIdentity) -> str:
    """The Device Observer UID of a model: the same name, version and weights give the same UID."""
    return generate_uid(entropy_srcs=["spine-node device observer", model.name, model.version, model.sha256])


def observation_context(model: ModelIdentity) -> hd.sr.ObservationContext:
    """The algorithm as a device observer."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(model), name=model.name, manufacturer_name=MANUFACTURER,
            model_name=f"{model.name} {model.version}"[:64], serial_number=model.sha256[:16] or None,
        ),
    )
    return hd.sr.ObservationContext(observer_device_context=device)


def _segments(seg: Dataset) -> dict[int, Dataset]:
    return {int(item.SegmentNumber): item for item in seg.SegmentSequence if int(item.SegmentNumber) > 0}


def _check_finding(finding: VertebraFinding, segments: dict[int, Dataset], seg: Dataset) -> Dataset:
    """The SEG segment of a finding, refusing findings the SEG does not describe or bad numbers."""
    segment = segments.get(finding.segment_number)
    if segment is None:
        raise DicomWriteError(
            f"finding {finding.level} refers to segment {finding.segment_number}, "
            f"which SEG {seg.SOPInstanceUID} does not have (build the SEG first: it numbers the segments)"
        )
    code = segment.SegmentedPropertyTypeCodeSequence[0].CodeValue
    if code != vertebra_code(finding.level).value:
        raise DicomWriteError(
            f"finding {finding.level} refers to segment {finding.segment_number} of SEG "
            f"{seg.SOPInstanceUID}, which is {segment.SegmentLabel!r}"
        )
    for name in ("volume_ml", "mean_hu"):
        if not math.isfinite(getattr(finding, name)):
            raise DicomWriteError(f"finding {finding.level}: {name} is {getattr(finding, name)}, not a number")
    return segment


def measurement_group(finding: VertebraFinding, segment: Dataset, seg: Dataset, series: CTSeries,
                      algorithm: hd.sr.AlgorithmIdentification
                      ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one vertebra: its SEG segment, volume, mean HU and lesion class."""
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.get("TrackingUID") or hd.UID(),
                                                 identifier=f"vertebra-{finding.level}"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=finding.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(series.series_instance_uid),
        ),
        finding_type=VERTEBRA,
        finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code(finding.level))],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=VOLUME, value=float(finding.volume_ml), unit=MILLILITRE),
            hd.sr.Measurement(name=ATTENUATION, value=float(finding.mean_hu), unit=HOUNSFIELD_UNIT,
                              derivation=MEAN),
            *report_measurements(finding),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=LESION_TYPE, value=lesion_code(finding.lesion)),
            hd.sr.QualitativeEvaluation(name=BONY_METASTASIS,
                                        value=metastasis_value(finding.lesion)),
        ],
    )


def no_vertebra_group(algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 stating that the algorithm found no vertebra: (51282000, SCT, "Vertebra") = Absent.

    TID 1500 needs at least one measurement group, and "nothing found" is a result a reader
    must be able to tell from "not analysed".
    """
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="vertebrae"),
        finding_type=VERTEBRA,
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=VERTEBRA, value=ABSENT)],
    )


def outline_region(outline: Outline, series: CTSeries) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """The outline as viewers draw it: SCOORD on the CT image it lies on, SCOORD3D on a resampled volume.

    A closed POLYLINE either way (OHIF draws POLYLINE, not POLYGON). The SCOORD's SELECTED
    FROM item names the CT instance (and the frame of an Enhanced CT); a resampled volume's
    slice lies on no source image, so its outline is given in the frame of reference instead.
    """
    if series.resampled:
        return hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
                                   graphic_data=outline.patient(series.geometry),
                                   frame_of_reference_uid=series.source_images[0].FrameOfReferenceUID)
    headers = reference_headers(series)
    multiframe = len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1)) > 1
    header = headers[0] if multiframe else headers[outline.k]
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=header.SOPClassUID, referenced_sop_instance_uid=header.SOPInstanceUID,
        referenced_frame_numbers=[_frame_number(series, outline.k)] if multiframe else None)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline.scoord(), source_image=source,
        pixel_origin_interpretation=hd.sr.PixelOriginInterpretationValues.FRAME if multiframe else None)


def _frame_number(series: CTSeries, k: int) -> int:
    """The 1-based number of the stored frame of an Enhanced CT that slice ``k`` of ``series.hu`` is."""
    if series.frame_numbers:
        return int(series.frame_numbers[k])
    positions = np.array([fg.PlanePositionSequence[0].ImagePositionPatient
                          for fg in series.source_images[0].PerFrameFunctionalGroupsSequence], float)
    return int(np.argmin(np.linalg.norm(positions - series.geometry.frame_position(k), axis=1))) + 1


MARKER_RADIUS_PX = 2.0
"""Radius of the circle that names a vertebra at the top of its outline."""


def outline_group(finding: VertebraFinding, segment: Dataset, outline: Outline, series: CTSeries,
                  algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one vertebra: its outline on the slice through its centre, its level and lesion class.

    The group carries the SEG segment's Tracking UID, as the TID 1411 group of the same
    vertebra does: it is one tracked finding. OHIF 3.13 cannot show a group without image
    coordinates (it fails on the TID 1411 groups alone) and merges the groups of one
    Tracking UID: the outline is drawn with the volume, mean HU and other numbers of both.
    """
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.get("TrackingUID") or hd.UID(),
                                                     identifier=f"vertebra-{finding.level}"),
        referenced_region=outline_region(outline, series),
        finding_type=VERTEBRA,
        finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code(finding.level))],
        algorithm_id=algorithm,
        qualitative_evaluations=_lesion_evaluations(finding),
    )


def _lesion_evaluations(finding: VertebraFinding) -> list[hd.sr.QualitativeEvaluation]:
    return [hd.sr.QualitativeEvaluation(name=LESION_TYPE, value=lesion_code(finding.lesion)),
            hd.sr.QualitativeEvaluation(name=BONY_METASTASIS, value=metastasis_value(finding.lesion))]


def name_region(outline: Outline, series: CTSeries) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """A small circle at the top of the outline (SCOORD on its CT image; a SCOORD3D point when resampled)."""
    top = outline.rc[np.argmin(outline.rc[:-1, 0])]
    if series.resampled:
        return hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                   graphic_data=Outline(outline.k, top[None, :]).patient(series.geometry),
                                   frame_of_reference_uid=series.source_images[0].FrameOfReferenceUID)
    region = outline_region(outline, series)
    column, row = top[1] + 0.5, top[0] + 0.5
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
                             graphic_data=np.array([[column, row], [column + MARKER_RADIUS_PX, row]]),
                             source_image=_source_of(region), pixel_origin_interpretation=_pixel_origin_of(region))


def _source_of(region: hd.sr.ImageRegion) -> hd.sr.SourceImageForRegion:
    reference = region.ContentSequence[0].ReferencedSOPSequence[0]
    frames = reference.get("ReferencedFrameNumber")
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=reference.ReferencedSOPClassUID,
        referenced_sop_instance_uid=reference.ReferencedSOPInstanceUID,
        referenced_frame_numbers=[int(frames)] if frames is not None else None)


def _pixel_origin_of(region: hd.sr.ImageRegion):
    value = region.get("PixelOriginInterpretation")
    return hd.sr.PixelOriginInterpretationValues(value) if value else None


def name_group(finding: VertebraFinding, segment: Dataset, outline: Outline, series: CTSeries,
               algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 naming the vertebra: a small marker at the top of its outline, its level and lesion class.

    A tracked finding of its own ("L1 vertebra", a UID derived from the segment's) with no
    number: OHIF shows five label lines, numbers first and the finding site last, so the
    outline's numbers would push the level out of its label; this one's label is the level
    and the lesion class (``codes.viewer_label``, its first Finding Site; the SCT vertebra
    code follows it).
    """
    segment_uid = str(segment.get("TrackingUID") or hd.UID())
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[segment_uid, "name"]),
                                                     identifier=f"{finding.level} vertebra"),
        referenced_region=name_region(outline, series),
        finding_type=VERTEBRA,
        finding_sites=[hd.sr.FindingSite(anatomic_location=viewer_label(finding.level, finding.lesion)),
                       hd.sr.FindingSite(anatomic_location=vertebra_code(finding.level))],
        algorithm_id=algorithm,
        qualitative_evaluations=_lesion_evaluations(finding),
    )


def height_groups(finding: VertebraFinding, segment: Dataset, series: CTSeries,
                  algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410 per drawn height of one vertebra: a 2-point SCOORD3D POLYLINE with its length (mm).

    Each is a tracked finding of its own ("L1 anterior height", a UID derived from the
    segment's): sharing the outline's Tracking UID would merge three lines into one
    measurement in OHIF. The line's end points are the report's (``height_lines_mm``).
    """
    lines = (finding.measurements or {}).get("height_lines_mm") or {}
    heights = (finding.measurements or {}).get("heights_mm") or {}
    frame_uid = series.source_images[0].FrameOfReferenceUID
    segment_uid = str(segment.get("TrackingUID") or hd.UID())
    groups = []
    for position, points in lines.items():
        if heights.get(position) is None:
            continue
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[segment_uid, "height", position]),
                identifier=f"{finding.level} {position} height"),
            referenced_region=hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
                                                  graphic_data=np.asarray(points, dtype=float),
                                                  frame_of_reference_uid=frame_uid),
            finding_type=VERTEBRA,
            finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code(finding.level))],
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=POSITIONS[position], value=float(heights[position]),
                                            unit=MILLIMETRE)]))
    return groups


def change_group(level: str, record: dict, prior_study_uid: str | None, note: str | None,
                 algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one level's change since the prior study, the prior referenced by its Study Instance UID."""
    compared = record.get("compared", False)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["change", level, str(prior_study_uid)]),
            identifier=f"{level} change since prior study"),
        finding_type=VERTEBRA,
        finding_sites=[hd.sr.FindingSite(anatomic_location=vertebra_code(level))],
        algorithm_id=algorithm,
        measurements=change_measurements(record) if compared else None,
        qualitative_evaluations=change_evaluations(record, PRESENT, ABSENT) if compared else None,
    )
    if prior_study_uid:
        group[0].ContentSequence.append(hd.sr.UIDRefContentItem(
            name=PRIOR_STUDY, value=prior_study_uid, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    text = " ".join(t for t in (note, None if compared else record.get("reason")) if t)
    if text:
        add_comment(group, text)
    return group


def change_groups(change: dict, algorithm: hd.sr.AlgorithmIdentification
                  ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One ``change_group`` per level of the two studies, head to feet; the first says which prior and warns."""
    prior = (change.get("prior") or {}).get("study_instance_uid")
    note = [f"Compared with the prior study {prior}." if prior else "Compared with a prior study.",
            *change.get("warnings", []), *change.get("notes", [])]
    if change.get("only_now"):
        note.append(f"Not in the prior study: {', '.join(change['only_now'])}.")
    if change.get("only_before"):
        note.append(f"Only in the prior study: {', '.join(change['only_before'])}.")
    levels = sorted(change.get("vertebrae", {}), key=lambda lv: LEVELS.index(lv) if lv in LEVELS else 99)
    return [change_group(level, change["vertebrae"][level], prior, " ".join(note) if i == 0 else None, algorithm)
            for i, level in enumerate(levels)]


def add_comment(group, text: str) -> None:
    """Append (121106, DCM, "Comment") = ``text`` to a measurement group, as a TEXT qualitative evaluation.

    Used for what a reader must know about the whole report: why no vertebra is reported,
    or that the vertebra levels are uncertain (``anatomy.naming_note``).
    """
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=text[:10240], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def _check_inputs(series: CTSeries, seg: Dataset | None, findings: list[VertebraFinding],
                  predecessor: Dataset | None) -> None:
    if bool(findings) != (seg is not None):
        raise DicomWriteError(
            f"series {series.series_instance_uid}: {len(findings)} finding(s) but "
            f"{'a' if seg is not None else 'no'} SEG; findings need their SEG, and no finding means no SEG"
        )
    if seg is not None and seg.StudyInstanceUID != series.study_instance_uid:
        raise DicomWriteError(f"SEG {seg.SOPInstanceUID} belongs to study {seg.StudyInstanceUID}, "
                              f"not to the series' study {series.study_instance_uid}")
    if predecessor is not None and predecessor.get("StudyInstanceUID") != series.study_instance_uid:
        raise DicomWriteError(f"predecessor SR {predecessor.get('SOPInstanceUID')} belongs to another study")


def build_sr(series: CTSeries, seg: Dataset | None, findings: list[VertebraFinding], model: ModelIdentity, *,
             predecessor: Dataset | None = None, series_number: int = 901,
             outlines: dict[int, Outline] | None = None, comment: str | None = None,
             change: dict | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``findings`` (already numbered by ``build_seg``) on ``series`` and its ``seg``.

    With no vertebra found, pass ``seg=None`` and ``findings=[]``: the report then says so
    (``no_vertebra_group``). ``outlines`` (finding label -> its ``contours.centre_outline``)
    adds one TID 1410 group per outlined vertebra after the TID 1411 groups, for viewers
    that draw SCOORD/SCOORD3D (``outline_group``); measured heights are drawn
    (``height_groups``); ``change`` (``summary["change"]``) adds the change since the prior
    study (``change_groups``). Raises DicomWriteError when a finding
    does not match its SEG segment or the objects belong to different studies.
    """
    _check_inputs(series, seg, findings, predecessor)
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                              parameters=[f"sha256={model.sha256}"])
    labelled = False  # a name marker uses Cornerstone's free-text scheme, declared only then
    if seg is None:
        groups = [no_vertebra_group(algorithm)]
    else:
        segments = _segments(seg)
        ordered = sorted(findings, key=lambda f: f.segment_number)
        groups = [measurement_group(f, _check_finding(f, segments, seg), seg, series, algorithm) for f in ordered]
        outlined = [f for f in ordered if outlines and f.label in outlines]
        groups += [outline_group(f, segments[f.segment_number], outlines[f.label], series, algorithm) for f in outlined]
        groups += [name_group(f, segments[f.segment_number], outlines[f.label], series, algorithm) for f in outlined]
        labelled = bool(outlined)
        for f in ordered:
            groups += height_groups(f, segments[f.segment_number], series, algorithm)
        if change:
            groups += change_groups(change, algorithm)
    if comment:
        add_comment(groups[0], comment)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=CT_PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*reference_headers(series), *([seg] if seg is not None else [])],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description="Vertebral metastasis report (spine-node)",
        coding_schemes=[coding_scheme_identification(), *([free_text_scheme_identification()] if labelled else [])],
        **character_set(series),
    )
