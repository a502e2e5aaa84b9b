"""Retrieve on request: find studies on a PACS and bring them to the node, to be processed as if pushed.

Two kinds of source:

* DIMSE ``AE@host:port``: C-FIND (Study Root, STUDY level) by accession number, Study
  Instance UID, or Patient ID with an optional study date range; then for each match
  either **C-MOVE** to the node's own AE title (the PACS must know the node's address, as
  for any C-MOVE destination) or **C-GET** into a temporary folder, sent on to the node
  by C-STORE;
* DICOMweb ``dicomweb:http://host:port/dicom-web``: QIDO-RS ``/studies`` with the same
  keys, then WADO-RS ``/studies/{uid}`` (multipart/related, as stored), sent on to the
  node by C-STORE.

Either way the instances reach the node through its own C-STORE SCP, so they are stored,
completed, processed and delivered exactly as pushed ones. Nothing here touches the
node's database. A C-FIND that matches nothing is ``NothingFound``; a C-MOVE or C-GET the
PACS refuses is ``RetrieveError`` with its status, named from pynetdicom's tables.
"""
from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicom_node.config.values import DimsePeer, Invalid, dimse_peer
from dicom_node.errors import NodeError

log = logging.getLogger(__name__)

TIMEOUT_S = 60
DICOMWEB_PREFIX = "dicomweb:"


class RetrieveError(NodeError):
    """The PACS refused or failed a query or a retrieve (the message carries its status)."""


class NothingFound(RetrieveError):
    """The query matched no study."""


