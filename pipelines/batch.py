"""``spine-node process``: the pipeline on DICOM files and folders, outputs written to a folder.

For each CT series found: ``OUT/<key>/seg.dcm``, ``sr.dcm`` and ``summary.json``; a series
the pipeline refuses gets ``OUT/<key>/rejected.json`` with the reason instead. ``<key>``
is the SeriesInstanceUID (or the loader's derived key when the series has none). A
series folder appears complete or not at all: it is written under a temporary name and
renamed into place, replacing an earlier result of the same series.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pipelines.errors import PipelineError, SeriesRejected
from pipelines.process import PipelineOptions, analyse, build_outputs
from pipelines.series.loader import SeriesFiles, SeriesRules, discover_series, load_series

log = logging.getLogger(__name__)


@dataclass
class SeriesResult:
    """What happened to one series: 'done', 'rejected' (refused input) or 'failed' (our fault)."""

    key: str
    status: str
    folder: Path
    reason: str = ""


def process_inputs(inputs: Sequence[Path | str], out_dir: Path, options: PipelineOptions,
                   progress: Callable[[str, int], object] | None = None) -> list[SeriesResult]:
    """Run the pipeline on every series under ``inputs``; one result per series, in discovery order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for files in discover_series([Path(p) for p in inputs]):
        if files.modality in NOT_IMAGES:
            log.info("series %s: skipped, a %s is not an image series", files.key, files.modality)
            continue
        results.append(process_series(files, out_dir, options, progress))
    return results


NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "REG", "RTSTRUCT", "DOC"})
"""Modalities of derived objects (such as our own outputs) that ``process`` passes over silently."""


STAGES = ("load", "analyse", "outputs", "write")


def process_series(files: SeriesFiles, out_dir: Path, options: PipelineOptions,
                   progress: Callable[[str, int], object] | None = None) -> SeriesResult:
    """Load, analyse and write one series; a refusal or failure becomes ``rejected.json``."""
    bar = progress(files.key, len(STAGES)) if progress else None
    staging = Path(tempfile.mkdtemp(prefix=f".{files.key[:40]}.", dir=out_dir))
    try:
        result = _run(files, staging, options, bar)
    except SeriesRejected as exc:
        _write_json(staging / "rejected.json", _rejection(files, exc.code, str(exc)))
        result = SeriesResult(files.key, "rejected", out_dir / files.key, str(exc))
    except PipelineError as exc:
        _write_json(staging / "rejected.json", _rejection(files, "pipeline_error", str(exc)))
        result = SeriesResult(files.key, "failed", out_dir / files.key, str(exc))
    except Exception as exc:  # a bug of ours must not stop the other series; the traceback goes to the log
        log.exception("series %s: internal error", files.key)
        reason = f"internal error ({type(exc).__name__}: {exc})"
        _write_json(staging / "rejected.json", _rejection(files, "internal_error", reason))
        result = SeriesResult(files.key, "failed", out_dir / files.key, reason)
    finally:
        if bar is not None:
            bar.close()
    _publish(staging, out_dir / files.key)
    result.folder = out_dir / files.key
    return result


def _run(files: SeriesFiles, staging: Path, options: PipelineOptions, bar) -> SeriesResult:
    t0 = time.perf_counter()
    series = load_series(files, SeriesRules(min_slices=options.min_slices))
    load_s = time.perf_counter() - t0
    _step(bar, "analyse")
    analysis = analyse(series.hu, series.geometry, options)
    _step(bar, "outputs")
    outputs = build_outputs(series, analysis, options)
    _step(bar, "write")
    t0 = time.perf_counter()
    if outputs.seg is not None:
        outputs.seg.save_as(staging / "seg.dcm", enforce_file_format=True)
    outputs.sr.save_as(staging / "sr.dcm", enforce_file_format=True)
    outputs.summary["timings_s"] = {"load": round(load_s, 3), **outputs.summary["timings_s"],
                                    "write": round(time.perf_counter() - t0, 3)}
    _write_json(staging / "summary.json", outputs.summary)
    _step(bar, None)
    return SeriesResult(files.key, "done", staging)


def _step(bar, stage: str | None) -> None:
    if bar is not None:
        bar.update(1)
        if stage:
            bar.set_postfix_str(stage)


def _rejection(files: SeriesFiles, code: str, reason: str) -> dict:
    study = str(getattr(files.instances[0].header, "StudyInstanceUID", "")) if files.instances else ""
    return {"series_instance_uid": files.series_instance_uid, "study_instance_uid": study,
            "key": files.key, "modality": files.modality, "files": len(files.paths), "code": code, "reason": reason}


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1, default=str) + "\n")


def _publish(staging: Path, final: Path) -> None:
    """Rename the finished staging folder into place, replacing an older result of the series."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old)
