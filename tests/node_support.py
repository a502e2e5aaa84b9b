"""Real peers and a real node process for the node's tests.

* ``NodeProcess``: ``spine-node serve`` as a subprocess (own session, so SIGKILL takes its
  worker processes too) with ``SPINE_NODE_*`` variables, its log in a file.
* ``StoreScp``: DCMTK ``storescp`` on a given port (a destination that can come up late).
* ``storescu``: DCMTK ``storescu`` sending files; returns the SOP Instance UIDs acknowledged.
* ``phantom_series``: a small phantom CT series as DICOM files (lumbar, coarse, matrix 256).
* ``sendable_real_series``: the real JPEG 2000 series, with the SOP Class/Instance UIDs
  that its data sets lack copied from its file meta, so that storescu can send it (storescu
  reads them from the data set; the pixels stay JPEG 2000, Study/Series UIDs stay empty).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
SPINE_NODE = Path(sys.executable).parent / "spine-node"
REAL_SERIES = REPO.parent / "shared" / "data" / "real-ct-dicom-t11-t12"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def non_dicom_payload(path: Path) -> Path:
    """A file with a valid preamble and file meta (CT Image Storage) followed by text, not a data set."""
    import io

    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.sop_class import CTImageStorage

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.999.1"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + b"this is a text file, not a data set\n" * 20)
    return path


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed (DCMTK; `make system-deps`)")


def echo_ok(port: int, called: str = "SPINENODE", calling: str = "ECHOSCU") -> bool:
    """True when the AE at ``port`` answers a C-ECHO with Success (DCMTK echoscu)."""
    result = subprocess.run(["echoscu", "-aet", calling, "-aec", called, LOOPBACK, str(port)],
                            capture_output=True, timeout=30)
    return result.returncode == 0


class NodeProcess:
    """``spine-node serve`` in its own session; ``stop`` (SIGTERM) or ``kill`` (SIGKILL to the group)."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SPINE_NODE_")},
                    "SPINE_NODE_DATA_DIR": str(data_dir), "SPINE_NODE_PORT": str(self.port),
                    "SPINE_NODE_HOST": LOOPBACK, "SPINE_NODE_DEVICE": "cpu", **env}
        self.log_path = data_dir.parent / f"{data_dir.name}-node.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(SPINE_NODE), "serve"], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, cwd=self.data_dir.parent)
        wait_until(self._up, timeout, f"the node on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"spine-node serve exited {self.process.returncode}: {self.log()[-2000:]}")
        return echo_ok(self.port, self.env.get("SPINE_NODE_AE_TITLE", "SPINENODE"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful); SIGKILL to the group if it does not end in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return process.wait(10)

    def kill(self) -> None:
        """SIGKILL the node and its worker processes at once (a power cut, as far as the processes see)."""
        process, self.process = self.process, None
        if process is not None:
            _kill_group(process)
            process.wait(10)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class StoreScp:
    """DCMTK storescp on ``port`` writing what it receives into ``folder`` (start it late for 'down' tests)."""

    def __init__(self, folder: Path, aet: str = "DEST", port: int | None = None):
        self.folder = folder
        self.aet = aet
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.aet}@{LOOPBACK}:{self.port}"

    def start(self) -> "StoreScp":
        require("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder.parent / f"{self.folder.name}.log", "ab") as log:
            self.process = subprocess.Popen(["storescp", "--aetitle", self.aet, "+xa", "--output-directory",
                                             str(self.folder), str(self.port)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: echo_ok(self.port, self.aet), 20, f"storescp on port {self.port}")
        return self

    def received(self, series_uid: str | None = None) -> list[pydicom.Dataset]:
        """Headers of the complete files received so far, only those of ``series_uid`` if given."""
        found = []
        for path in sorted(p for p in self.folder.iterdir() if p.is_file()) if self.folder.is_dir() else []:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # a file still being written: the next poll reads it
                continue
            if series_uid is None or ds.get("SeriesInstanceUID") == series_uid:
                found.append(ds)
        return found

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


_STORED = re.compile(r"Received Store Response \(Success\)")


def storescu(port: int, files: list[Path], calling: str = "SENDER", called: str = "SPINENODE",
             extra: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    """Send ``files`` in one association with DCMTK storescu (verbose, so acknowledgements are logged)."""
    require("storescu")
    result = subprocess.run(["storescu", "-v", "-nh", "-aet", calling, "-aec", called, *extra, LOOPBACK, str(port),
                             *map(str, files)], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}{result.stdout[-2000:]}")
    return result


def acknowledged_uids(output: str, files: list[Path]) -> list[str]:
    """SOP Instance UIDs of the files storescu saw acknowledged with Success, in sending order.

    storescu -v logs 'Sending file: PATH' and then 'Received Store Response (Success)'.
    """
    uids, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif _STORED.search(line) and current:
            uids.append(str(pydicom.dcmread(current, stop_before_pixels=True).SOPInstanceUID))
            current = None
    return uids


def phantom_series(folder: Path, seed: int = 100001, spacing=(3.0, 1.5, 1.5), **kwargs) -> list[Path]:
    """A small lumbar phantom CT series (matrix 256) as DICOM files; cached in ``folder``."""
    from research.phantoms.generator import make_phantom
    from research.phantoms.dicom import write_dicom_series

    if folder.is_dir() and any(folder.iterdir()):
        return sorted(folder.glob("*.dcm"))
    phantom = make_phantom(seed, fov="lumbar", spacing=spacing, matrix=256)
    return write_dicom_series(phantom, folder, **kwargs)


def sendable_real_series(folder: Path) -> list[Path]:
    """The real JPEG 2000 series with SOPClassUID/SOPInstanceUID copied from its file meta (see module doc)."""
    if not REAL_SERIES.is_dir():
        pytest.skip(f"real data not present ({REAL_SERIES})")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for source in sorted(REAL_SERIES.iterdir()):
        ds = pydicom.dcmread(source)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        target = folder / f"{source.name}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out
