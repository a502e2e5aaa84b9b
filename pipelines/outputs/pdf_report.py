"""The findings as a one-page PDF, encapsulated in DICOM (Encapsulated PDF Storage, modality DOC).

For review stations that show documents but no SEG or SR (a report in modality OT broke
one, TotalSegmentator-AIDE #27). The page (A4, drawn with matplotlib's PDF backend, text
as text) holds:

* the title, the study and series it is about (UIDs and dates only, no patient name);
* the findings table: level, lesion class, volume (ml), mean HU, per vertebra head to feet;
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

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid

from pipelines.levels import LEVELS
from pipelines.outputs.codes import lesion_code
from pipelines.outputs.rtstruct import OutputNotBuilt
from pipelines.outputs.secondary_capture import NOT_CLINICAL
from pipelines.outputs.seg import MANUFACTURER, SOFTWARE_VERSION, TYPE2_COPIED, reference_headers
from pipelines.records import CTSeries, ModelIdentity, VertebraFinding

TITLE = "Vertebral metastasis report"
A4_INCHES = (8.27, 11.69)


def _table_rows(findings: list[VertebraFinding]) -> list[list[str]]:
    ordered = sorted(findings, key=lambda f: LEVELS.index(f.level))
    return [[f.level, lesion_code(f.lesion).meaning, f"{f.volume_ml:.1f}", f"{f.mean_hu:.0f}"] for f in ordered]


def report_pdf(series: CTSeries, findings: list[VertebraFinding], model: ModelIdentity,
               picture: np.ndarray | None) -> bytes:
    """The one-page PDF of the findings (bytes)."""
    from matplotlib.backends.backend_pdf import FigureCanvasPdf
    from matplotlib.figure import Figure

    figure = Figure(figsize=A4_INCHES)
    FigureCanvasPdf(figure)
    figure.text(0.06, 0.96, TITLE, fontsize=16, weight="bold", va="top")
    source = series.source_images[0]
    figure.text(0.06, 0.93, f"Study {series.study_instance_uid}\nSeries {series.series_instance_uid}"
                f"\nStudy date {source.get('StudyDate', '') or 'unknown'}", fontsize=7, va="top", family="monospace")
    table_axes = figure.add_axes((0.06, 0.62, 0.88, 0.26))
    table_axes.axis("off")
    rows = _table_rows(findings) or [["-", "no vertebra found", "-", "-"]]
    table = table_axes.table(cellText=rows, colLabels=["Level", "Lesion class", "Volume (ml)", "Mean HU"],
                             loc="upper center", cellLoc="left", colLoc="left", colWidths=[0.12, 0.48, 0.2, 0.2])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.2)
    if picture is not None:
        image_axes = figure.add_axes((0.06, 0.17, 0.88, 0.43))
        image_axes.imshow(picture, interpolation="antialiased")
        image_axes.axis("off")
    figure.text(0.06, 0.10, f"Model: {model.name} {model.version} (sha256 {model.sha256[:16]})\n"
                f"Software: {SOFTWARE_VERSION}", fontsize=8, va="top")
    figure.text(0.06, 0.05, NOT_CLINICAL, fontsize=11, weight="bold", color="#b00000", va="top")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf", metadata={"Title": TITLE, "Creator": SOFTWARE_VERSION})
    return buffer.getvalue()


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
                     picture: np.ndarray | None = None, series_number: int = 904) -> Dataset:
    """The encapsulated PDF report of ``findings`` on ``series`` (``picture``: the key picture, or none)."""
    return encapsulate(report_pdf(series, findings, model, picture), series, model, series_number)
