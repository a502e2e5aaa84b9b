"""CT series written as files for the tests that send or upload them.

* ``phantom_series``: a small lumbar phantom CT series (matrix 256) as DICOM files, cached in its folder;
* ``real_series_with_uids``: the real JPEG 2000 series (``support.paths.REAL_CT``) with the SOP
  Class/Instance UIDs that its data sets lack copied from its file meta, so that storescu and
  Orthanc take it (they read them from the data set); Study/Series UIDs stay empty unless given.
  The pixel data stay JPEG 2000, as stored. Tests that call it carry the ``real_data`` marker.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import JPEG2000Lossless

from support.paths import REAL_CT


def phantom_series(folder: Path, seed: int = 100001, spacing=(3.0, 1.5, 1.5), **kwargs) -> list[Path]:
    """A small lumbar phantom CT series (matrix 256) as DICOM files; cached in ``folder``."""
    from research.phantoms.dicom import write_dicom_series
    from research.phantoms.generator import make_phantom

    if folder.is_dir() and any(folder.iterdir()):
        return sorted(folder.glob("*.dcm"))
    phantom = make_phantom(seed, fov="lumbar", spacing=spacing, matrix=256)
    return write_dicom_series(phantom, folder, **kwargs)


def real_series_with_uids(folder: Path, study_uid: str | None = None, series_uid: str | None = None) -> list[Path]:
    """Copies of the real series' files (``NAME.dcm`` in ``folder``) with SOPClassUID/SOPInstanceUID from
    their file meta and, where given, these Study/Series Instance UIDs; still JPEG 2000."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for source in sorted(REAL_CT.iterdir()):
        ds = pydicom.dcmread(source)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        if study_uid:
            ds.StudyInstanceUID = study_uid
        if series_uid:
            ds.SeriesInstanceUID = series_uid
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless  # written back as read: still JPEG 2000
        target = folder / f"{source.name}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out
