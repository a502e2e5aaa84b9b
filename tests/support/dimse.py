"""DICOM networking for the tests: loopback ports, C-ECHO, the C-STORE senders and the DCMTK storescp peer.

* ``free_port``: a free TCP port on the loopback interface;
* ``echo_ok``: True when the AE at a port answers a C-ECHO with Success (pynetdicom);
* ``send_c_store``: pynetdicom sends files, each in the transfer syntax it is stored in, in one
  association; the statuses. With ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET`` set the
  bytes go as they are on disk (no re-encoding): the only way to send a broken file;
* ``storescu_command`` / ``storescu``: DCMTK storescu (the real sender; ``acknowledged_uids``
  reads what it saw acknowledged from its verbose log);
* ``StoreScp``: DCMTK storescp on a port (a destination that can come up late);
* ``StoreReceiver``: a pynetdicom storage SCP in this process that takes only the SOP classes
  given (a destination that refuses one class), and records what was proposed and stored;
* ``non_dicom_payload``: a file with a valid preamble and file meta but text for a data set.
"""
from __future__ import annotations

import io
import re
import socket
import subprocess
from pathlib import Path

import pydicom
import pytest

from support.programs import require
from support.waiting import wait_until

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on at the moment (the kernel's choice) on the loopback interface."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def echo_ok(port: int, called: str = "SPINENODE", calling: str = "ECHOSCU") -> bool:
    """True when the AE ``called`` at ``port`` answers a C-ECHO from ``calling`` with Success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.connection_timeout = ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def send_c_store(port: int, paths: list[Path], calling: str = "SENDER", called: str = "SPINENODE",
                 sop_class: str | None = None, syntax: str | None = None) -> list[int]:
    """C-STORE ``paths`` in one association (pynetdicom); the status of each, in order.

    Each file goes in the transfer syntax of its file meta (``syntax`` overrides it) under the
    SOP class of its file meta (``sop_class`` overrides it): a file is never re-encoded.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    contexts = set()
    for path in paths:
        meta = pydicom.filereader.read_file_meta_info(path)
        contexts.add((str(sop_class or meta.MediaStorageSOPClassUID), str(syntax or meta.TransferSyntaxUID)))
    for abstract, transfer in sorted(contexts):
        ae.add_requested_context(abstract, [transfer])
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established, f"no association with {called} on port {port}"
    try:
        return [_status(assoc.send_c_store(path)) for path in paths]
    finally:
        assoc.release()


NO_RESPONSE = -1
"""What ``send_c_store`` gives for a C-STORE that got no response (timeout or abort): a status no peer sends."""


def _status(response) -> int:
    return int(response.Status) if "Status" in response else NO_RESPONSE


def storescu_command(port: int, files: list[Path], calling: str = "SENDER", called: str = "SPINENODE",
                     extra: tuple[str, ...] = (), verbose: bool = False) -> list[str]:
    """The DCMTK storescu command line that sends ``files`` in one association (skips the test without DCMTK)."""
    return [require("storescu"), *(["-v"] if verbose else []), "-aet", calling, "-aec", called, *extra, LOOPBACK,
            str(port), *map(str, files)]


def storescu(port: int, files: list[Path], calling: str = "SENDER", called: str = "SPINENODE",
             extra: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    """Send ``files`` with DCMTK storescu and wait (verbose, so acknowledgements are logged; -nh: go on past a bad file)."""
    result = subprocess.run(storescu_command(port, files, calling, called, ("-nh", *extra), verbose=True),
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}{result.stdout[-2000:]}")
    return result


_STORED = re.compile(r"Received Store Response \(Success\)")


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

    @property
    def modality(self):
        """This peer as an Orthanc modality (AET@127.0.0.1:port)."""
        from support.orthanc import local_orthanc

        return local_orthanc.Modality(self.aet, LOOPBACK, self.port)

    def start(self) -> "StoreScp":
        storescp = require("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder.parent / f"{self.folder.name}.log", "ab") as log:
            self.process = subprocess.Popen([storescp, "--aetitle", self.aet, "+xa", "--output-directory",
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


def non_dicom_payload(path: Path) -> Path:
    """A file with a valid preamble and file meta (CT Image Storage) followed by text, not a data set."""
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


class StoreReceiver:
    """A pynetdicom storage SCP on loopback, in this process, taking only ``sop_classes``: a destination whose
    presentation contexts the test chooses (DCMTK's storescp takes every storage class).

    ``requested``: the abstract syntaxes each association proposed (one list per association);
    ``stored``: the data sets it was sent and answered Success for; ``statuses``: SOP class -> the
    failure status it answers for that class instead (the data set is then not kept).
    """

    def __init__(self, aet: str, sop_classes, syntaxes=None, statuses: dict[str, int] | None = None):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
        from pynetdicom import AE

        self.aet, self.port = aet, free_port()
        self.requested: list[list[str]] = []
        self.stored: list[pydicom.Dataset] = []
        self.statuses = dict(statuses or {})
        self.ae = AE(ae_title=aet)
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                                                  RLELossless])
        self.server = None

    @property
    def address(self) -> str:
        return f"{self.aet}@{LOOPBACK}:{self.port}"

    def stored_classes(self) -> list[str]:
        return sorted(str(ds.SOPClassUID) for ds in self.stored)

    def _requested(self, event) -> None:
        self.requested.append(sorted(str(c.abstract_syntax) for c in event.assoc.requestor.requested_contexts))

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if str(ds.SOPClassUID) in self.statuses:
            return self.statuses[str(ds.SOPClassUID)]
        self.stored.append(ds)
        return 0x0000

    def start(self) -> "StoreReceiver":
        from pynetdicom import evt

        self.server = self.ae.start_server((LOOPBACK, self.port), block=False, evt_handlers=[
            (evt.EVT_REQUESTED, self._requested), (evt.EVT_C_STORE, self._store)])
        return self

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()

    def __enter__(self) -> "StoreReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
