"""The paper's validation, made checkable: Dice per fold and subgroup, lesion agreement, two models compared.

The paper reports, on Spine-Mets-CT-SEG with 3-fold cross-validation, a mean Dice of
94.33 % ± 2.24 %, and +3.32 % Dice over TotalSegmentator on all vertebrae, +5.18 % on
vertebrae with metastases. This module computes the same kinds of figure from per-vertebra
scores, so that a reproduction can be set beside them:

* ``dice_summary``: Dice mean ± SD over all vertebrae, per fold and over the fold means, per
  level, thoracic vs lumbar, and vertebrae with vs without lesions (from the lesion table);
* ``lesion_agreement``: the lesion-class confusion and Cohen's kappa;
* ``compare``: two models on the same vertebrae: the paired Dice difference overall and on
  lesion vertebrae, with a Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided);
* ``cross_validation_figures``: the same summary from nnU-Net's own validation of each fold
  (``fold_N/validation/summary.json``), which is what ``spine-node train`` records.

A score is one row per reference vertebra: (case, level, Dice, fold, lesion class).
``validate`` segments an imported dataset's cases with a bundle (each case with the fold
that did not see it, when the bundle's manifest records the cross-validation splits) and
scores them with ``research.evaluation``; ``run_cli`` is what ``spine-node evaluate
--dataset/--compare`` calls.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.levels import LEVELS, LUMBAR, THORACIC
from research.errors import PaperValidationError

PAPER_FIGURES = {"mean_dice": 0.9433, "sd_dice": 0.0224, "gain_over_totalsegmentator_all": 0.0332,
                 "gain_over_totalsegmentator_lesions": 0.0518}
"""The paper's headline figures (fractions, not percent)."""

LESION_CLASSES = ("none", "lytic", "blastic", "mixed")


@dataclass
class VertebraScore:
    """One reference vertebra's Dice under one model, with the fold it was held out in and its lesion class."""

    case: str
    level: str
    dice: float
    fold: int | None = None
    lesion: str | None = None
    lesion_predicted: str | None = None


def mean_sd(values: list[float]) -> dict:
    """Mean, sample SD (n-1) and n of finite values; NaNs when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": round(float(np.mean(finite)), 4), "sd": round(sd, 4), "n": len(finite)}


def dice_summary(scores: list[VertebraScore]) -> dict:
    """Dice mean ± SD overall, per fold and over the folds' means, per level, per region, with vs without lesions."""
    if not scores:
        raise PaperValidationError("no vertebra was scored: nothing to summarise")
    dices = lambda rows: [r.dice for r in rows]  # noqa: E731
    folds = sorted({r.fold for r in scores if r.fold is not None})
    per_fold = {str(f): mean_sd(dices([r for r in scores if r.fold == f])) for f in folds}
    summary = {
        "overall": mean_sd(dices(scores)),
        "per_case": mean_sd([float(np.mean(dices([r for r in scores if r.case == c])))
                             for c in sorted({r.case for r in scores})]),
        "per_fold": per_fold,
        "over_folds": mean_sd([v["mean"] for v in per_fold.values()]) if per_fold else None,
        "per_level": {lv: mean_sd(dices([r for r in scores if r.level == lv])) for lv in LEVELS
                      if any(r.level == lv for r in scores)},
        "thoracic": mean_sd(dices([r for r in scores if r.level in THORACIC])),
        "lumbar": mean_sd(dices([r for r in scores if r.level in LUMBAR])),
    }
    known = [r for r in scores if r.lesion in LESION_CLASSES]
    if known:
        summary["with_lesions"] = mean_sd(dices([r for r in known if r.lesion != "none"]))
        summary["without_lesions"] = mean_sd(dices([r for r in known if r.lesion == "none"]))
        summary["per_lesion_class"] = {c: mean_sd(dices([r for r in known if r.lesion == c])) for c in LESION_CLASSES}
    return summary


def cohen_kappa(truth: list[str], predicted: list[str], classes: tuple[str, ...] = LESION_CLASSES) -> float:
    """Cohen's kappa of two raters' labels (1 = perfect, 0 = chance); NaN when chance agreement is total."""
    if not truth:
        return float("nan")
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)))
    for t, p in zip(truth, predicted):
        matrix[index[t], index[p]] += 1
    n = matrix.sum()
    observed = np.trace(matrix) / n
    expected = float((matrix.sum(axis=1) * matrix.sum(axis=0)).sum() / n ** 2)
    if expected >= 1.0:
        return float("nan")
    return round(float((observed - expected) / (1.0 - expected)), 4)


