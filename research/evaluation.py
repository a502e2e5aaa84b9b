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


# --- unlabelled scans -------------------------------------------------------------------------------
#
# A real scan without reference labels still says a lot: which vertebrae the model finds,
# whether they form one column, whether their names agree with the ribs and the sacrum on
# the CT itself (``pipelines.model.anatomy``), the lesion call of each, and a QC picture a
# person checks at a glance. The analysis is the node's own (``pipelines.process.analyse``),
# so what is evaluated is what the node would report.


@dataclass
class Scan:
    """One unlabelled CT: a DICOM series (found under ``path``) or an image file."""

    name: str
    path: Path
    series_key: str | None = None  # the series among those under a DICOM folder


def discover_scans(paths: list[Path]) -> list[Scan]:
    """Every CT to evaluate under ``paths``: each DICOM series in a folder, each NIfTI/ITK image file."""
    from pipelines.series import discover_series

    scans: list[Scan] = []
    for path in map(Path, paths):
        if not path.exists():
            raise EvaluationError(f"{path}: no such file or folder")
        if path.is_file() and not _is_dicom_file(path):
            scans.append(Scan(path.name.split(".")[0], path))
            continue
        series = discover_series([path])
        if not series:
            raise EvaluationError(f"{path}: no DICOM series found")
        for files in series:
            name = path.name if len(series) == 1 else f"{path.name}/{files.key[-12:]}"
            scans.append(Scan(name, path, files.key))
    return scans


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM" or path.suffix.lower() == ".dcm"


def load_scan(scan: Scan):
    """The CT of a scan as (hu, geometry, series UID or None) on its own grid, for ``analyse``."""
    from pipelines.records import Geometry
    from pipelines.series import discover_series, load_series

    if scan.series_key is not None:
        files = next(f for f in discover_series([scan.path]) if f.key == scan.series_key)
        series = load_series(files)
        return series.hu, series.geometry, series.series_instance_uid
    volume = read_volume(scan.path)
    geometry = Geometry(np.asarray(volume.image.GetOrigin(), float), np.eye(3), volume.spacing)
    return volume.array.astype(np.float32), geometry, None


def evaluate_unlabelled(scan: Scan, options, qc_dir: Path | None = None) -> dict:
    """Analyse one scan as the node would and describe the result: vertebrae, column, naming, lesions, QC picture."""
    from pipelines.model.anatomy import column_check, named_vertebrae
    from pipelines.model.orientation import lps_reorientation
    from pipelines.process import analyse

    hu, geometry, uid = load_scan(scan)
    analysis = analyse(hu, geometry, options)
    reorient = lps_reorientation(geometry)
    hu_lps, labels_lps = reorient.to_lps(hu), reorient.to_lps(analysis.labels)
    spacing = reorient.spacing(geometry.spacing)
    label_map = {f.label: f.level for f in analysis.findings}
    geometry_of = {v.level: v for v in named_vertebrae(labels_lps, spacing, label_map)}
    vertebrae = [_vertebra_row(f, geometry_of.get(f.level)) for f in analysis.findings]
    result = {
        "case": scan.name,
        "source": str(scan.path),
        "series_instance_uid": uid,
        "shape": list(hu_lps.shape),
        "spacing_mm": [round(float(s), 3) for s in spacing],
        "vertebrae": vertebrae,
        "levels": [v["level"] for v in vertebrae],
        "column": column_check([geometry_of[f.level] for f in analysis.findings if f.level in geometry_of],
                               heights="rebuilt" not in (analysis.naming or {}).get("evidence", {})),
        "naming": analysis.naming,
        "no_vertebra_reason": analysis.no_vertebra,
    }
    if qc_dir is not None:
        result["qc_picture"] = str(write_qc_picture(hu_lps, labels_lps, spacing, analysis, result,
                                                    Path(qc_dir) / f"{_safe(scan.name)}_qc.png"))
    return result


