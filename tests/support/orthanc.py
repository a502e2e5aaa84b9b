"""Orthanc for the tests: orthanc/'s scripts loaded as modules, Orthanc's log, its DICOMweb plugin.

The fixtures that start Orthancs and storescp peers (``orthanc_factory``, ``storescp_factory``)
are in conftest.py; they stop them by their own PIDs at the end of the module. ``qido`` and
``wado_rs_instance`` read Orthanc's DICOMweb plugin (QIDO-RS, WADO-RS).
"""
from __future__ import annotations

import importlib.util
import io
import re
import sys

import pydicom
import requests

from support.paths import REPO



def orthanc_script(name: str):
    """orthanc/NAME.py as the module ``spine_node_orthanc_NAME``: orthanc/ is a folder of files, not a package."""
    spec = importlib.util.spec_from_file_location(f"spine_node_orthanc_{name}", REPO / "orthanc" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


local_orthanc = orthanc_script("local_orthanc")


def log_lines(orthanc, needle: str) -> list[str]:
    """Lines of Orthanc's log that contain ``needle``."""
    return [line for line in orthanc.log_text().splitlines() if needle in line]


# --- DICOMweb (the plugin at /dicom-web) -----------------------------------------------------------

DICOM_JSON = {"Accept": "application/dicom+json"}
WADO_AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def qido(dicomweb_url: str, path: str, **params) -> list[dict]:
    """A QIDO-RS search (``path`` like ``studies/UID/series``) as DICOM JSON; [] when nothing matches."""
    answer = requests.get(f"{dicomweb_url}/{path}", params=params, headers=DICOM_JSON, timeout=60)
    assert answer.status_code in (200, 204), f"QIDO-RS {path}: HTTP {answer.status_code} {answer.text[:300]}"
    return answer.json() if answer.content else []


def json_value(item: dict, tag: str):
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON item, None when absent or empty."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def wado_rs_instance(dicomweb_url: str, study_uid: str, series_uid: str, sop_uid: str) -> pydicom.Dataset:
    """WADO-RS RetrieveInstance, as stored (transfer-syntax=*): the one part of the multipart answer, parsed."""
    url = f"{dicomweb_url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    answer = requests.get(url, headers=WADO_AS_STORED, timeout=120)
    assert answer.status_code == 200, f"WADO-RS {url}: HTTP {answer.status_code} {answer.text[:300]}"
    parts = multipart_parts(answer.headers["Content-Type"], answer.content)
    assert len(parts) == 1, f"WADO-RS of one instance answered {len(parts)} parts"
    return pydicom.dcmread(io.BytesIO(parts[0]))


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related message (RFC 2046), headers of each part dropped."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, f"no boundary in Content-Type {content_type!r}"
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts
