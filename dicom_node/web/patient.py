"""Patient name and ID for the dashboard, only when ``SPINE_NODE_WEB_SHOW_PATIENT`` allows it.

The SQL schema holds no patient identity at all; when the setting is on, the name and ID
are read from the header of one stored instance file of the series (cached per series).
When it is off this module returns nothing and reads nothing.
"""
from __future__ import annotations

from functools import lru_cache

import pydicom

from storage import Store
from storage.errors import StorageError


def patient_of(store: Store, series_key: str, allowed: bool) -> dict | None:
    """``{"name": ..., "id": ...}`` from the series' first instance file, or None (not allowed or unreadable)."""
    if not allowed:
        return None
    try:
        instances = store.series_instances(series_key)
    except StorageError:
        return None
    return _read(str(instances[0].path)) if instances else None


@lru_cache(maxsize=1024)
def _read(path: str) -> dict | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
    return {"name": str(ds.get("PatientName", "") or ""), "id": str(ds.get("PatientID", "") or "")}
