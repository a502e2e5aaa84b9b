"""The findings as a one-page PDF, encapsulated in DICOM (Encapsulated PDF Storage, modality DOC).

For review stations that show documents but no SEG or SR (a report in modality OT broke
one, TotalSegmentator-AIDE #27). The page (A4, drawn with matplotlib's PDF backend, text
as text) holds:

* the title, the study and series it is about (UIDs and dates only, no patient name);
* the findings table, per vertebra head to feet: level, lesion class, lesion volume (ml),
  trabecular HU, anterior / middle / posterior body heights (mm), Genant grade, SINS partial
  score (CT components) and, with a prior study, the change since it (``report_text``);
* the series' bone-density flag, the prior study compared with (and its warnings), and that
  SINS here leaves out pain and alignment;
* the key picture (``secondary_capture.key_picture``: sagittal and coronal views);
* the model's identity: name, version, the first 16 hex digits of its sha256;
* the line "Demonstration model: not for clinical use."

The DICOM object is assembled with pydicom's data sets (highdicom has no encapsulated
document class): Patient and General Study copied from the CT, Encapsulated Document Series
(modality DOC), General and SC Equipment, Encapsulated Document (MIME type
application/pdf, the PDF's exact bytes and length), SOP Common.
"""
from __future__ import annotations

import datetime as dt
import io
import textwrap

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid

from pipelines.levels import LEVELS
from pipelines.outputs.codes import lesion_code
from pipelines.measure.change import HEIGHT_KEYS
from pipelines.outputs.report_text import (NOT_ASSESSED_SINS, change_words, density_line, grade_words,
                                           prior_line)
from pipelines.outputs.rtstruct import OutputNotBuilt
from pipelines.outputs.secondary_capture import NOT_CLINICAL
from pipelines.outputs.seg import MANUFACTURER, SOFTWARE_VERSION, TYPE2_COPIED, reference_headers
from pipelines.records import CTSeries, ModelIdentity, VertebraFinding

TITLE = "Vertebral metastasis report"
A4_INCHES = (8.27, 11.69)


COLUMNS = ["Level", "Lesion class", "Lesion ml", "Trab. HU", "Heights A/M/P mm", "Genant", "SINS", "Since prior"]
WIDTHS = [0.06, 0.22, 0.08, 0.07, 0.14, 0.08, 0.05, 0.30]


def _table_rows(findings: list[VertebraFinding], change: dict | None = None) -> list[list[str]]:
    """One row per vertebra, head to feet; "-" where a number was not measured (the summary says why)."""
    per_level = (change or {}).get("vertebrae") or {}
    rows = []
    for f in sorted(findings, key=lambda f: LEVELS.index(f.level)):
        m = f.measurements or {}
        heights = m.get("heights_mm")
        rows.append([f.level, lesion_code(f.lesion).meaning, _number(m.get("lesion_volume_ml"), "{:.2f}"),
                     _number(m.get("trabecular_hu"), "{:.0f}"),
                     "/".join(f"{heights[k]:.1f}" for k in HEIGHT_KEYS) if heights else "-",
                     grade_words(m) or "-",
                     _number((m.get("sins") or {}).get("partial_score"), "{:g}"),
                     change_words(per_level.get(f.level)) or ("-" if change is None else "not in the prior")])
    return rows


def _number(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def report_pdf(series: CTSeries, findings: list[VertebraFinding], model: ModelIdentity,
               picture: np.ndarray | None, change: dict | None = None, bone_density: dict | None = None) -> bytes:
    """The one-page PDF of the findings (bytes); ``change`` and ``bone_density`` as in the summary."""
    from matplotlib.backends.backend_pdf import FigureCanvasPdf
    from matplotlib.figure import Figure

    figure = Figure(figsize=A4_INCHES)
    FigureCanvasPdf(figure)
    figure.text(0.06, 0.96, TITLE, fontsize=16, weight="bold", va="top")
    source = series.source_images[0]
    figure.text(0.06, 0.93, f"Study {series.study_instance_uid}\nSeries {series.series_instance_uid}"
                f"\nStudy date {source.get('StudyDate', '') or 'unknown'}", fontsize=7, va="top", family="monospace")
    table_axes = figure.add_axes((0.04, 0.60, 0.92, 0.28))
    table_axes.axis("off")
    rows = _table_rows(findings, change) or [["-", "no vertebra found"] + ["-"] * (len(COLUMNS) - 2)]
    table = table_axes.table(cellText=rows, colLabels=COLUMNS, loc="upper center", cellLoc="left", colLoc="left",
                             colWidths=WIDTHS)
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    table.scale(1.0, 1.15)
    notes = [density_line(bone_density) if findings else None, prior_line(change),
             NOT_ASSESSED_SINS if findings else None]
    figure.text(0.06, 0.595, "\n".join(_wrap(line, 130) for line in notes if line), fontsize=6.5, va="top")
    if picture is not None:
        image_axes = figure.add_axes((0.06, 0.15, 0.88, 0.40))
        image_axes.imshow(picture, interpolation="antialiased")
        image_axes.axis("off")
    figure.text(0.06, 0.10, f"Model: {model.name} {model.version} (sha256 {model.sha256[:16]})\n"
                f"Software: {SOFTWARE_VERSION}", fontsize=8, va="top")
    figure.text(0.06, 0.05, NOT_CLINICAL, fontsize=11, weight="bold", color="#b00000", va="top")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf", metadata={"Title": TITLE, "Creator": SOFTWARE_VERSION})
    return buffer.getvalue()


def _wrap(line: str, width: int) -> str:
    """``line`` broken at spaces into lines of at most ``width`` characters."""
    return "\n".join(textwrap.wrap(line, width)) or line


def encapsulate(pdf: bytes, series: CTSeries, model: ModelIdentity, series_number: int) -> Dataset:
    """The PDF as an Encapsulated PDF Storage object (modality DOC) in the CT's study."""
    if not pdf.startswith(b"%PDF"):
        raise OutputNotBuilt("the report is not a PDF document")
    source = reference_headers(series)[0]
    now = dt.datetime.now()
    ds = Dataset()
    for keyword, _ in TYPE2_COPIED:
        setattr(ds, keyword, source.get(keyword, ""))
    if source.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, generate_uid()
    ds.StudyInstanceUID = series.study_instance_uid
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "DOC", generate_uid(), series_number
    ds.SeriesDescription = "Vertebral metastasis report (spine-node PDF)"
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, SOFTWARE_VERSION
    ds.ManufacturerModelName = model.name[:64]
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "NO"  # the page names no patient
    ds.DocumentTitle = TITLE
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB: even length, padded
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def build_pdf_report(series: CTSeries, findings: list[VertebraFinding], model: ModelIdentity, *,
                     picture: np.ndarray | None = None, series_number: int = 904, change: dict | None = None,
                     bone_density: dict | None = None) -> Dataset:
    """The encapsulated PDF report of ``findings`` on ``series`` (``picture``: the key picture, or none;
    ``change``: the change since the prior study; ``bone_density``: the series' flag, both as in the summary)."""
    return encapsulate(report_pdf(series, findings, model, picture, change, bone_density), series, model,
                       series_number)
