"""``spine-node process``: the pipeline on DICOM files and folders, outputs written to a folder.

For each CT series found (``pipelines.run.image_groups``): ``OUT/<key>/seg.dcm``,
``sr.dcm`` and ``summary.json``; a series the pipeline refuses gets ``OUT/<key>/rejected.json``
with the reason instead. ``<key>`` is the SeriesInstanceUID (or the loader's derived key
when the series has none). A series folder appears complete or not at all: its files are
written and fsynced under a temporary folder, which is renamed into place (replacing an
earlier result of the same series) and the rename made durable.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pipelines.options import PipelineOptions
from pipelines.process import analyse
from pipelines.run import Analyser, Outcome, add_write_time, encode, image_groups, run_series
from pipelines.series import SeriesFiles

STAGES = ("load", "analyse", "write")


@dataclass
class SeriesResult:
    """What happened to one series: 'done', 'rejected' (refused input) or 'failed' (our fault)."""

    key: str
    status: str
    folder: Path
    reason: str = ""


def process_inputs(inputs: Sequence[Path | str], out_dir: Path, options: PipelineOptions,
                   progress: Callable[[str, int], object] | None = None,
                   analyser: Analyser = analyse) -> list[SeriesResult]:
    """Run the pipeline on every series under ``inputs``; one result per series, in discovery order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [process_series(files, out_dir, options, progress, analyser)
            for files in image_groups([Path(p) for p in inputs])]


def process_series(files: SeriesFiles, out_dir: Path, options: PipelineOptions,
                   progress: Callable[[str, int], object] | None = None,
                   analyser: Analyser = analyse) -> SeriesResult:
    """Run one series and publish its folder: outputs and summary, or ``rejected.json``."""
    bar = progress(files.key, len(STAGES)) if progress else None
    try:
        outcome = run_series(files, options, analyser, on_loaded=lambda _: _step(bar, "analyse"))
        _step(bar, "write")
        staging = Path(tempfile.mkdtemp(prefix=f".{files.key[:40]}.", dir=out_dir))
        _write_outcome(outcome, staging)
        _step(bar, None)
    finally:
        if bar is not None:
            bar.close()
    final = out_dir / files.key
    _publish(staging, final)
    return SeriesResult(files.key, outcome.status, final, outcome.reason)


def _write_outcome(outcome: Outcome, staging: Path) -> None:
    t0 = time.perf_counter()
    for _, name, ds in outcome.datasets():
        _write_durably(staging / name, encode(ds))
    add_write_time(outcome, time.perf_counter() - t0)
    name, data = outcome.summary_document()
    _write_durably(staging / name, data)
    _fsync(staging)


def _step(bar, stage: str | None) -> None:
    if bar is not None:
        bar.update(1)
        if stage:
            bar.set_postfix_str(stage)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staging: Path, final: Path) -> None:
    """Rename the finished staging folder into place, replacing an older result of the series."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    staging.rename(final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old)
