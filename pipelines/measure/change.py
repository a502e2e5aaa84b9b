"""Change since the prior study of the same patient: lesion volumes, new and vanished lesions, heights, collapse.

Vertebrae are matched by level. Where the two segmentations disagree on a level (the
vertebra's volume differs by more than ``VOLUME_DISAGREEMENT``, beyond what a collapse of
its body since the prior explains), that level is not compared and the change says so,
rather than compare the wrong bones. A prior made by another model or version is compared
with a warning naming both.

The patient is recognised by ``patient_key``: an HMAC-SHA256 of PatientID and
IssuerOfPatientID under a secret of the node's, so that SQL and summaries never hold the
identifier itself. A patient without an issuer gets a key only when the caller allows it.
"""
from __future__ import annotations

import hashlib
import hmac

from pipelines.lesions import LESION_KINDS

VOLUME_DISAGREEMENT = 0.35
HEIGHT_KEYS = ("anterior", "middle", "posterior")
VOLUME_PRECISION_NOTE = ("Lesion volume change: on lesions inserted into real CT, a lesion volume reads within 6-14 % "
                         "of the truth on average and a growth within 5-19 % (1-3 mm slices; lytic growth reads "
                         "about 17 % low; benchmarks/lesion_real_bone.py --volumes, "
                         "benchmarks/lesion_growth_real_bone.py), so a change of that order may be measurement error.")
"""Said with every change that compares lesion volumes: how far a single volume can be trusted on real bone."""


def patient_key(header, secret: bytes, allow_without_issuer: bool = False) -> str | None:
    """The pseudonymous key of the patient a series belongs to, or None when it cannot be matched safely."""
    patient = str(getattr(header, "PatientID", "") or "").strip()
    issuer = str(getattr(header, "IssuerOfPatientID", "") or "").strip()
    if not patient or not secret or (not issuer and not allow_without_issuer):
        return None
    return hmac.new(secret, f"{issuer}\x00{patient}".encode(), hashlib.sha256).hexdigest()


def compare(current: dict, prior: dict) -> dict:
    """The ``change`` part of a summary: ``current`` and ``prior`` are two summaries of the same patient."""
    now = {v["level"]: v for v in current.get("vertebrae", [])}
    before = {v["level"]: v for v in prior.get("vertebrae", [])}
    levels = [level for level in now if level in before]
    per_level = {level: _vertebra_change(now[level], before[level]) for level in levels}
    out = {"prior": {k: prior.get(k) for k in ("study_instance_uid", "series_instance_uid", "sr_sop_instance_uid")},
           "vertebrae": per_level,
           "new_lesions": [lv for lv, c in per_level.items() if c.get("lesion_change") == "new"],
           "lesions_gone": [lv for lv, c in per_level.items() if c.get("lesion_change") == "gone"],
           "new_collapse": [lv for lv, c in per_level.items() if c.get("new_collapse")],
           "only_now": [lv for lv in now if lv not in before], "only_before": [lv for lv in before if lv not in now],
           "warnings": _model_warnings(current.get("model") or {}, prior.get("model") or {}),
           "notes": [VOLUME_PRECISION_NOTE] if any(c.get("lesion_change") == "persisting"
                                                   and c.get("lesion_volume_change_ml") is not None
                                                   for c in per_level.values()) else []}
    return out


def _vertebra_change(now: dict, before: dict) -> dict:
    if _disagree(now, before):
        return {"compared": False, "reason": (f"the segmentations disagree on this level (volume {before.get('volume_ml')}"
                                              f" ml before, {now.get('volume_ml')} ml now): not compared")}
    change = {"compared": True, "lesion_before": before.get("lesion"), "lesion_now": now.get("lesion")}
    was, is_ = before.get("lesion") in LESION_KINDS, now.get("lesion") in LESION_KINDS
    change["lesion_change"] = "new" if is_ and not was else "gone" if was and not is_ else \
        "persisting" if was else "none"
    v0, v1 = before.get("lesion_volume_ml"), now.get("lesion_volume_ml")
    if v0 is not None and v1 is not None:
        # kept to 1 mm3, as the volumes are: a change of 0.2 ml is not rounded 3 % off
        change["lesion_volume_change_ml"] = round(v1 - v0, 3)
        change["lesion_volume_change_pct"] = round(100.0 * (v1 - v0) / v0, 1) if v0 > 0 else None
    h0, h1 = before.get("heights_mm"), now.get("heights_mm")
    if h0 and h1:
        change["height_change_mm"] = {k: round(h1[k] - h0[k], 1) for k in HEIGHT_KEYS}
    g0, g1 = before.get("genant_grade"), now.get("genant_grade")
    change["new_collapse"] = bool(g0 is not None and g1 is not None and g1 >= 1 and g1 > g0)
    return change


def _disagree(now: dict, before: dict) -> bool:
    """Whether the two segmentations of a level differ too much in volume to be the same bone.

    A collapse since the prior takes volume away with the height it takes: the difference
    is judged both plainly and against the prior's volume scaled by the body's mean height
    now over then (``_height_ratio``), and the smaller counts. A crush to half the height
    (seed 5 of ``benchmarks/spine_report_phantoms.py``: 52 ml before, 32 ml after) is then
    compared as the new collapse it is, while a vertebra cut by the scan or mislabelled,
    whose heights did not fall, still disagrees. Only a vertebra the current study itself
    grades as fractured (Genant 1 or more) is scaled so: a segmentation that lost part of a
    normal vertebra is no collapse.
    """
    a, b = now.get("volume_ml") or 0.0, before.get("volume_ml") or 0.0
    if min(a, b) <= 0:
        return True
    plain = abs(a - b) / max(a, b)
    ratio = _height_ratio(now, before) if (now.get("genant_grade") or 0) >= 1 else 1.0
    collapsed = abs(a - b * ratio) / max(a, b * ratio) if ratio < 1.0 else plain
    return min(plain, collapsed) > VOLUME_DISAGREEMENT


def _height_ratio(now: dict, before: dict) -> float:
    """The body's mean height now over then (1.0 when either was not measured)."""
    h0, h1 = before.get("heights_mm"), now.get("heights_mm")
    if not h0 or not h1 or any(h0.get(k) is None or h1.get(k) is None for k in HEIGHT_KEYS):
        return 1.0
    then = sum(h0[k] for k in HEIGHT_KEYS)
    return sum(h1[k] for k in HEIGHT_KEYS) / then if then > 0 else 1.0


def _model_warnings(now: dict, before: dict) -> list[str]:
    if (now.get("name"), now.get("version")) == (before.get("name"), before.get("version")):
        return []
    return [f"the prior was analysed by {before.get('name')} {before.get('version')}, this study by "
            f"{now.get('name')} {now.get('version')}: differences may come from the models"]