def lesion_agreement(scores: list[VertebraScore]) -> dict | None:
    """Confusion (rows truth, columns predicted; ``missed`` when no class was given) and Cohen's kappa.

    A classifier may answer outside the four classes (e.g. ``indeterminate``): such answers get
    their own column and count as disagreement in kappa.
    """
    rows = [r for r in scores if r.lesion in LESION_CLASSES and r.lesion_predicted is not None]
    missed = [r for r in scores if r.lesion in LESION_CLASSES and r.lesion_predicted is None]
    if not rows and not missed:
        return None
    extra = sorted({r.lesion_predicted for r in rows} - set(LESION_CLASSES))
    columns = (*LESION_CLASSES, *extra, "missed")
    matrix = {t: {p: 0 for p in columns} for t in LESION_CLASSES}
    for r in rows:
        matrix[r.lesion][r.lesion_predicted] += 1
    for r in missed:
        matrix[r.lesion]["missed"] += 1
    kappa = cohen_kappa([r.lesion for r in rows], [r.lesion_predicted for r in rows], (*LESION_CLASSES, *extra))
    return {"matrix": matrix, "columns": list(columns), "kappa": kappa, "n": len(rows), "missed": len(missed)}


def compare(a: list[VertebraScore], b: list[VertebraScore], name_a: str = "A", name_b: str = "B") -> dict:
    """A minus B, paired on the vertebrae both scored: mean difference and Wilcoxon signed-rank test.

    Reported overall and on vertebrae with lesions (those of the lesion table not ``none``):
    the paper's "+3.32 % / +5.18 % over TotalSegmentator".
    """
    from scipy.stats import wilcoxon

    by_key = {(r.case, r.level): r for r in b}
    pairs = [(r, by_key[(r.case, r.level)]) for r in a if (r.case, r.level) in by_key]
    if not pairs:
        raise PaperValidationError(f"{name_a} and {name_b} share no scored vertebra (same cases?)")

    def paired(subset) -> dict:
        diffs = np.array([x.dice - y.dice for x, y in subset], float)
        if len(diffs) == 0:
            return {"n": 0}
        result = {"n": int(len(diffs)), "mean_a": round(float(np.mean([x.dice for x, _ in subset])), 4),
                  "mean_b": round(float(np.mean([y.dice for _, y in subset])), 4),
                  "mean_difference": round(float(diffs.mean()), 4),
                  "median_difference": round(float(np.median(diffs)), 4)}
        if np.any(diffs != 0) and len(diffs) >= 2:
            test = wilcoxon(diffs, alternative="two-sided")
            result.update(wilcoxon_statistic=float(test.statistic), p_value=float(test.pvalue))
        else:
            result.update(wilcoxon_statistic=None, p_value=None)
        return result

    lesions = [(x, y) for x, y in pairs if x.lesion not in (None, "none", "unknown")]
    return {"a": name_a, "b": name_b, "all": paired(pairs), "lesion_vertebrae": paired(lesions),
            "unpaired": {"only_a": len(a) - len(pairs), "only_b": len(b) - len(pairs)}}


# --- nnU-Net's cross-validation output ------------------------------------------------------------------------

