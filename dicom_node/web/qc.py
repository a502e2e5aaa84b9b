"""The QC picture of a job's result on the dashboard, whichever form the pipeline wrote it in.

Looked for, in order: an output row of kind 'sc' (the key images: a DICOM secondary
capture of ``pipelines.outputs.qc``'s picture, rendered to PNG here) or 'qc' (a PNG or
DICOM file), then a ``qc*.png`` file in the job's output folder. Served at ``/jobs/{id}/qc.png``; 404 when the job has none (or retention
removed it). The picture carries UIDs and levels only: ``pipelines.outputs.qc`` draws no
patient data.
"""
from __future__ import annotations

import io
from pathlib import Path

from storage import InstanceFiles, Store

QC_KINDS = ("sc", "qc")  # the key images (secondary capture of the QC picture), or a QC file


def qc_file(store: Store, files: InstanceFiles, job_id: int) -> Path | None:
    """The job's QC picture file (PNG or DICOM), or None."""
    for output in store.job_outputs(job_id):
        if output.kind.lower() in QC_KINDS and output.path.is_file():
            return output.path
    folder = files.outputs_dir / str(job_id)
    found = sorted(folder.glob("qc*.png")) if folder.is_dir() else []
    return found[0] if found else None


def qc_png(path: Path) -> bytes:
    """PNG bytes of a QC picture file: as is for a PNG, rendered for a DICOM secondary capture."""
    if path.suffix.lower() == ".png":
        return path.read_bytes()
    import numpy as np
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 4 or (pixels.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1):
        pixels = pixels[0]  # several frames: the first
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / ((high - low) or 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
