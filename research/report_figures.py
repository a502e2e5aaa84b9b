"""The spine report's must-show figures on report phantoms, measured on their ground-truth label maps.

The network is left out on purpose: these figures judge the measurements
(``pipelines.measure``), given the right vertebrae, so they are fast and deterministic.
Each phantom (``research.phantoms.report``) is measured as acquired in several ways, the
same voxels under another geometry: ``HFS`` (as drawn), ``FFS`` (slices in the opposite
order), ``HFP`` (prone: both in-plane axes flipped) and ``OBLIQUE`` (the patient frame
turned 23 degrees). The lesion class and lesion volume come from the production classifier
(``pipelines.process.classify_lesions``) on the same labels.

    .venv/bin/python benchmarks/spine_report_phantoms.py --n 12 --seed 1
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.levels import PAPER
from pipelines.measure.change import compare
from pipelines.process import classify_lesions, vertebra_findings
from pipelines.measure.report import measure_spine
from pipelines.records import Geometry, VertebraFinding
from research.phantoms.generator import Phantom, make_phantom
from research.phantoms.report import FollowUp, ReportDesign, followup_pair

ACQUISITIONS = ("HFS", "FFS", "HFP", "OBLIQUE")
HEIGHTS = ("anterior", "middle", "posterior")
SINS_COMPONENTS = ("location", "bone_lesion_quality", "vertebral_body_collapse", "posterolateral_involvement")


def rotation(axis, degrees: float) -> np.ndarray:
    """The rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


OBLIQUE = rotation((1.0, 0.6, 0.3), 23.0)


def acquired(phantom: Phantom, acquisition: str) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """HU, labels and the geometry of ``phantom`` as acquired by ``acquisition`` (one of ``ACQUISITIONS``)."""
    g = phantom.grid
    origin, spacing = np.array(g.origin, float), tuple(float(s) for s in g.spacing)
    last = origin + (np.array(g.shape[::-1]) - 1) * np.array(spacing[::-1])  # (x, y, z) of the last voxel
    hu, labels = phantom.image.astype(np.float32), phantom.labels
    if acquisition == "HFS":
        return hu, labels, Geometry(origin, np.eye(3), spacing)
    if acquisition == "FFS":
        return hu[::-1].copy(), labels[::-1].copy(), Geometry(np.array([*origin[:2], last[2]]),
                                                               np.diag([1.0, 1.0, -1.0]), spacing)
    if acquisition == "HFP":
        return (hu[:, ::-1, ::-1].copy(), labels[:, ::-1, ::-1].copy(),
                Geometry(np.array([last[0], last[1], origin[2]]), np.diag([-1.0, -1.0, 1.0]), spacing))
    if acquisition == "OBLIQUE":
        centre = 0.5 * (origin + last)
        return hu, labels, Geometry(centre + OBLIQUE @ (origin - centre), OBLIQUE, spacing)
    raise ValueError(f"acquisition must be one of {ACQUISITIONS}, not {acquisition!r}")


def measure(phantom: Phantom, acquisition: str = "HFS") -> list[VertebraFinding]:
    """The report's findings on the phantom's own labels, as the pipeline makes them after segmentation."""
    hu, labels, geometry = acquired(phantom, acquisition)
    findings = vertebra_findings(hu, labels, geometry.spacing, PAPER)
    classify_lesions(hu, labels, geometry.spacing, findings)
    measure_spine(hu, labels, geometry, findings)
    return findings


@dataclass
class Figures:
    """Errors and counts gathered over phantoms and acquisitions."""

    height_errors: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HEIGHTS})
    height_spread: list[float] = field(default_factory=list)  # per vertebra and height: max - min over acquisitions
    fractured: list[bool] = field(default_factory=list)        # grade and morphology right, per fractured vertebra
    normal: list[bool] = field(default_factory=list)           # grade 0, per intact vertebra
    trabecular_errors: list[float] = field(default_factory=list)
    sins: list[bool] = field(default_factory=list)             # every CT component right, per lesion vertebra
    lesion_calls: list[bool] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        def pct(flags):
            return round(100.0 * float(np.mean(flags)), 1) if flags else None
        return {"height_mae_mm": {k: round(float(np.mean(v)), 3) for k, v in self.height_errors.items() if v},
                "height_max_error_mm": round(max((max(v) for v in self.height_errors.values() if v), default=0), 2),
                "height_spread_over_acquisitions_mm": round(max(self.height_spread, default=0.0), 2),
                "genant_correct_on_fractured_pct": pct(self.fractured), "fractured_vertebrae": len(self.fractured),
                "grade_0_on_normal_pct": pct(self.normal), "normal_vertebrae": len(self.normal),
                "trabecular_hu_max_error": round(max(self.trabecular_errors, default=0.0), 1),
                "trabecular_hu_mae": round(float(np.mean(self.trabecular_errors)), 2) if self.trabecular_errors else None,
                "sins_components_equal_pct": pct(self.sins), "sins_vertebrae": len(self.sins),
                "lesion_call_correct_pct": pct(self.lesion_calls), "misses": self.misses[:20]}


def add_phantom(figures: Figures, phantom: Phantom, acquisitions=ACQUISITIONS) -> None:
    """Measure ``phantom`` under each acquisition and add its errors to ``figures``."""
    heights: dict[tuple[str, str], list[float]] = {}
    for acquisition in acquisitions:
        for finding in measure(phantom, acquisition):
            truth = phantom.truth[finding.level]
            _add_vertebra(figures, phantom, acquisition, finding, truth, heights)
    figures.height_spread += [max(v) - min(v) for v in heights.values()]


