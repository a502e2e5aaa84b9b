"""The pipeline of one CT series: volume -> vertebrae with levels -> lesion classes -> SEG + SR.

Two halves, so that the heavy one can run on another machine:

* ``analyse(hu, geometry, options)`` is pure compute, the task a (GPU) worker runs: the
  nnU-Net segmentation (one loaded model per process, reused across series), vertebra
  levels from the model's label map and the lesion class of each vertebra.
* ``build_outputs(series, analysis, options)`` turns that into the DICOM SEG, the
  TID 1500 SR and ``summary.json``'s content, next to the source headers.

Neither touches files, SQL or the network; ``pipelines.run`` orchestrates them for ``process``
and the node alike, which do the I/O (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from pipelines.records import CTSeries, Geometry, ModelIdentity, VertebraFinding
from pipelines.levels import LEVELS
from pipelines.lesions import ThresholdClassifier, estimate_noise
from pipelines.model.anatomy import naming_note, review_vertebrae
from pipelines.model.orientation import lps_reorientation
from pipelines.measure.report import measure_spine, series_report
from pipelines.options import PipelineOptions


@dataclass
class Analysis:
    """What the worker returns: labels on the series' own grid and the findings."""

    labels: np.ndarray
    findings: list[VertebraFinding]
    model: ModelIdentity
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    naming: dict = field(default_factory=dict)  # anatomy.review_vertebrae's record: rule, verdict, evidence
    no_vertebra: str | None = None              # why no vertebra is reported, when none is


@dataclass
class Outputs:
    """The DICOM objects of one analysed series and its summary (``seg`` is None when no vertebra was found)."""

    seg: Dataset | None
    sr: Dataset
    summary: dict
    timings_s: dict[str, float] = field(default_factory=dict)
    # The optional objects made (kind, file name, dataset: rtstruct, sc, pdf) and the kinds to write and send.
    extra: list[tuple[str, str, Dataset]] = field(default_factory=list)
    kinds: tuple[str, ...] = ("seg", "sr")
    # SOP Instance UID of each SEG and SR -> the SEG form (seg_type, all_frames) it is or references
    # (``PipelineOptions.seg_variants``: one SEG and one SR per form; the caller routes each form).
    variants: dict[str, tuple[str, bool]] = field(default_factory=dict)


def load_segmenter(options: PipelineOptions):
    """The loaded model of this process for ``options``, created once and reused for every series."""
    return _segmenter(options.model, options.device, options.step_size, options.mirroring, options.models_dir)


@functools.lru_cache(maxsize=2)
def _segmenter(model: str, device: str, step_size: float, mirroring: bool, models_dir: str | None):
    from pipelines.model.bundles import find_bundle
    from pipelines.model.segmenter import Segmenter

    return Segmenter(find_bundle(model, models_dir), device=device, step_size=step_size, mirroring=mirroring)