def scores_from_nnunet_summary(summary_path: Path, fold: int | None,
                               lesions: dict[tuple[str, str], str]) -> list[VertebraScore]:
    """Per-vertebra Dice of one fold's validation (nnU-Net's summary.json; labels in the paper's map)."""
    try:
        summary = json.loads(Path(summary_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PaperValidationError(f"{summary_path}: unreadable nnU-Net validation summary ({exc})") from None
    scores = []
    for item in summary.get("metric_per_case", []):
        case = Path(item["reference_file"]).name
        case = case[: -len(".nii.gz")] if case.endswith(".nii.gz") else Path(case).stem
        for label, metrics in item["metrics"].items():
            level = LEVELS[int(label) - 1] if label.isdigit() and 1 <= int(label) <= len(LEVELS) else None
            if level is None or not metrics.get("n_ref"):
                continue  # a level absent from the reference is not a vertebra of this case
            scores.append(VertebraScore(case, level, float(metrics["Dice"]), fold, lesions.get((case, level))))
    return scores


def cross_validation_figures(summaries: dict[int, Path], lesions: dict[tuple[str, str], str]) -> dict:
    """The CV figures of a training: the Dice summary over every fold's held-out vertebrae."""
    scores = [s for fold, path in sorted(summaries.items()) for s in scores_from_nnunet_summary(path, fold, lesions)]
    return {"dice": dice_summary(scores), "scores": [asdict(s) for s in scores], "paper": PAPER_FIGURES}


# --- running a bundle on an imported dataset --------------------------------------------------------------------

def held_out_fold(manifest: dict) -> dict[str, int]:
    """Case -> the fold that held it out, from a bundle trained by ``spine-node train`` (empty otherwise)."""
    splits = manifest.get("cross_validation", {}).get("splits") or []
    trained = {str(f) for f in manifest.get("nnunet", {}).get("folds", [])}
    return {case: fold for fold, split in enumerate(splits) if str(fold) in trained for case in split["val"]}


def validate(bundle, dataset_dir: Path, segmenter_for: Callable, classifier=None,
             cases: list[str] | None = None, log=print) -> list[VertebraScore]:
    """Segment the dataset's cases with ``bundle`` and score each reference vertebra.

    ``segmenter_for(bundle, folds)`` returns a callable volume -> label map; a case the
    bundle's cross-validation held out is segmented with that fold alone (no leakage),
    any other case with every fold of the bundle.
    """
    from research.datasets.raw import read_lesion_table
    from research.evaluation import Case, evaluate_case

    dataset_dir = Path(dataset_dir)
    lesions = read_lesion_table(dataset_dir) if (dataset_dir / "lesions.csv").is_file() else {}
    ids = cases or sorted(p.name[: -len(".nii.gz")] for p in (dataset_dir / "labelsTr").glob("*.nii.gz"))
    if not ids:
        raise PaperValidationError(f"{dataset_dir}: no labelsTr/*.nii.gz to validate on")
    held = held_out_fold(bundle.manifest)
    segmenters: dict = {}
    scores = []
    for case_id in ids:
        fold = held.get(case_id)
        key = (str(fold),) if fold is not None else tuple(str(f) for f in bundle.folds)
        if key not in segmenters:
            segmenters[key] = segmenter_for(bundle, key)
        truth = {"vertebrae": {lv: {"lesion": cls} for (c, lv), cls in lesions.items() if c == case_id}}
        case = Case(case_id, dataset_dir / "imagesTr" / f"{case_id}_0000.nii.gz",
                    dataset_dir / "labelsTr" / f"{case_id}.nii.gz", "paper", truth if truth["vertebrae"] else None)
        result = evaluate_case(case, segmenters[key], bundle.label_map,
                               classifier if case.truth and _classes_known(case.truth) else None)
        for row in result["vertebrae"]:
            scores.append(VertebraScore(case_id, row["level"], row["dice"], fold, lesions.get((case_id, row["level"])),
                                        row.get("lesion_predicted")))
        log(f"{bundle.name} {case_id}: {len(result['vertebrae'])} vertebrae"
            + (f" (fold {fold}, held out)" if fold is not None else ""))
    return scores


def _classes_known(truth: dict) -> bool:
    return all(v["lesion"] in LESION_CLASSES for v in truth["vertebrae"].values())


def validation_report(scores: list[VertebraScore], model: dict) -> dict:
    """Everything the paper reports about one model, from its scores."""
    return {"model": model, "dice": dice_summary(scores), "lesions": lesion_agreement(scores),
            "paper": PAPER_FIGURES, "scores": [asdict(s) for s in scores]}


# --- tables ----------------------------------------------------------------------------------------------------

def _pct(item: dict | None) -> str:
    if not item or not item.get("n"):
        return "-"
    return f"{100 * item['mean']:.2f} % ± {100 * item['sd']:.2f} % (n {item['n']})"


def format_validation(report: dict) -> str:
    """The paper's validation as a table."""
    dice = report["dice"]
    lines = [f"model {report['model'].get('name')} {report['model'].get('version', '')}".rstrip(),
             f"{'Dice':<24}{'this model':>34}{'paper':>22}",
             f"{'all vertebrae':<24}{_pct(dice['overall']):>34}"
             f"{100 * PAPER_FIGURES['mean_dice']:>12.2f} % ± {100 * PAPER_FIGURES['sd_dice']:.2f} %"]
    for fold, item in dice["per_fold"].items():
        lines.append(f"{'  fold ' + fold:<24}{_pct(item):>34}")
    if dice.get("over_folds"):
        lines.append(f"{'  mean of the folds':<24}{_pct(dice['over_folds']):>34}")
    lines.append(f"{'per case':<24}{_pct(dice['per_case']):>34}")
    lines.append(f"{'thoracic':<24}{_pct(dice['thoracic']):>34}")
    lines.append(f"{'lumbar':<24}{_pct(dice['lumbar']):>34}")
    if "with_lesions" in dice:
        lines.append(f"{'with lesions':<24}{_pct(dice['with_lesions']):>34}")
        lines.append(f"{'without lesions':<24}{_pct(dice['without_lesions']):>34}")
        for cls, item in dice["per_lesion_class"].items():
            lines.append(f"{'  ' + cls:<24}{_pct(item):>34}")
    lines.append("per level: " + ", ".join(f"{lv} {100 * it['mean']:.1f}" for lv, it in dice["per_level"].items()))
    lesions = report.get("lesions")
    if lesions:
        lines.append("lesion classes (rows truth, columns predicted):")
        columns = lesions["columns"]
        lines.append(f"{'':<9}" + "".join(f"{c:>14}" for c in columns))
        for truth, row in lesions["matrix"].items():
            lines.append(f"{truth:<9}" + "".join(f"{row[c]:>14}" for c in columns))
        kappa = lesions["kappa"]
        lines.append(f"Cohen's kappa {kappa:.3f} over {lesions['n']} vertebrae" if not math.isnan(kappa)
                     else f"Cohen's kappa undefined (one class only) over {lesions['n']} vertebrae")
    return "\n".join(lines)


def format_comparison(result: dict) -> str:
    """Two models side by side: mean Dice of each, the paired difference and the Wilcoxon test."""
    lines = [f"{'paired on the same vertebrae':<30}{result['a'][:18]:>20}{result['b'][:18]:>20}"
             f"{'A - B':>10}{'Wilcoxon p':>12}{'n':>6}"]
    paper = {"all": PAPER_FIGURES["gain_over_totalsegmentator_all"],
             "lesion_vertebrae": PAPER_FIGURES["gain_over_totalsegmentator_lesions"]}
    for key, label in (("all", "all vertebrae"), ("lesion_vertebrae", "vertebrae with lesions")):
        item = result[key]
        if not item.get("n"):
            lines.append(f"{label:<30}{'(none)':>20}")
            continue
        p = "-" if item["p_value"] is None else f"{item['p_value']:.3g}"
        lines.append(f"{label:<30}{100 * item['mean_a']:>19.2f}%{100 * item['mean_b']:>19.2f}%"
                     f"{100 * item['mean_difference']:>+9.2f}%{p:>12}{item['n']:>6}")
        lines.append(f"{'':<30}{'paper (over TotalSegmentator):':>40}{100 * paper[key]:>+9.2f}%")
    return "\n".join(lines)


# --- the command line's part --------------------------------------------------------------------------------------

def segmenter_factory(device: str = "auto", step_size: float = 0.5, relabel: bool = True) -> Callable:
    """``make(bundle, folds)`` -> volume -> label map, with the bundle restricted to ``folds`` (one held-out fold)."""
    def make(bundle, folds):
        from pipelines.model.bundles import ModelBundle
        from pipelines.model.segmenter import Segmenter

        if tuple(str(f) for f in folds) != tuple(str(f) for f in bundle.folds):
            manifest = {**bundle.manifest, "nnunet": {**bundle.manifest["nnunet"], "folds": [str(f) for f in folds]}}
            bundle = ModelBundle(bundle.path, manifest, bundle.label_map)
        segmenter = Segmenter(bundle, device=device, step_size=step_size, relabel=relabel)
        return lambda volume: segmenter.segment(volume.array, volume.spacing).labels
    return make


def run_cli(args, models_dir, out=print) -> int:
    """``spine-node evaluate --dataset DATASET [--compare BUNDLE]``: the validation table(s), JSON with ``--json``."""
    from pipelines.lesions import ThresholdClassifier
    from pipelines.model.bundles import find_bundle

    if not getattr(args, "dataset", None):
        raise PaperValidationError("--compare needs --dataset DATASET_DIR (an imported dataset with its lesion table)")
    dataset = Path(args.dataset)
    segmenter_for = segmenter_factory(args.device, args.step_size, not args.no_relabel)
    classifier = ThresholdClassifier()
    main = find_bundle(args.model, models_dir)
    reports = {"a": validation_report(validate(main, dataset, segmenter_for, classifier, log=out), _model(main))}
    out(format_validation(reports["a"]))
    if getattr(args, "compare", None):
        other = find_bundle(args.compare, models_dir)
        reports["b"] = validation_report(validate(other, dataset, segmenter_for, classifier, log=out), _model(other))
        out(format_validation(reports["b"]))
        a_scores = [VertebraScore(**s) for s in reports["a"]["scores"]]
        b_scores = [VertebraScore(**s) for s in reports["b"]["scores"]]
        reports["comparison"] = compare(a_scores, b_scores, main.name, other.name)
        out(format_comparison(reports["comparison"]))
    if getattr(args, "json", None):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(reports, indent=1, default=str))
    return 0


def _model(bundle) -> dict:
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256, "path": str(bundle.path)}
