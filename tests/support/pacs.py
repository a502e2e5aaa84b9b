"""A small PACS for the retrieve tests: a pynetdicom Study Root Q/R SCP and a DICOMweb (QIDO/WADO) server.

Both serve a folder of DICOM files on free loopback ports and are stopped by the test.
``FakePacs`` answers C-FIND by accession number, Study Instance UID or Patient ID, C-MOVE
to the AE titles it is told about (others: 0xA801, destination unknown) and C-GET;
``FakeDicomWeb`` answers QIDO-RS ``/studies`` and WADO-RS ``/studies/{uid}``.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind as FIND,
                                  StudyRootQueryRetrieveInformationModelGet as GET,
                                  StudyRootQueryRetrieveInformationModelMove as MOVE)

from dicom_node.config.values import DimsePeer
from support.dimse import LOOPBACK, free_port


class FakePacs:
    """A Study Root Q/R SCP over some files: C-FIND by accession/study/patient, C-MOVE to known AEs, C-GET."""

    def __init__(self, files: list[Path], known: dict[str, tuple[str, int]]):
        self.datasets = [pydicom.dcmread(p) for p in files]
        self.known = known
        self.port = free_port()
        ae = AE(ae_title="PACS")
        for context in (FIND, MOVE, GET):
            ae.add_supported_context(context)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, scu_role=True, scp_role=True)
        for context in StoragePresentationContexts[:100]:
            ae.add_requested_context(context.abstract_syntax)
        handlers = [(evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move), (evt.EVT_C_GET, self._get)]
        self.server = ae.start_server((LOOPBACK, self.port), block=False, evt_handlers=handlers)
        self.peer = DimsePeer("PACS", LOOPBACK, self.port)

    def _matching(self, identifier) -> list:
        def matches(ds) -> bool:
            for key in ("AccessionNumber", "StudyInstanceUID", "PatientID"):
                wanted = str(identifier.get(key, "") or "")
                if wanted and str(ds.get(key, "")) != wanted:
                    return False
            return True
        return [ds for ds in self.datasets if matches(ds)]

    def _find(self, event):
        seen = set()
        for ds in self._matching(event.identifier):
            if ds.StudyInstanceUID in seen:
                continue
            seen.add(ds.StudyInstanceUID)
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            answer.StudyInstanceUID, answer.AccessionNumber = ds.StudyInstanceUID, ds.AccessionNumber
            answer.ModalitiesInStudy = "CT"
            answer.NumberOfStudyRelatedInstances = len(self.datasets)
            yield 0xFF00, answer

    def _move(self, event):
        destination = str(event.move_destination).strip()
        if destination not in self.known:
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        host, port = self.known[destination]
        matches = self._matching(event.identifier)
        yield host, port
        yield len(matches)
        for ds in matches:
            yield 0xFF00, ds

    def _get(self, event):
        matches = self._matching(event.identifier)
        yield len(matches)
        for ds in matches:
            yield 0xFF00, ds

    def stop(self) -> None:
        self.server.shutdown()


class FakeDicomWeb:
    """QIDO-RS /studies and WADO-RS /studies/{uid} over the same files, on a free loopback port."""

    def __init__(self, files: list[Path]):
        datasets = [(pydicom.dcmread(p), p.read_bytes()) for p in files]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                parts = url.path.rstrip("/").split("/")
                if parts[-1] == "studies":
                    params = {k: v[0] for k, v in parse_qs(url.query).items()}
                    found = {ds.StudyInstanceUID: ds for ds, _ in datasets
                             if all(str(ds.get(k, "")) == v for k, v in params.items() if k != "StudyDate")}
                    body = json.dumps([{"0020000D": {"vr": "UI", "Value": [uid]},
                                        "00080050": {"vr": "SH", "Value": [ds.AccessionNumber]}}
                                       for uid, ds in found.items()]).encode()
                    self.send_response(200 if found else 204)
                    self.send_header("Content-Type", "application/dicom+json")
                    self.end_headers()
                    self.wfile.write(body if found else b"")
                    return
                study = parts[-1]
                chunks = [raw for ds, raw in datasets if ds.StudyInstanceUID == study]
                body = b"".join(b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n" + c + b"\r\n" for c in chunks)
                self.send_response(200)
                self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=XYZ')
                self.end_headers()
                self.wfile.write(body + b"--XYZ--\r\n")

        self.port = free_port()
        self.server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{LOOPBACK}:{self.port}/dicom-web"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