def analyse(hu: np.ndarray, geometry: Geometry, options: PipelineOptions) -> Analysis:
    """Segment, label and classify one CT volume (slices, rows, columns in HU) on its own grid."""
    segmenter = load_segmenter(options)
    bundle = segmenter.bundle
    reorient = lps_reorientation(geometry)
    segmentation = segmenter.segment(reorient.to_lps(hu), reorient.spacing(geometry.spacing))
    timings = dict(segmentation.timings_s)
    t0 = time.perf_counter()
    review = review_vertebrae(reorient.to_lps(hu), reorient.spacing(geometry.spacing), segmentation.labels,
                              bundle.label_map)  # a spine at all? names against ribs and sacrum
    timings["anatomy"] = time.perf_counter() - t0
    labels = np.ascontiguousarray(reorient.from_lps(review.labels))
    t0 = time.perf_counter()
    findings = vertebra_findings(hu, labels, geometry.spacing, bundle.label_map)
    timings["measure"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lesion_zone = labels if review.lesion_labels is None else np.ascontiguousarray(reorient.from_lps(review.lesion_labels))
    classify_lesions(hu, lesion_zone, geometry.spacing, findings, options.lesion_thresholds)
    timings["lesions"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    measure_spine(hu, labels, geometry, findings, no_heights=review.no_heights)
    timings["report"] = time.perf_counter() - t0
    model = ModelIdentity(bundle.name, bundle.version, bundle.sha256)
    return Analysis(labels, findings, model, str(segmenter.device), timings, options.parameters(),
                    review.naming, review.no_vertebra)


def vertebra_findings(hu: np.ndarray, labels: np.ndarray, spacing, label_map: dict[int, str]) -> list[VertebraFinding]:
    """One finding per vertebra level present, head to feet, with voxels, volume and mean HU."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    boxes = ndimage.find_objects(labels)
    findings = []
    for label, level in label_map.items():
        if level not in LEVELS or label > len(boxes) or boxes[label - 1] is None:
            continue
        box = boxes[label - 1]
        inside = labels[box] == label
        n = int(inside.sum())
        findings.append(VertebraFinding(level=level, label=int(label), voxels=n,
                                        volume_ml=round(n * voxel_ml, 2),
                                        mean_hu=round(float(hu[box][inside].mean(dtype=np.float64)), 1)))
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def classify_lesions(hu: np.ndarray, labels: np.ndarray, spacing, findings: list[VertebraFinding],
                     thresholds: dict | None = None) -> None:
    """Set each finding's lesion class and features, looking only inside its bounding box.

    The series' noise is measured once, on the whole volume's flat soft tissue, and every
    vertebra is judged against it; the box keeps a 3-voxel margin (clipped to the scan), so
    a vertebra that reaches the first or last slice is seen as cut by the scan.
    """
    classifier = ThresholdClassifier(thresholds)  # a dict: unknown keys and bad values get a clear error
    noise = estimate_noise(hu, spacing)
    boxes = ndimage.find_objects(labels)
    for finding in findings:
        if finding.label > len(boxes) or boxes[finding.label - 1] is None:
            finding.lesion = "indeterminate"  # a rebuilt vertebra whose body core is empty: nothing to judge
            finding.features = {"reason": "no body core far enough from the disc planes to judge a lesion on"}
            continue
        box = _grow(boxes[finding.label - 1], labels.shape, 3)
        result = classifier.classify(hu[box], labels[box] == finding.label, spacing, noise.sd_hu)
        finding.lesion = result.kind
        finding.features = {**result.features, "series_noise_voxels": noise.voxels}


def _grow(box: tuple[slice, ...], shape, margin: int) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def build_outputs(series: CTSeries, analysis: Analysis, options: PipelineOptions,
                  predecessor_sr: Dataset | None = None, patient_key: str | None = None,
                  prior_summary: dict | None = None) -> Outputs:
    """The SEG, the SR and the summary of an analysed series (new SOP Instance UIDs each call)."""
    from pipelines.outputs.optional import build_optional_outputs

    timings: dict[str, float] = {"seg": 0.0, "sr": 0.0}
    outlines = vertebra_outlines(analysis.labels, analysis.findings)
    change = None
    if prior_summary is not None:  # before the SR, which carries it
        from pipelines.measure.change import compare

        change = compare(change_inputs(analysis), prior_summary)
    primary = (options.seg_type, options.seg_all_frames)
    seg, sr = _seg_and_sr(series, analysis, primary, predecessor_sr, outlines, timings, change)
    variants = {str(sr.SOPInstanceUID): primary, **({str(seg.SOPInstanceUID): primary} if seg is not None else {})}
    built = [(variant, *_seg_and_sr(series, analysis, variant, predecessor_sr, outlines, timings, change))
             for variant in (options.seg_variants if seg is not None else ())]  # no SEG: one SR serves all
    variant_objects = []
    for variant, seg_v, sr_v in built:
        variant_objects += [("seg", f"seg-{variant_name(variant)}.dcm", seg_v),
                            ("sr", f"sr-{variant_name(variant)}.dcm", sr_v)]
        variants.update({str(seg_v.SOPInstanceUID): variant, str(sr_v.SOPInstanceUID): variant})
    report = series_report(analysis.findings, series.source_images[0] if series.source_images else None,
                           options.density_rule())
    summary = make_summary(series, analysis, seg, sr, {**analysis.timings_s, **timings}, report)
    summary["patient_key"] = patient_key
    if change is not None:
        summary["change"] = change
    optional = build_optional_outputs(series, analysis.labels, analysis.findings, analysis.model, options.outputs,
                                      change, summary.get("bone_density"))
    summary["timings_s"].update({k: round(v, 3) for k, v in optional.timings_s.items()})
    summary["outputs"] = {"kinds": list(options.outputs), "not_built": optional.not_built}
    if built:
        summary["seg_variants"] = [{"seg_type": variant[0], "all_frames": variant[1],
                                    "seg_sop_instance_uid": str(seg_v.SOPInstanceUID),
                                    "sr_sop_instance_uid": str(sr_v.SOPInstanceUID)} for variant, seg_v, sr_v in built]
    return Outputs(seg, sr, summary, {**timings, **optional.timings_s}, [*variant_objects, *optional.datasets],
                   options.outputs, variants)


def variant_name(variant: tuple[str, bool]) -> str:
    """A SEG form as a file-name word: ``labelmap``, ``binary-all-frames``..."""
    return variant[0] + ("-all-frames" if variant[1] else "")


def _seg_and_sr(series: CTSeries, analysis: Analysis, variant: tuple[str, bool], predecessor_sr: Dataset | None,
                outlines: dict, timings: dict[str, float], change: dict | None = None) -> tuple[Dataset | None, Dataset]:
    """One SEG form (None when no vertebra was found) and the SR that references it (with the change since
    the prior study, when there is one); the times added up."""
    from pipelines.outputs.seg import build_seg
    from pipelines.outputs.sr import build_sr

    t0 = time.perf_counter()
    seg = None
    if analysis.findings:
        seg = build_seg(series, analysis.labels, analysis.findings, analysis.model,
                        labelmap=variant[0] == "labelmap", all_frames=variant[1])
    timings["seg"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    sr = build_sr(series, seg, analysis.findings, analysis.model, predecessor=predecessor_sr, outlines=outlines,
                  comment=naming_note(analysis.naming), change=change)
    timings["sr"] += time.perf_counter() - t0
    return seg, sr


def change_inputs(analysis: Analysis) -> dict:
    """What ``change.compare`` reads of this series: the model and, per vertebra, its level, volume and report."""
    return {"model": {"name": analysis.model.name, "version": analysis.model.version},
            "vertebrae": [{"level": f.level, "volume_ml": f.volume_ml, "lesion": f.lesion, **f.measurements}
                          for f in analysis.findings]}


def vertebra_outlines(labels: np.ndarray, findings: list[VertebraFinding]) -> dict:
    """Each finding's outline on the slice through its centre (finding label -> ``contours.Outline``), for the SR."""
    from pipelines.outputs.contours import centre_outline, label_boxes

    boxes = label_boxes(labels)
    return {f.label: centre_outline(labels, f.label, boxes[f.label]) for f in findings if f.label in boxes}


def make_summary(series: CTSeries, analysis: Analysis, seg: Dataset | None, sr: Dataset, timings: dict,
                 report: dict | None = None) -> dict:
    """``summary.json`` as docs/ARCHITECTURE.md describes it, plus what explains each number."""
    return {
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "model": {"name": analysis.model.name, "version": analysis.model.version, "sha256": analysis.model.sha256},
        "device": analysis.device,
        "vertebrae": [{"level": f.level, "segment_number": f.segment_number, "voxels": f.voxels,
                       "volume_ml": f.volume_ml, "mean_hu": f.mean_hu, "lesion": f.lesion,
                       "lesion_features": f.features, **f.measurements} for f in analysis.findings],
        **(report or {}),
        "naming": analysis.naming or None,
        "no_vertebra_reason": analysis.no_vertebra,
        "seg_sop_instance_uid": str(seg.SOPInstanceUID) if seg is not None else None,
        "sr_sop_instance_uid": str(sr.SOPInstanceUID),
        "repairs": list(series.repairs),
        "warnings": list(series.warnings),
        "parameters": analysis.parameters,
        "software": software_versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


@functools.lru_cache(maxsize=1)
def software_versions() -> dict[str, str]:
    """Versions of spine-node and the libraries whose behaviour shapes the outputs."""
    versions = {}
    for name in ("spine-node", "nnunetv2", "torch", "highdicom", "pydicom", "pynetdicom", "numpy", "SimpleITK"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