@dataclass(frozen=True)
class Query:
    """What to look for: exactly one of accession, study UID or patient ID (with an optional date range)."""

    accession: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    date_range: str | None = None   # DICOM range YYYYMMDD-YYYYMMDD (either end may be empty)

    def __post_init__(self) -> None:
        given = [k for k in (self.accession, self.study_uid, self.patient_id) if k]
        if len(given) != 1:
            raise NodeError("give exactly one of --accession, --study or --patient")
        if self.date_range and not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", self.date_range):
            raise NodeError(f"--date {self.date_range!r} is not YYYYMMDD, YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD")

    def describe(self) -> str:
        if self.accession:
            return f"accession number {self.accession}"
        if self.study_uid:
            return f"study {self.study_uid}"
        return "the given patient ID" + (f" and dates {self.date_range}" if self.date_range else "")

    def qido_params(self) -> dict[str, str]:
        params = {"AccessionNumber": self.accession, "StudyInstanceUID": self.study_uid,
                  "PatientID": self.patient_id, "StudyDate": self.date_range}
        return {k: v for k, v in params.items() if v}

    def c_find_identifier(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = self.study_uid or ""
        ds.AccessionNumber = self.accession or ""
        ds.PatientID = self.patient_id or ""
        ds.StudyDate = self.date_range or ""
        ds.ModalitiesInStudy = ""
        ds.NumberOfStudyRelatedInstances = ""
        return ds


@dataclass(frozen=True)
class Study:
    """A study the query found (UIDs only: patient identity is neither logged nor printed)."""

    study_uid: str
    accession: str = ""
    modalities: str = ""
    instances: int | None = None


@dataclass
class Retrieved:
    """What a retrieve brought to the node."""

    studies: list[Study] = field(default_factory=list)
    instances: int = 0
    failed: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NodeAddress:
    """The node's own SCP: where C-MOVE points and where C-GET/WADO results are sent on."""

    ae_title: str
    host: str
    port: int


# --- DIMSE -----------------------------------------------------------------------------------------------

def _status_text(status: int) -> str:
    from dicom_node.dimse.status import meaning

    return f"0x{status:04X} ({meaning(status)})"


def _associate(peer: DimsePeer, calling_ae: str, contexts):
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def find_studies(peer: DimsePeer, calling_ae: str, query: Query) -> list[Study]:
    """C-FIND (Study Root, STUDY level) on ``peer``; the matching studies."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = _associate(peer, calling_ae, [FIND])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise RetrieveError(f"{peer}: no association for C-FIND (refused, aborted or unreachable)")
    studies: list[Study] = []
    try:
        for status, identifier in assoc.send_c_find(query.c_find_identifier(), FIND):
            if status is None or "Status" not in status:
                raise RetrieveError(f"{peer}: C-FIND got no answer within {TIMEOUT_S} s")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                uid = str(identifier.get("StudyInstanceUID", "") or "")
                if uid:
                    count = identifier.get("NumberOfStudyRelatedInstances", None)
                    studies.append(Study(uid, str(identifier.get("AccessionNumber", "") or ""),
                                         "\\".join(identifier.get("ModalitiesInStudy", []) or []) if
                                         isinstance(identifier.get("ModalitiesInStudy"), list) else
                                         str(identifier.get("ModalitiesInStudy", "") or ""),
                                         int(count) if count not in (None, "") else None))
            elif code != 0x0000:
                raise RetrieveError(f"{peer}: C-FIND failed with status {_status_text(code)}")
    finally:
        assoc.release()
    return list({s.study_uid: s for s in studies}.values())


def _move_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def move_study(peer: DimsePeer, calling_ae: str, study_uid: str, destination_ae: str) -> tuple[int, int]:
    """C-MOVE one study to ``destination_ae``; (completed, failed) sub-operations, or RetrieveError with the status."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    ae = _associate(peer, calling_ae, [MOVE])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise RetrieveError(f"{peer}: no association for C-MOVE (refused, aborted or unreachable)")
    completed = failed = 0
    final = None
    try:
        for status, _identifier in assoc.send_c_move(_move_identifier(study_uid), destination_ae, MOVE):
            if status is None or "Status" not in status:
                raise RetrieveError(f"{peer}: C-MOVE of study {study_uid} got no answer within {TIMEOUT_S} s")
            final = int(status.Status)
            completed = int(status.get("NumberOfCompletedSuboperations", completed) or completed)
            failed = int(status.get("NumberOfFailedSuboperations", failed) or failed)
    finally:
        assoc.release()
    if final not in (0x0000, 0xB000):
        raise RetrieveError(f"{peer} refused the C-MOVE of study {study_uid} to {destination_ae}: "
                            f"status {_status_text(final)}")
    return completed, failed


def get_study(peer: DimsePeer, calling_ae: str, study_uid: str, folder: Path) -> list[Path]:
    """C-GET one study into ``folder`` (the C-STORE sub-operations answered on this association)."""
    from pynetdicom import build_role, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    written: list[Path] = []

    def on_store(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = folder / f"{len(written):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
        return 0x0000

    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(GET)
    contexts = StoragePresentationContexts[:127]  # 128 contexts at most, one taken by C-GET
    roles = []
    for context in contexts:
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        raise RetrieveError(f"{peer}: no association for C-GET (refused, aborted or unreachable)")
    final = None
    try:
        for status, _identifier in assoc.send_c_get(_move_identifier(study_uid), GET):
            if status is None or "Status" not in status:
                raise RetrieveError(f"{peer}: C-GET of study {study_uid} got no answer within {TIMEOUT_S} s")
            final = int(status.Status)
    finally:
        assoc.release()
    if final not in (0x0000, 0xB000):
        raise RetrieveError(f"{peer} refused the C-GET of study {study_uid}: status {_status_text(final)}")
    return written


def send_to_node(paths: list[Path], node: NodeAddress, calling_ae: str) -> tuple[int, int]:
    """C-STORE files to the node's own SCP, one association; (stored, refused)."""
    from pynetdicom import AE

    if not paths:
        return 0, 0
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    contexts = set()
    for path in paths:
        meta = pydicom.filereader.read_file_meta_info(path)
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for abstract, syntax in sorted(contexts)[:128]:
        ae.add_requested_context(abstract, [syntax])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        raise RetrieveError(f"the node {node.ae_title}@{node.host}:{node.port} refused the association "
                            "(is it running, and is the calling AE allowed?)")
    stored = refused = 0
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            if status and int(status.Status) in (0x0000, 0xB000, 0xB007, 0xB006):
                stored += 1
            else:
                refused += 1
    finally:
        assoc.release()
    return stored, refused


# --- DICOMweb --------------------------------------------------------------------------------------------

def qido_studies(url: str, query: Query) -> list[Study]:
    """QIDO-RS ``/studies`` with the query's keys; the matching studies."""
    import requests

    try:
        answer = requests.get(f"{url}/studies", params=query.qido_params(),
                              headers={"Accept": "application/dicom+json"}, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise RetrieveError(f"{url}: QIDO-RS unreachable: {exc}") from None
    if answer.status_code == 204 or not answer.content:
        return []
    if answer.status_code != 200:
        raise RetrieveError(f"{url}: QIDO-RS answered HTTP {answer.status_code} {answer.text[:200]}")
    studies = []
    for item in answer.json():
        uid = _json_value(item, "0020000D")
        if uid:
            count = _json_value(item, "00201208")
            studies.append(Study(uid, _json_value(item, "00080050") or "",
                                 "\\".join(item.get("00080061", {}).get("Value", []) or []),
                                 int(count) if count is not None else None))
    return studies


def wado_study(url: str, study_uid: str, folder: Path) -> list[Path]:
    """WADO-RS ``/studies/{uid}`` as stored (multipart/related); each part written as a file in ``folder``."""
    import requests

    try:
        answer = requests.get(f"{url}/studies/{study_uid}", timeout=TIMEOUT_S * 5,
                              headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    except requests.RequestException as exc:
        raise RetrieveError(f"{url}: WADO-RS unreachable: {exc}") from None
    if answer.status_code != 200:
        raise RetrieveError(f"{url}: WADO-RS of study {study_uid} answered HTTP {answer.status_code}")
    paths = []
    for n, part in enumerate(multipart_parts(answer.headers.get("Content-Type", ""), answer.content)):
        ds = pydicom.dcmread(BytesIO(part), force=True)
        path = folder / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def multipart_parts(content_type: str, body: bytes) -> Iterator[bytes]:
    """The bodies of a multipart/related message (RFC 2046), each part's headers dropped."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise RetrieveError(f"WADO-RS answer is not multipart (Content-Type {content_type!r})")
    delimiter = b"--" + match.group(1).encode()
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        yield data


def _json_value(item: dict, tag: str):
    values = item.get(tag, {}).get("Value") or [None]
    value = values[0]
    return value.get("Alphabetic") if isinstance(value, dict) else value


# --- the whole request -----------------------------------------------------------------------------------

def parse_source(text: str) -> DimsePeer | str:
    """``AE@host:port`` (a DimsePeer) or ``dicomweb:URL`` (the URL, without a trailing slash)."""
    if text.startswith(DICOMWEB_PREFIX):
        url = text[len(DICOMWEB_PREFIX):].rstrip("/")
        if not re.match(r"https?://", url):
            raise NodeError(f"--from {text!r}: a DICOMweb source is dicomweb:http://host:port/dicom-web")
        return url
    try:
        return dimse_peer(text)
    except Invalid as exc:
        raise NodeError(f"--from {text!r}: {exc} (AE@host:port or dicomweb:URL)") from None


def retrieve(source: DimsePeer | str, query: Query, node: NodeAddress, calling_ae: str,
             method: str = "move", forward_as: str | None = None) -> Retrieved:
    """Find, then bring every matching study to the node (C-MOVE, C-GET or WADO-RS); NothingFound if none.

    ``calling_ae``: our AE title towards the PACS. ``forward_as``: the calling AE title of
    the C-STORE that hands C-GET / WADO-RS results to the node (it decides, like any
    sender, where the results go back to); by default the PACS's own AE title, or
    ``calling_ae`` for DICOMweb.
    """
    web = isinstance(source, str)
    forward_as = forward_as or (calling_ae if web else source.ae_title)
    studies = qido_studies(source, query) if web else find_studies(source, calling_ae, query)
    if not studies:
        raise NothingFound(f"{source}: no study matches {query.describe()}")
    result = Retrieved(studies=studies)
    for study in studies:
        log.info("retrieving study %s from %s (%s)", study.study_uid, source, "WADO-RS" if web else method)
        if not web and method == "move":
            completed, failed = move_study(source, calling_ae, study.study_uid, node.ae_title)
            result.instances += completed
            result.failed += failed
            continue
        with tempfile.TemporaryDirectory(prefix="spine-node-retrieve-") as folder:
            paths = (wado_study(source, study.study_uid, Path(folder)) if web
                     else get_study(source, calling_ae, study.study_uid, Path(folder)))
            stored, refused = send_to_node(paths, node, forward_as)
        result.instances += stored
        result.failed += refused
    if result.failed:
        result.warnings.append(f"{result.failed} instance(s) could not be retrieved or stored")
    return result
