"""The spine report in words, for what people read without an SR viewer: the key images and the PDF page.

The SR codes every number (``report_items``) and the summary gives each with its reason;
a review station that shows only pictures and documents gets these words instead, made
here once for both:

* ``grade_words`` and ``collapse_words``: the Genant grade and morphology ("2 wedge", "0"),
  and of a fractured body only ("Genant 2 wedge");
* ``change_words``: one level's change since the prior study ("new lesion", "lesion +0.32 ml
  (+30 %)", "new collapse", "not compared");
* ``level_notes``: both, per level, for the key images' listing;
* ``density_line`` and ``prior_line``: the series' bone-density flag, and which prior study
  the change is against, with the warnings of ``change.compare``.

Nothing here names the patient: levels, numbers and UIDs only.
"""
from __future__ import annotations

from pipelines.records import VertebraFinding

NOT_ASSESSED_SINS = ("SINS: CT components only (location, bone lesion quality, vertebral body collapse, "
                     "posterolateral involvement); pain and spinal alignment are not assessed.")


def grade_words(measurements: dict | None) -> str:
    """The Genant grade with its morphology ("2 wedge", "0"), or "" where it was not measured."""
    grade = (measurements or {}).get("genant_grade")
    if grade is None:
        return ""
    morphology = (measurements or {}).get("genant_morphology")
    return f"{grade}" + (f" {morphology}" if grade and morphology else "")


def collapse_words(measurements: dict | None) -> str:
    """"Genant <grade> <morphology>" for a fractured body (grade 1-3), else ""."""
    return f"Genant {grade_words(measurements)}" if (measurements or {}).get("genant_grade") else ""


def change_words(record: dict | None) -> str:
    """One level's change since the prior study in a few words ("" without a prior for this level)."""
    if not record:
        return ""
    if not record.get("compared", True):
        return "not compared"
    words = []
    lesion = record.get("lesion_change")
    if lesion == "new":
        words.append("new lesion")
    elif lesion == "gone":
        words.append("lesion gone")
    elif lesion == "persisting" and record.get("lesion_volume_change_ml") is not None:
        ml, pct = record["lesion_volume_change_ml"], record.get("lesion_volume_change_pct")
        words.append(f"lesion {ml:+.2f} ml" + (f" ({pct:+.0f} %)" if pct is not None else ""))
    if record.get("new_collapse"):
        words.append("new collapse")
    return ", ".join(words) or "no change"


def level_notes(findings: list[VertebraFinding], change: dict | None) -> dict[str, str]:
    """Per level with something to say: its collapse and its change since the prior, joined."""
    per_level = (change or {}).get("vertebrae") or {}
    notes = {}
    for finding in findings:
        words = [w for w in (collapse_words(finding.measurements), change_words(per_level.get(finding.level))) if w]
        if words:
            notes[finding.level] = "; ".join(words)
    return notes


def density_line(bone_density: dict | None) -> str:
    """The bone-density flag: its site, HU, threshold and source, and the contrast correction."""
    if not bone_density:
        return "Bone density: not assessed."
    if bone_density.get("flag") is None:
        return f"Bone density: not assessed ({bone_density.get('reason') or 'no site measured'})."
    return (f"Bone density: {bone_density['flag']} ({bone_density['site']} trabecular {bone_density['trabecular_hu']:g}"
            f" HU, threshold {bone_density['threshold_hu']:g} HU, {bone_density['source']}; "
            f"{bone_density['contrast']}).")


def prior_line(change: dict | None) -> str | None:
    """Which prior study the change is against, with the warnings; None without a prior."""
    if change is None:
        return None
    uid = (change.get("prior") or {}).get("study_instance_uid") or "unknown"
    line = f"Change since the prior study {uid}."
    for key, words in (("only_now", "not in the prior"), ("only_before", "only in the prior")):
        if change.get(key):
            line += f" {words.capitalize()}: {', '.join(change[key])}."
    return " ".join([line, *change.get("warnings", []), *change.get("notes", [])])