def _add_vertebra(figures: Figures, phantom: Phantom, acquisition: str, finding: VertebraFinding, truth: dict,
                  heights: dict) -> None:
    m = finding.measurements
    tag = f"seed {phantom.seed} {acquisition} {finding.level}"
    if truth["heights_mm"] is None or m["heights_mm"] is None:
        if (truth["heights_mm"] is None) != (m["heights_mm"] is None):
            figures.misses.append(f"{tag}: heights {m['heights_mm']} against truth {truth['heights_mm']}")
        return
    for name in HEIGHTS:
        figures.height_errors[name].append(abs(m["heights_mm"][name] - truth["heights_mm"][name]))
        heights.setdefault((finding.level, name), []).append(m["heights_mm"][name])
    right = (m["genant_grade"], m["genant_morphology"]) == (truth["genant_grade"], truth["genant_morphology"])
    (figures.fractured if truth["genant_grade"] else figures.normal).append(right)
    if not right:
        figures.misses.append(f"{tag}: grade {m['genant_grade']} {m['genant_morphology']} ({m['height_loss_pct']} %)"
                              f" against {truth['genant_grade']} {truth['genant_morphology']} "
                              f"({truth['height_loss_pct']} %)")
    if m["trabecular_hu"] is not None:
        figures.trabecular_errors.append(abs(m["trabecular_hu"] - truth["trabecular_hu"]))
    figures.lesion_calls.append(finding.lesion == truth["lesion"])
    if truth["sins"] is not None:
        got = {k: v["points"] for k, v in (m["sins"] or {}).get("components", {}).items()}
        figures.sins.append(got == truth["sins"])
        if got != truth["sins"]:
            figures.misses.append(f"{tag}: SINS {got} against {truth['sins']} (call {finding.lesion})")


def report_figures(n: int, seed: int, acquisitions=ACQUISITIONS, design: ReportDesign = ReportDesign()) -> dict:
    """The must-show figures over ``n`` report phantoms, seeds ``seed`` .. ``seed + n - 1``."""
    figures = Figures()
    for s in range(seed, seed + n):
        add_phantom(figures, make_phantom(s, report=design), acquisitions)
    return figures.summary()


# ----------------------------------------------------------------------------- follow-up pairs
def lesion_volume_ml(hu: np.ndarray, mask: np.ndarray, spacing, finding) -> float | None:
    """The lesion volume (ml) the spine report gives one vertebra (``mask``), from a classifier's ``finding``.

    The vertebra goes through ``pipelines.measure`` alone, as its own label map: what the
    real-bone benchmark and its tests measure against the inserted volume.
    """
    labels = mask.astype(np.uint8) * np.uint8(1)
    [record] = vertebra_findings(hu, labels, spacing, {1: "L3"})  # any level: the vertebra is alone
    record.lesion, record.features = finding.kind, finding.features
    measure_spine(hu, labels, Geometry(np.zeros(3), np.eye(3), spacing), [record])
    return record.measurements.get("lesion_volume_ml")


def summary_of(phantom: Phantom, findings: list[VertebraFinding]) -> dict:
    """The part of ``summary.json`` that ``change.compare`` reads."""
    return {"study_instance_uid": f"phantom-{phantom.seed}-visit-{phantom.visit}",
            "model": {"name": "ground truth labels", "version": "1"},
            "vertebrae": [{"level": f.level, "volume_ml": f.volume_ml, "lesion": f.lesion, **f.measurements}
                          for f in findings]}


def pair_figures(n: int, seed: int, followup: FollowUp = FollowUp()) -> dict:
    """Over ``n`` follow-up pairs: lesion volume change against the truth, new lesions and new collapse found."""
    volume_errors, point_errors, new_found, collapse_found, misses = [], [], [], [], []
    for s in range(seed, seed + n):
        before, after = followup_pair(s, followup=followup)
        change = compare(summary_of(after, measure(after)), summary_of(before, measure(before)))
        truth = after.extra_truth["change"]
        for level, t in truth["vertebrae"].items():
            got = change["vertebrae"].get(level, {})
            if t["lesion_change"] == "persisting" and got.get("lesion_volume_change_pct") is not None:
                error = abs(got["lesion_volume_change_ml"] - t["lesion_volume_change_ml"]) / t["lesion_volume_change_ml"]
                volume_errors.append(100.0 * error)
                point_errors.append(abs(got["lesion_volume_change_pct"] - t["lesion_volume_change_pct"]))
                if error > 0.10:
                    misses.append(f"seed {s} {level}: change {got['lesion_volume_change_pct']} % against "
                                  f"{t['lesion_volume_change_pct']} % ({got.get('lesion_volume_change_ml')} ml "
                                  f"against {t['lesion_volume_change_ml']} ml)")
        new_found += [level in change["new_lesions"] for level in truth["new_lesions"]]
        collapse_found += [level in change["new_collapse"] for level in truth["new_collapse"]]
        false = set(change["new_collapse"]) - set(truth["new_collapse"])
        misses += [f"seed {s} {level}: new collapse reported, none drawn" for level in sorted(false)]
    return {"pairs": n, "lesions": len(volume_errors),
            "lesion_volume_change_ml_error_pct": _spread(volume_errors),        # |measured - true| / true, ml
            "lesion_volume_change_pct_error_points": _spread(point_errors),    # |measured - true| change in %
            "new_lesions_reported": f"{sum(new_found)}/{len(new_found)}",
            "new_collapse_reported": f"{sum(collapse_found)}/{len(collapse_found)}", "misses": misses[:20]}


def _spread(errors: list[float]) -> dict | None:
    """Mean, max and the share within 10 of a list of errors."""
    if not errors:
        return None
    return {"mean": round(float(np.mean(errors)), 1), "max": round(float(np.max(errors)), 1),
            "within_10_pct": round(100.0 * float(np.mean(np.array(errors) <= 10.0)), 1)}
