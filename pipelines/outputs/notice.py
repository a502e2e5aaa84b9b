"""The "not processed" notice: a small Comprehensive SR in the sender's study saying a series got no results, and why.

A series that is refused (too few slices, not a CT, a gap...) or whose job fails for good
otherwise leaves nothing in the PACS: the radiologist cannot tell "not yet" from "never".
This SR says it where they look, in the source study, in its own series (number 905,
description "NOT PROCESSED by spine-node"):

* title (18748-4, LN, "Diagnostic imaging report"), a device observer (spine-node);
* TEXT (121071, DCM, "Finding") = "Not processed";
* TEXT (121106, DCM, "Comment") = the reason (its machine code first), then, where the
  configured model is a demonstration model, a second Comment with its "not for clinical use" line;
* UIDREF (112002, DCM, "Series Instance UID") = the series it is about, and every stored
  instance of that series in CurrentRequestedProcedureEvidenceSequence.

Patient and study attributes are copied from one stored header of the series; nothing
here logs them. ``wants_notice`` says which series deserve one: never a series made only of
derived objects (SR, SEG, ... or spine-node's own outputs), so that a PACS that sends the
node's objects back cannot start a loop of notices about notices.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pipelines.errors import DicomWriteError
from pipelines.outputs.seg import MANUFACTURER, SOFTWARE_VERSION, TYPE2_COPIED

TITLE = hd.sr.CodedConcept.from_code(codes.LN.DiagnosticImagingReport)  # 18748-4 LN
FINDING = hd.sr.CodedConcept.from_code(codes.DCM.Finding)               # 121071 DCM
COMMENT = hd.sr.CodedConcept.from_code(codes.DCM.Comment)               # 121106 DCM
SERIES_UID = hd.sr.CodedConcept.from_code(codes.DCM.SeriesInstanceUID)  # 112002 DCM
NOT_PROCESSED = "Not processed"
SERIES_NUMBER = 905
SERIES_DESCRIPTION = "NOT PROCESSED by spine-node"
DERIVED_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "REG", "RTSTRUCT", "DOC"})
"""Modalities of derived objects: a series of nothing else gets no notice (as ``pipelines.run.NOT_IMAGES``)."""
STATES = {"rejected": "the series was refused", "failed": "processing failed"}


def wants_notice(modalities: Sequence[str | None], manufacturer: str | None) -> bool:
    """Whether a series that got no results deserves a notice: not one of derived objects only, nor one of ours."""
    if manufacturer == MANUFACTURER:
        return False
    return any((modality or "").upper() not in DERIVED_MODALITIES for modality in modalities)


def notice_text(state: str, reason: str) -> str:
    """The Comment of the notice: what happened and why, e.g. "the series was refused: too_few_slices: ..."."""
    what = STATES.get(state)
    if what is None:
        raise DicomWriteError(f"a notice is for a rejected or failed series, not for state {state!r}")
    return f"{NOT_PROCESSED} by spine-node: {what}: {reason or 'no reason recorded'}"[:1024]


def build_notice(source: Dataset, instances: Sequence[tuple[str, str]], series_instance_uid: str, *, state: str,
                 reason: str, disclaimer: str | None = None) -> hd.sr.ComprehensiveSR:
    """The notice for the series ``series_instance_uid``; ``source``: one of its stored headers (patient, study).

    ``instances``: (SOP Class UID, SOP Instance UID) of every stored instance of the series,
    listed as evidence; ``state``: 'rejected' or 'failed'; ``reason``: the job's error (no
    patient data); ``disclaimer``: the model's "not for clinical use" line, or None.
    """
    header = _header(source)
    text = notice_text(state, reason)
    try:
        return _build(header, instances, series_instance_uid, text, disclaimer)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom refused the header: say what, not its values
        raise DicomWriteError(f"the notice for series {series_instance_uid} cannot be built from the series' "
                              f"header ({type(exc).__name__} in highdicom)") from exc


def _build(header: Dataset, instances: Sequence[tuple[str, str]], series_instance_uid: str, text: str,
           disclaimer: str | None) -> hd.sr.ComprehensiveSR:
    content = hd.sr.ContainerContentItem(name=TITLE, template_id=None)
    items = [hd.sr.TextContentItem(FINDING, NOT_PROCESSED, relationship_type="CONTAINS"),
             hd.sr.TextContentItem(COMMENT, text, relationship_type="CONTAINS"),
             hd.sr.UIDRefContentItem(SERIES_UID, series_instance_uid, relationship_type="CONTAINS")]
    if disclaimer:
        items.append(hd.sr.TextContentItem(COMMENT, disclaimer[:1024], relationship_type="CONTAINS"))
    content.ContentSequence = [*_observer(), *items]
    return hd.sr.ComprehensiveSR(
        evidence=[header, *_evidence(header, instances, series_instance_uid)],
        content=content,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        specific_character_set=header.get("SpecificCharacterSet") or None,
        software_versions=SOFTWARE_VERSION,
    )


def _header(source: Dataset) -> Dataset:
    """A copy of the source header with the Type 2 patient/study attributes present (empty when unknown)."""
    if not source.get("StudyInstanceUID"):
        raise DicomWriteError("the series has no StudyInstanceUID: a notice cannot be placed in its study")
    header = Dataset(dict(source.items()))
    for keyword, vr in TYPE2_COPIED:
        if keyword not in header:
            header.add_new(keyword, vr, None)
    meta = getattr(source, "file_meta", None)
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not header.get(keyword) and meta is not None and meta.get(meta_keyword):
            header.add_new(keyword, "UI", meta.get(meta_keyword))
    if not header.get("SOPClassUID") or not header.get("SOPInstanceUID"):
        raise DicomWriteError("the series' header has no SOP Class or SOP Instance UID: it cannot be referenced")
    return header


def _evidence(header: Dataset, instances: Sequence[tuple[str, str]], series_instance_uid: str) -> list[Dataset]:
    """One small data set per stored instance besides ``header``'s (highdicom lists them as evidence)."""
    evidence = []
    for sop_class, sop_instance in dict.fromkeys(instances):
        if sop_instance == header.SOPInstanceUID:
            continue
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = header.StudyInstanceUID, series_instance_uid
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
        evidence.append(ds)
    return evidence


def _observer() -> list:
    """spine-node itself as the device observer (no model ran, or none finished)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["spine-node notice observer"]), name="spine-node",
            manufacturer_name=MANUFACTURER, model_name=SOFTWARE_VERSION[:64]))
    return list(hd.sr.ObservationContext(observer_device_context=device))