def _vertebra_row(finding, geometry) -> dict:
    return {"level": finding.level, "voxels": finding.voxels, "volume_ml": finding.volume_ml,
            "centroid_mm": list(geometry.centroid_mm) if geometry else None,
            "height_mm": geometry.height_mm if geometry else None, "mean_hu": finding.mean_hu,
            "lesion": finding.lesion, "lesion_reason": (finding.features or {}).get("reason"),
            "genant_grade": (finding.measurements or {}).get("genant_grade"),
            "genant_reason": (finding.measurements or {}).get("genant_grade_reason")}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_qc_picture(hu_lps, labels_lps, spacing, analysis, result: dict, path: Path) -> Path:
    """The QC picture of an analysed scan (``pipelines.outputs.qc``) with the rib levels the anatomy found."""
    from pipelines.model.anatomy import naming_note
    from pipelines.outputs.qc import VertebraMark, qc_picture, write_png

    naming = analysis.naming or {}
    ribs = [(r["z_mm"] / float(spacing[0]), r.get("anatomical_level"))
            for r in naming.get("evidence", {}).get("rib_levels", [])]
    marks = [VertebraMark(f.level, f.lesion) for f in analysis.findings]
    title = (f"spine-node QC  |  {result['case']}  |  model {analysis.model.name} {analysis.model.version}"
             f"  |  not for diagnosis")
    verdict = naming.get("verdict", "").replace("_", " ")
    footer = naming_note(naming) or f"naming: {verdict} - {naming.get('reason', '')}"
    rgb = qc_picture(hu_lps, labels_lps, spacing, {f.label: f.level for f in analysis.findings}, marks,
                     title=title, footer=footer, ribs=ribs)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, rgb)


def summarise_unlabelled(cases: list[dict]) -> dict:
    """The report over unlabelled scans: per case as evaluated, plus counts a person reads first."""
    verdicts: dict[str, int] = {}
    for case in cases:
        verdict = (case.get("naming") or {}).get("verdict", "none")
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    return {
        "kind": "unlabelled",
        "n_cases": len(cases),
        "n_vertebrae": sum(len(c["vertebrae"]) for c in cases),
        "contiguous_cases": sum(bool(c["column"]["contiguous"]) for c in cases if c["vertebrae"]),
        "naming_verdicts": verdicts,
        "lesion_calls": _lesion_counts(cases),
        "cases": cases,
    }


def _lesion_counts(cases: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in cases:
        for row in case["vertebrae"]:
            counts[row["lesion"]] = counts.get(row["lesion"], 0) + 1
    return counts


def format_unlabelled(report: dict) -> str:
    """The unlabelled report as plain text: one block per scan, then the totals."""
    lines: list[str] = []
    for case in report["cases"]:
        lines += _case_block(case)
    lines.append(f"{report['n_cases']} scan(s), {report['n_vertebrae']} vertebrae; one contiguous column in "
                 f"{report['contiguous_cases']}; naming verdicts {report['naming_verdicts']}; "
                 f"lesion calls {report['lesion_calls']}")
    return "\n".join(lines)


def _case_block(case: dict) -> list[str]:
    sz, sy, sx = case["spacing_mm"]
    lines = [f"== {case['case']}  ({case['shape'][0]} slices, {sz:g} x {sy:g} x {sx:g} mm)"]
    if not case["vertebrae"]:
        lines.append(f"   {case['no_vertebra_reason'] or 'no vertebra found'}")
    else:
        lines.append(f"   {'level':<6}{'voxels':>9}{'ml':>8}{'centre z mm':>13}{'height mm':>11}  lesion")
        for v in case["vertebrae"]:
            z = f"{v['centroid_mm'][0]:.0f}" if v["centroid_mm"] else "-"
            h = f"{v['height_mm']:.0f}" if v["height_mm"] is not None else "-"
            lines.append(f"   {v['level']:<6}{v['voxels']:>9}{v['volume_ml']:>8.1f}{z:>13}{h:>11}  {v['lesion']}"
                         + (f"  ({v['lesion_reason']})" if v["lesion"] != "none" and v["lesion_reason"] else ""))
        column = case["column"]
        lines.append("   column: one contiguous column" if column["contiguous"] else
                     "   column: NOT contiguous: " + "; ".join(column["problems"]))
    naming = case.get("naming") or {}
    if naming and naming.get("verdict") != "no_vertebra":
        lines.append(f"   naming: {naming['verdict'].replace('_', ' ')}"
                     + (f" (offset {naming['offset']:+d}{', applied' if naming.get('applied') else ', not applied'})"
                        if naming.get("offset") else "") + f": {naming['reason']}")
        evidence = naming.get("evidence", {})
        ribs = evidence.get("rib_levels", [])
        if ribs:
            names = [r["anatomical_level"] or "?" for r in ribs]
            lines.append(f"   ribs on the CT: {len(ribs)} rib level(s) beside the spine ({names[0]}..{names[-1]}); "
                         f"{evidence.get('rib_numbering', {}).get('reason', '')}")
        if evidence.get("sacrum"):
            lines.append(f"   sacrum: {evidence['sacrum']['reason']}")
        for dropped in naming.get("dropped", []):
            lines.append(f"   dropped {dropped['level']}: {dropped['reason']}")
    if case.get("qc_picture"):
        lines.append(f"   QC picture: {case['qc_picture']}")
    return lines
