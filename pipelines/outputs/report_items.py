"""The spine report's numbers as TID 1500 content: heights, height loss, Genant grade, trabecular HU, SINS.

Added to each vertebra's TID 1411 group (``sr.measurement_group``) from
``VertebraFinding.measurements`` (``pipelines.measure``). Standard codes where they exist
(DCM Attenuation Coefficient with SCT Median, UCUM units);
declared private codes of the report's scheme (``codes.PRIVATE_SCHEME``) where not (no
standard concept names an anterior, middle or posterior vertebral body height). A
number that could not be measured is left out: the summary gives its reason.
"""
from __future__ import annotations

import highdicom as hd
from highdicom.sr.coding import CodedConcept
from pydicom.sr.codedict import codes

from pipelines.outputs.codes import ATTENUATION, HOUNSFIELD_UNIT, PRIVATE_SCHEME
from pipelines.records import VertebraFinding

MEDIAN = CodedConcept.from_code(codes.SCT.Median)           # 373099004 SCT
MILLIMETRE = CodedConcept.from_code(codes.UCUM.Millimeter)
PERCENT = CodedConcept.from_code(codes.UCUM.Percent)
NO_UNIT = CodedConcept("1", "UCUM", "no units")
POSITIONS = {"anterior": CodedConcept("VML-101", PRIVATE_SCHEME, "Anterior vertebral body height"),
             "middle": CodedConcept("VML-102", PRIVATE_SCHEME, "Middle vertebral body height"),
             "posterior": CodedConcept("VML-103", PRIVATE_SCHEME, "Posterior vertebral body height")}
HEIGHT_LOSS = CodedConcept("VML-104", PRIVATE_SCHEME, "Vertebral body height loss")
GENANT_GRADE = CodedConcept("VML-105", PRIVATE_SCHEME, "Genant semi-quantitative fracture grade")
LESION_VOLUME = CodedConcept("VML-106", PRIVATE_SCHEME, "Metastatic lesion volume")
SINS_PARTIAL = CodedConcept("VML-107", PRIVATE_SCHEME, "SINS partial score (CT components)")
PRIVATE_CODES = [*POSITIONS.values(), HEIGHT_LOSS, GENANT_GRADE, LESION_VOLUME, SINS_PARTIAL]


def report_measurements(finding: VertebraFinding) -> list[hd.sr.Measurement]:
    """The measured numbers of one vertebra (those that could be measured)."""
    m = finding.measurements or {}
    items = []
    for position, value in (m.get("heights_mm") or {}).items():
        items.append(hd.sr.Measurement(name=POSITIONS[position], value=float(value), unit=MILLIMETRE))
    simple = [(HEIGHT_LOSS, m.get("height_loss_pct"), PERCENT, None),
              (GENANT_GRADE, m.get("genant_grade"), NO_UNIT, None),
              (ATTENUATION, m.get("trabecular_hu"), HOUNSFIELD_UNIT, MEDIAN),
              (LESION_VOLUME, m.get("lesion_volume_ml"), CodedConcept("ml", "UCUM", "milliliter"), None),
              (SINS_PARTIAL, (m.get("sins") or {}).get("partial_score"), NO_UNIT, None)]
    for name, value, unit, derivation in simple:
        if value is not None:
            items.append(hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation))
    return items


# ----------------------------------------------------------------------------- change since the prior study
LESION_VOLUME_CHANGE = CodedConcept("VML-108", PRIVATE_SCHEME, "Change in metastatic lesion volume since prior study")
LESION_VOLUME_CHANGE_PCT = CodedConcept("VML-109", PRIVATE_SCHEME,
                                        "Relative change in metastatic lesion volume since prior study")
HEIGHT_CHANGE = {"anterior": CodedConcept("VML-110", PRIVATE_SCHEME, "Change in anterior vertebral body height"),
                 "middle": CodedConcept("VML-111", PRIVATE_SCHEME, "Change in middle vertebral body height"),
                 "posterior": CodedConcept("VML-112", PRIVATE_SCHEME, "Change in posterior vertebral body height")}
LESION_CHANGE = CodedConcept("VML-113", PRIVATE_SCHEME, "Metastatic lesion change since prior study")
LESION_CHANGE_VALUES = {"new": CodedConcept("VML-114", PRIVATE_SCHEME, "New lesion"),
                        "gone": CodedConcept("VML-115", PRIVATE_SCHEME, "Lesion no longer seen"),
                        "persisting": CodedConcept("VML-116", PRIVATE_SCHEME, "Lesion persisting"),
                        "none": CodedConcept("VML-117", PRIVATE_SCHEME, "No lesion at either study")}
NEW_COLLAPSE = CodedConcept("VML-118", PRIVATE_SCHEME, "New vertebral body collapse since prior study")
PRIOR_STUDY = CodedConcept.from_code(codes.DCM.StudyInstanceUID)  # 110180 DCM
PRIVATE_CODES += [LESION_VOLUME_CHANGE, LESION_VOLUME_CHANGE_PCT, *HEIGHT_CHANGE.values(), LESION_CHANGE,
                  *LESION_CHANGE_VALUES.values(), NEW_COLLAPSE]


def change_measurements(change: dict) -> list[hd.sr.Measurement]:
    """The numbers of one level's change (``change.compare``'s per-vertebra record) that could be computed."""
    items = []
    if change.get("lesion_volume_change_ml") is not None:
        items.append(hd.sr.Measurement(name=LESION_VOLUME_CHANGE, value=float(change["lesion_volume_change_ml"]),
                                       unit=CodedConcept("ml", "UCUM", "milliliter")))
    if change.get("lesion_volume_change_pct") is not None:
        items.append(hd.sr.Measurement(name=LESION_VOLUME_CHANGE_PCT, value=float(change["lesion_volume_change_pct"]),
                                       unit=PERCENT))
    for position, value in (change.get("height_change_mm") or {}).items():
        items.append(hd.sr.Measurement(name=HEIGHT_CHANGE[position], value=float(value), unit=MILLIMETRE))
    return items


def change_evaluations(change: dict, present: CodedConcept, absent: CodedConcept) -> list[hd.sr.QualitativeEvaluation]:
    """The lesion change (new, gone, persisting, none) and whether the body newly collapsed (Present / Absent)."""
    items = []
    if change.get("lesion_change") in LESION_CHANGE_VALUES:
        items.append(hd.sr.QualitativeEvaluation(name=LESION_CHANGE, value=LESION_CHANGE_VALUES[change["lesion_change"]]))
    if "new_collapse" in change:
        items.append(hd.sr.QualitativeEvaluation(name=NEW_COLLAPSE, value=present if change["new_collapse"] else absent))
    return items
