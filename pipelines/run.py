"""One orchestration of the pipeline, used by ``spine-node process`` and by the node alike.

What a set of DICOM files becomes, decided here once (docs/ARCHITECTURE.md):

1. **Grouping.** ``image_groups`` splits the files into series by their headers
   (``pipelines.series.discover_series``) and passes over derived objects (SEG, SR, ...,
   ``NOT_IMAGES``). Every group left gets its own outcome.
2. **One series.** ``run_series`` loads the group with the loader's CT list and rules,
   has it analysed (``pipelines.process.analyse``, or a caller's stand-in that runs it on
   a worker), and builds the SEG, the SR and the summary. A refusal of the input is
   'rejected' with its code; any other pipeline error is 'failed'.
3. **Timings.** The same keys everywhere: ``load``, the analysis' own keys, ``analyse_wall``
   (the analysis as the caller waited for it: a worker's queue and transfer included),
   ``seg``, ``sr``, and ``write``, which the caller adds with ``add_write_time``.

Writing is the caller's: both write the documents of ``Outcome.documents`` durably
(fsync before rename), the offline command into a folder, the node through ``storage``.
"""
from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipelines.errors import PipelineError, SeriesRejected
from pipelines.options import PipelineOptions
from pipelines.process import Analysis, Outputs, analyse, build_outputs
from pipelines.records import CTSeries, Geometry
from pipelines.series import SeriesFiles, SeriesRules, discover_series, load_series

log = logging.getLogger(__name__)

NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "REG", "RTSTRUCT", "DOC"})
"""Modalities of derived objects (such as our own outputs): passed over, never refused."""

Analyser = Callable[[np.ndarray, Geometry, PipelineOptions], Analysis]
"""Runs ``pipelines.process.analyse`` on a volume, here or on a worker."""

PriorLookup = Callable[[str, str], "dict | None"]
"""(patient key, this study's UID) -> the summary of the patient's latest earlier analysed study, or None."""


@dataclass
class Outcome:
    """What happened to one series group: 'done', 'rejected' (the input's fault) or 'failed' (ours)."""

    files: SeriesFiles
    status: str
    outputs: Outputs | None = None
    code: str = ""
    reason: str = ""
    series: CTSeries | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.files.key

    def rejection(self) -> dict:
        """``rejected.json``'s content: the series, its files and why it was not processed."""
        files = self.files
        study = str(getattr(files.instances[0].header, "StudyInstanceUID", "")) if files.instances else ""
        return {"series_instance_uid": files.series_instance_uid, "study_instance_uid": study, "key": files.key,
                "modality": files.modality, "files": len(files.paths), "code": self.code, "reason": self.reason}

    def datasets(self) -> list[tuple[str, str, Dataset]]:
        """(kind, file name, dataset) of each DICOM output, in the order they are written and sent."""
        if self.outputs is None:
            return []
        items = [("seg", "seg.dcm", self.outputs.seg), ("sr", "sr.dcm", self.outputs.sr), *self.outputs.extra]
        return [(kind, name, ds) for kind, name, ds in items if ds is not None and kind in self.outputs.kinds]

    def summary_document(self) -> tuple[str, bytes]:
        """``summary.json`` for a processed series, ``rejected.json`` otherwise, encoded."""
        if self.outputs is not None:
            return "summary.json", to_json(self.outputs.summary)
        return "rejected.json", to_json(self.rejection())


def image_groups(paths: Sequence[Path | str]) -> list[SeriesFiles]:
    """The series among ``paths`` that ``run_series`` is for: every header group but derived objects."""
    groups = []
    for files in discover_series(paths):
        if files.modality in NOT_IMAGES:
            log.info("series %s: skipped, a %s is not an image series", files.key, files.modality)
            continue
        groups.append(files)
    return groups


def run_series(files: SeriesFiles, options: PipelineOptions, analyser: Analyser = analyse,
               predecessor_sr: Dataset | None = None, on_loaded: Callable[[CTSeries], None] | None = None,
               passthrough: tuple[type[BaseException], ...] = (), prior_lookup: PriorLookup | None = None) -> Outcome:
    """Load, analyse and build the outputs of one series group; every failure becomes an outcome.

    ``passthrough`` lists exceptions the caller handles itself (the node stopping, its
    database gone); anything else unexpected is a 'failed' outcome naming the error, so
    that one series never stops the others.
    """
    outcome = Outcome(files, "failed")
    try:
        return _run(outcome, options, analyser, predecessor_sr, on_loaded, prior_lookup)
    except passthrough:
        raise
    except SeriesRejected as exc:
        outcome.status, outcome.code, outcome.reason = "rejected", exc.code, str(exc)
    except PipelineError as exc:
        outcome.code, outcome.reason = "pipeline_error", str(exc)
    except Exception as exc:  # a bug of ours fails this series with its reason; the traceback goes to the log
        log.exception("series %s: internal error", files.key)
        outcome.code, outcome.reason = "internal_error", f"internal error ({type(exc).__name__}: {exc})"
    return outcome


def _run(outcome: Outcome, options: PipelineOptions, analyser: Analyser, predecessor_sr: Dataset | None,
         on_loaded: Callable[[CTSeries], None] | None, prior_lookup: PriorLookup | None) -> Outcome:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    series = load_series(outcome.files, SeriesRules(min_slices=options.min_slices))
    timings["load"] = time.perf_counter() - t0
    outcome.series = series
    if on_loaded is not None:
        on_loaded(series)
    t0 = time.perf_counter()
    analysis = analyser(series.hu, series.geometry, options)
    analyse_wall = time.perf_counter() - t0
    key = _patient_key(series, options)
    prior = prior_lookup(key, series.study_instance_uid) if key and prior_lookup else None
    outputs = build_outputs(series, analysis, options, predecessor_sr, patient_key=key, prior_summary=prior)
    timings.update(outputs.summary["timings_s"])
    timings["analyse_wall"] = analyse_wall
    outputs.summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    outcome.status, outcome.outputs, outcome.timings_s = "done", outputs, outputs.summary["timings_s"]
    return outcome


def _patient_key(series: CTSeries, options: PipelineOptions) -> str | None:
    from pipelines.measure.change import patient_key

    if not options.patient_key_secret or not series.source_images:
        return None
    return patient_key(series.source_images[0], bytes.fromhex(options.patient_key_secret),
                       options.match_without_issuer)


def add_write_time(outcome: Outcome, seconds: float) -> None:
    """Record how long the caller took to write the outputs (the summary is written after this)."""
    if outcome.outputs is not None:
        outcome.outputs.summary["timings_s"]["write"] = round(seconds, 3)


def encode(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def to_json(content: dict) -> bytes:
    """A summary or rejection as the files hold it."""
    return (json.dumps(content, indent=1, default=str) + "\n").encode()
