"""The optional outputs of one analysed series: RTSTRUCT, key images (Secondary Capture), PDF report.

``PipelineOptions.outputs`` names the objects written and sent (``seg``, ``sr``, ``rtstruct``,
``sc``, ``pdf``; default ``seg,sr``). The SEG and the SR are always made, since the summary
and the SR's references need them; the others are made here only when asked for.

An output that cannot be made for this series (no vertebra, a resampled volume for the
RTSTRUCT, a series too short for key images) is left out with its reason in
``OptionalOutputs.not_built``; the other objects are still delivered. Any other failure of an
optional output is also recorded, never allowed to stop the SEG and the SR.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from pipelines.errors import PipelineError
from pipelines.records import CTSeries, ModelIdentity, VertebraFinding

log = logging.getLogger(__name__)

FILE_NAMES = {"rtstruct": "rtstruct.dcm", "pdf": "report.pdf.dcm"}
"""File name of each optional object; key images are ``sc-<n>.dcm`` (flat: the node's output names are one path component)."""


@dataclass
class OptionalOutputs:
    """(kind, file name, dataset) of each optional object made, the reason of each not made, the timings."""

    datasets: list[tuple[str, str, Dataset]] = field(default_factory=list)
    not_built: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def build_optional_outputs(series: CTSeries, labels: np.ndarray, findings: list[VertebraFinding],
                           model: ModelIdentity, kinds: tuple[str, ...], change: dict | None = None,
                           bone_density: dict | None = None) -> OptionalOutputs:
    """The optional objects among ``kinds`` (rtstruct, sc, pdf), each built or refused with its reason.

    ``change`` (the change since the prior study) and ``bone_density`` (the series' flag), as
    in the summary, go into the key images and the PDF.
    """
    made = OptionalOutputs()
    picture = None
    if "sc" in kinds or "pdf" in kinds:
        picture = _step(made, "sc_picture", lambda: _picture(series, labels, findings, model, change))
    picture_error = made.not_built.pop("sc_picture", None)  # the PDF goes on without the picture
    if "rtstruct" in kinds:
        from pipelines.outputs.rtstruct import build_rtstruct

        rtstruct = _step(made, "rtstruct", lambda: build_rtstruct(series, labels, findings, model))
        if rtstruct is not None:
            made.datasets.append(("rtstruct", FILE_NAMES["rtstruct"], rtstruct))
    if "sc" in kinds and picture is None:
        made.not_built["sc"] = picture_error or "no key picture was made"
    elif "sc" in kinds:
        from pipelines.outputs.secondary_capture import build_key_images

        images = _step(made, "sc", lambda: build_key_images(series, labels, findings, model, picture=picture,
                                                            change=change))
        for n, image in enumerate(images or [], start=1):
            made.datasets.append(("sc", f"sc-{n}.dcm", image))
    if "pdf" in kinds:
        from pipelines.outputs.pdf_report import build_pdf_report

        report = _step(made, "pdf", lambda: build_pdf_report(series, findings, model, picture=picture, change=change,
                                                             bone_density=bone_density))
        if report is not None:
            made.datasets.append(("pdf", FILE_NAMES["pdf"], report))
    return made


def _picture(series: CTSeries, labels: np.ndarray, findings: list[VertebraFinding], model: ModelIdentity,
             change: dict | None = None):
    from pipelines.outputs.rtstruct import OutputNotBuilt
    from pipelines.outputs.secondary_capture import key_picture

    if not findings:
        raise OutputNotBuilt("no vertebra was found: there is nothing to show in key images")
    return key_picture(series, labels, findings, model, change)


def _step(made: OptionalOutputs, kind: str, build):
    """Run one builder: its result, or None with the reason recorded under ``kind``."""
    t0 = time.perf_counter()
    try:
        return build()
    except PipelineError as exc:
        made.not_built[kind] = str(exc)
    except Exception as exc:  # an optional output never stops the SEG and the SR; the log has the traceback
        log.exception("optional output %s failed", kind)
        made.not_built[kind] = f"internal error ({type(exc).__name__}: {exc})"
    finally:
        made.timings_s[kind] = time.perf_counter() - t0
    return None
