"""Where things are: the repository, the shared data folder and this interpreter's programs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The data sets that cannot live in the repository (real CTs, reference objects of other toolkits),
# beside the checkout; SPINE_NODE_TEST_SHARED_DATA names another place. Tests that read it carry
# the ``real_data`` marker and are skipped, with the reason, where the folder is absent (conftest).
SHARED_DATA = Path(os.environ.get("SPINE_NODE_TEST_SHARED_DATA") or REPO.parent / "shared" / "data")
# The real JPEG 2000 CT (T11-T12) whose data sets lack SOP Class/Instance and Study/Series UIDs.
REAL_CT = SHARED_DATA / "real-ct-dicom-t11-t12"
VENV_BIN = Path(sys.executable).parent
SPINE_NODE = VENV_BIN / "spine-node"


def shared(*parts: str) -> Path:
    """A file or folder under SHARED_DATA; the test is skipped, naming it, where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data item not present: {path}")
    return path
