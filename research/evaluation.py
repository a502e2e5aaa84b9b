"""Evaluation of a model bundle on cases with reference vertebra labels.

A *case* is a CT plus a reference label map, in one folder:

* a phantom case (``spine-node phantom --format nifti``): ``ct.nii.gz``, ``labels.nii.gz``
  (paper convention) and ``truth.json`` (per-vertebra lesion class);
* a VerSe-style case (``*_ct.nii.gz`` + ``*seg-vert*_msk.nii.gz``), as in
  ``../shared/data/real-ct-crop-l2-l4``;
* any folder with ``ct.nii.gz`` and ``labels.nii.gz`` in the paper's, VerSe's or
  TotalSegmentator's numbering (``--convention``, or guessed from the file names and ids).

Per case, both maps are turned into level indices (T1..L5) and one confusion matrix of
reference level x predicted level gives everything: per-level Dice, for each reference
vertebra the level the model gave most of its voxels (level identification), and the
level-blind *vertebra Dice* (any vertebra against any vertebra), which tells a model that
finds the bone but names it wrongly from one that does not find it at all.
Lesion classes are compared where the case carries lesion truth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.errors import EvaluationError
from pipelines.lesions import LESION_CLASSES, LesionClassifier
from pipelines.levels import LEVELS, preset
from research.volume_io import Volume, read_volume, same_grid

MIN_LESION_MM = 5.0


@dataclass
class Case:
    """One evaluation case: CT file, reference label file, its convention and optional truth."""

    name: str
    ct: Path
    reference: Path
    convention: str
    truth: dict | None = None


def discover_cases(root: Path, convention: str = "auto") -> list[Case]:
    """The cases under ``root``: the folder itself if it holds a case, else each sub-folder that does."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"cases folder {root} does not exist")
    case = _case_in(root, convention)
    if case:
        return [case]
    cases = [c for c in (_case_in(p, convention) for p in sorted(root.iterdir()) if p.is_dir()) if c]
    if not cases:
        raise EvaluationError(f"{root}: no case found (expected ct.nii.gz + labels.nii.gz, or VerSe-style files)")
    return cases


def _case_in(folder: Path, convention: str) -> Case | None:
    truth = json.loads((folder / "truth.json").read_text()) if (folder / "truth.json").is_file() else None
    if (folder / "ct.nii.gz").is_file() and (folder / "labels.nii.gz").is_file():
        conv = convention if convention != "auto" else (truth or {}).get("label_convention", "auto")
        return Case(folder.name, folder / "ct.nii.gz", folder / "labels.nii.gz", conv, truth)
    cts = sorted(folder.glob("*_ct.nii.gz"))
    refs = sorted(folder.glob("*seg-vert*_msk.nii.gz"))
    if len(cts) == 1 and len(refs) == 1:
        return Case(folder.name, cts[0], refs[0], "verse" if convention == "auto" else convention, None)
    return None


def guess_convention(reference: np.ndarray) -> str:
    """Paper ids stop at 17, VerSe's at 28, TotalSegmentator's vertebrae sit at 25..50."""
    top = int(reference.max())
    if top <= 17:
        return "paper"
    if top <= 28 and not np.isin(reference, np.arange(29, 60)).any():
        return "verse"
    return "totalsegmentator"


def to_level_index(labels: np.ndarray, label_map: dict[int, str]) -> np.ndarray:
    """Map label ids to 1..17 (T1..L5 order); every other label, background included, to 0."""
    lut = np.zeros(max(int(labels.max()), max(label_map, default=0)) + 1, np.uint8)
    for label, level in label_map.items():
        if level in LEVELS and label < len(lut):
            lut[label] = LEVELS.index(level) + 1
    return lut[labels]


def confusion(reference_idx: np.ndarray, predicted_idx: np.ndarray) -> np.ndarray:
    """18x18 voxel counts: rows reference level (0 = other), columns predicted level."""
    n = len(LEVELS) + 1
    flat = reference_idx.astype(np.int64).ravel() * n + predicted_idx.ravel()
    return np.bincount(flat, minlength=n * n).reshape(n, n)


def score_levels(matrix: np.ndarray) -> list[dict]:
    """Per reference vertebra: Dice with the same predicted level, and the level the model gave it."""
    rows = []
    for i, level in enumerate(LEVELS, start=1):
        ref_voxels = matrix[i].sum()
        if ref_voxels == 0:
            continue
        dice = 2.0 * matrix[i, i] / (ref_voxels + matrix[:, i].sum())
        votes = matrix[i, 1:]
        predicted = LEVELS[int(votes.argmax())] if votes.sum() > 0 else None
        rows.append({"level": level, "dice": round(float(dice), 4), "predicted_level": predicted,
                     "level_correct": predicted == level, "voxels": int(ref_voxels)})
    return rows


def vertebra_dice(matrix: np.ndarray) -> float:
    """Dice of "some vertebra" in the reference against "some vertebra" in the prediction, levels ignored."""
    reference, predicted = matrix[1:].sum(), matrix[:, 1:].sum()
    if reference + predicted == 0:
        return float("nan")
    return round(float(2.0 * matrix[1:, 1:].sum() / (reference + predicted)), 4)


def evaluate_case(case: Case, segment: Callable[[Volume], np.ndarray], model_map: dict[int, str],
                  classifier: LesionClassifier | None = None) -> dict:
    """Segment one case and score it against its reference."""
    ct = read_volume(case.ct)
    ref = read_volume(case.reference)
    if not same_grid(ct, ref):
        raise EvaluationError(f"{case.reference}: reference grid differs from the CT's ({case.ct})")
    ref_labels = np.rint(ref.array).astype(np.int32)
    convention = case.convention if case.convention != "auto" else guess_convention(ref_labels)
    predicted = segment(ct)
    pred_idx = to_level_index(predicted, model_map)
    ref_idx = to_level_index(ref_labels, preset(convention))
    matrix = confusion(ref_idx, pred_idx)
    vertebrae = score_levels(matrix)
    if classifier is not None and case.truth:
        _add_lesions(vertebrae, case.truth, ct, pred_idx, classifier)
    return {"case": case.name, "convention": convention, "vertebra_dice": vertebra_dice(matrix),
            "vertebrae": vertebrae}


def _add_lesions(vertebrae: list[dict], truth: dict, ct: Volume, pred_idx: np.ndarray,
                 classifier: LesionClassifier) -> None:
    for row in vertebrae:
        record = truth.get("vertebrae", {}).get(row["level"])
        if record is None:
            continue
        row["lesion_truth"] = record["lesion"]
        row["lesion_max_diameter_mm"] = record.get("lesion_max_diameter_mm", 0.0)
        if row["predicted_level"] is None:
            row["lesion_predicted"] = None
            continue
        mask = pred_idx == LEVELS.index(row["predicted_level"]) + 1
        finding = classifier.classify(ct.array, mask, ct.spacing)
        row["lesion_predicted"] = finding.kind
        row["lesion_features"] = finding.features


def summarise(cases: list[dict]) -> dict:
    """The report: mean Dice and level accuracy over all reference vertebrae, per level, lesions."""
    rows = [row for case in cases for row in case["vertebrae"]]
    per_level = {}
    for level in LEVELS:
        dices = [r["dice"] for r in rows if r["level"] == level]
        if dices:
            per_level[level] = {"dice": round(float(np.mean(dices)), 4), "n": len(dices)}
    report = {
        "mean_dice": round(float(np.mean([r["dice"] for r in rows])), 4) if rows else float("nan"),
        "level_accuracy": round(float(np.mean([r["level_correct"] for r in rows])), 4) if rows else float("nan"),
        "vertebra_dice": _mean_of(cases, "vertebra_dice"),
        "n_vertebrae": len(rows),
        "per_level": per_level,
        "cases": cases,
    }
    lesion_rows = [r for r in rows if "lesion_truth" in r]
    if lesion_rows:
        report["lesion_confusion"] = lesion_confusion(lesion_rows)
        big = [r for r in lesion_rows if r["lesion_truth"] == "none" or r["lesion_max_diameter_mm"] >= MIN_LESION_MM]
        report["lesion_confusion_ge5mm"] = lesion_confusion(big)
    return report


def _mean_of(cases: list[dict], key: str) -> float:
    """Mean of a per-case figure over the cases that have it (NaN when none does)."""
    values = [c[key] for c in cases if c.get(key) is not None and not np.isnan(c[key])]
    return round(float(np.mean(values)), 4) if values else float("nan")


def lesion_confusion(rows: list[dict]) -> dict:
    """Truth class -> predicted class -> count (``missed`` when the vertebra was not segmented), and accuracy per class."""
    matrix = {t: {p: 0 for p in LESION_CLASSES + ["missed"]} for t in LESION_CLASSES}
    for r in rows:
        matrix[r["lesion_truth"]][r["lesion_predicted"] or "missed"] += 1
    accuracy = {}
    for t in LESION_CLASSES:
        total = sum(matrix[t].values())
        if total:
            accuracy[t] = round(matrix[t][t] / total, 4)
    return {"matrix": matrix, "accuracy": accuracy}


def format_table(report: dict) -> str:
    """The report as a plain-text table for the terminal."""
    lines = [f"{'level':<6}{'n':>4}{'dice':>8}"]
    for level, item in report["per_level"].items():
        lines.append(f"{level:<6}{item['n']:>4}{item['dice']:>8.3f}")
    lines.append(f"mean Dice {report['mean_dice']:.4f} over {report['n_vertebrae']} vertebrae; "
                 f"level identification {100 * report['level_accuracy']:.1f} %")
    lines.append(f"vertebra Dice, levels ignored (mean over {len(report['cases'])} cases): "
                 f"{report['vertebra_dice']:.4f}")
    for key in ("lesion_confusion", "lesion_confusion_ge5mm"):
        if key in report:
            lines.append(f"{key} (rows truth, columns predicted):")
            header = "".join(f"{p:>9}" for p in LESION_CLASSES + ["missed"])
            lines.append(f"{'':<9}{header}")
            for t, row in report[key]["matrix"].items():
                lines.append(f"{t:<9}" + "".join(f"{row[p]:>9}" for p in LESION_CLASSES + ["missed"]))
            acc = ", ".join(f"{k} {100 * v:.0f} %" for k, v in report[key]["accuracy"].items())
            lines.append(f"accuracy per class: {acc}")
    return "\n".join(lines)
