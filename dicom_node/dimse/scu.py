"""Sending outputs to a destination: C-STORE (pynetdicom) or STOW-RS (DICOMweb, ``requests``).

Both send a batch of files to one destination and answer, per file, either ``None``
(stored) or the reason it was not (the peer's failure status, or its HTTP answer). If the
destination cannot be reached at all, ``DestinationUnreachable`` is raised for the batch.

The SCU proposes exactly the SOP classes of the files it sends (the outbox sends each
destination only what its profile takes), each with the transfer syntaxes the file can go
in. An object whose class the destination accepts no context for, or refuses as "SOP class
not supported", is ``Refused`` (its reason says so); the others in the batch are still sent.

Destinations are strings: ``AE@host:port`` for DIMSE (``tls:AE@host:port`` over TLS),
``stow:http(s)://host:port/dicom-web`` for DICOMweb (the ``/studies`` resource is appended).

Outgoing TLS (D10): ``client_ssl_context`` makes the client side of the node's TLS
settings (its certificate for mutual TLS, ``tls_ca`` as the trusted roots, the peer's
host name checked); ``send`` uses it for every C-STORE destination when the node's
outgoing TLS is on, and for ``tls:`` destinations always. STOW-RS over https verifies the
server against the same CA bundle (``verify``), or the system's when none is given.
"""
from __future__ import annotations

import logging
import re
import ssl
import uuid
from pathlib import Path

import requests
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.config import values as config_values
from dicom_node.config.values import DimsePeer, StowDestination
from dicom_node.dimse.status import is_stored, meaning
from dicom_node.errors import NodeError

log = logging.getLogger(__name__)

SOP_CLASS_NOT_SUPPORTED = 0x0122



class DestinationUnreachable(NodeError):
    """No association (or HTTP connection) could be made with a destination: nothing was sent."""


class Refused(str):
    """Why a destination refused one object for good: it accepted no presentation context for its SOP class
    (or transfer syntax), or answered "SOP class not supported". A ``str``, so it is recorded as any reason;
    the outbox retries it at its longest interval, since the answer will not change until the peer does."""


Destination = DimsePeer | StowDestination


def parse_destination(text: str) -> Destination:
    """``AE@host:port`` or ``stow:http(s)://...`` (the configuration's syntax); ``NodeError`` naming the mistake."""
    try:
        return config_values.destination(text.strip())
    except config_values.Invalid as exc:
        raise NodeError(f"destination {exc}") from None


def client_ssl_context(cert: str | None = None, key: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """A client TLS context: trusts ``ca`` (else the system's roots), presents ``cert``/``key`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert and key:
        context.load_cert_chain(certfile=cert, keyfile=key)
    return context


def send(destination: Destination, paths: list[Path], calling_ae: str, timeout_s: float = 30.0,
         ssl_context: ssl.SSLContext | None = None, tls_for_all: bool = False,
         verify: str | bool = True) -> dict[Path, str | None]:
    """Send ``paths`` to ``destination``; per path ``None`` when stored, else why not.

    ``ssl_context``: the client TLS context, used for ``tls:`` destinations, and for every
    C-STORE destination when ``tls_for_all``. ``verify``: the CA bundle for https STOW-RS.
    """
    if isinstance(destination, StowDestination):
        return stow_rs(destination.url, paths, timeout_s, verify=verify)
    use_tls = destination.tls or tls_for_all
    if use_tls and ssl_context is None:
        ssl_context = client_ssl_context()
    return c_store(destination, paths, calling_ae, timeout_s, ssl_context if use_tls else None)


def c_store(destination: DimsePeer, paths: list[Path], calling_ae: str, timeout_s: float = 30.0,
            ssl_context: ssl.SSLContext | None = None) -> dict[Path, str | None]:
    """Send files over one association; per path ``None`` when the peer answered a success status."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    metas = {path: read_file_meta_info(path) for path in paths}
    for sop_class, syntaxes in requested_contexts(metas.values()):
        ae.add_requested_context(sop_class, syntaxes)
    tls = (ssl_context, destination.host) if ssl_context else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls)
    if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
        return {path: _refused(destination, meta) for path, meta in metas.items()}  # it answered: none of these
    if not assoc.is_established:
        raise DestinationUnreachable(f"no association with {destination} "
                                     f"({'rejected' if assoc.is_rejected else 'no answer or aborted'})")
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    results: dict[Path, str | None] = {}
    try:
        for path, meta in metas.items():
            sop_class = str(meta.MediaStorageSOPClassUID)
            results[path] = _store_one(assoc, path) if sop_class in accepted else _refused(destination, meta)
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def requested_contexts(metas) -> list[tuple[str, list[str]]]:
    """The presentation contexts for these files: exactly their SOP classes, each with the syntaxes it can go in.

    A file in an uncompressed syntax can go in any uncompressed one (pynetdicom re-encodes it):
    its own first, then explicit and implicit VR little endian; a compressed file only in its own.
    """
    contexts = []
    for sop_class, syntax in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}):
        compressed = syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian)
        contexts.append((sop_class, [syntax] if compressed
                         else list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))))
    return contexts


def _refused(destination: DimsePeer, meta) -> Refused:
    sop_class, syntax = str(meta.MediaStorageSOPClassUID), UID(str(meta.TransferSyntaxUID))
    return Refused(f"not sent: {destination} accepted no presentation context for {sop_class_name(sop_class)} "
                   f"({sop_class}) in {syntax.name}: refused by the destination")


def sop_class_name(uid: str) -> str:
    """A SOP class's name for messages: pydicom's, else pynetdicom's keyword spelt out (newer classes)."""
    name = UID(uid).name
    if name != uid:
        return name
    from pynetdicom import sop_class

    keyword = next((k for k, v in getattr(sop_class, "_STORAGE_CLASSES", {}).items() if v == uid), None)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword) if keyword else "SOP class"


def _store_one(assoc, path: Path) -> str | None:
    try:
        response = assoc.send_c_store(dcmread(path))
    except (ValueError, AttributeError) as exc:  # no accepted context for this syntax
        return Refused(f"not sent: {exc}")
    if not response or "Status" not in response:
        return "no C-STORE response (timeout or association aborted)"
    status = int(response.Status)
    if is_stored(status):
        return None
    comment = str(response.get("ErrorComment", "") or "")
    reason = f"destination answered 0x{status:04X}, {meaning(status)}" + (f" ({comment})" if comment else "")
    return Refused(reason) if status == SOP_CLASS_NOT_SUPPORTED else reason


def stow_rs(base_url: str, paths: list[Path], timeout_s: float = 30.0,
            verify: str | bool = True) -> dict[Path, str | None]:
    """POST the files as one multipart/related request to ``base_url/studies``; per path the outcome.

    ``verify``: for https, the CA bundle that must have signed the server's certificate (True: the system's).
    """
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + Path(p).read_bytes() + b"\r\n" for p in paths) + b"--" + boundary.encode() + b"--\r\n"
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    try:
        answer = requests.post(f"{base_url}/studies", data=body, headers=headers, timeout=timeout_s, verify=verify)
    except requests.RequestException as exc:
        raise DestinationUnreachable(f"no HTTP connection with {base_url}: {type(exc).__name__}") from exc
    if answer.status_code == 200:
        return {path: None for path in paths}
    failed = _stow_failures(answer)
    uids = {path: str(read_file_meta_info(path).MediaStorageSOPInstanceUID) for path in paths}
    generic = f"STOW-RS answered HTTP {answer.status_code}"
    if answer.status_code == 202 and failed is not None:
        return {path: failed.get(uid) for path, uid in uids.items()}
    return {path: (failed or {}).get(uid, generic) for path, uid in uids.items()}


def _stow_failures(answer: requests.Response) -> dict[str, str] | None:
    """SOP Instance UID -> reason from a STOW-RS response's Failed SOP Sequence, if it has one."""
    try:
        content = answer.json()
    except ValueError:
        return None
    failed = {}
    for item in (content.get("00081198", {}) or {}).get("Value", []):
        uid = (item.get("00081155", {}).get("Value") or [""])[0]
        reason = (item.get("00081197", {}).get("Value") or [0])[0]
        failed[uid] = f"STOW-RS failure reason 0x{int(reason):04X}"
    return failed


def echo(destination: DimsePeer, calling_ae: str, timeout_s: float = 10.0,
         ssl_context: ssl.SSLContext | None = None) -> int:
    """C-ECHO a DICOM AE; return the status (0 = alive); ``DestinationUnreachable`` if no association."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    tls = (ssl_context, destination.host) if ssl_context else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls)
    if not assoc.is_established:
        raise DestinationUnreachable(f"no association with {destination}")
    try:
        response = assoc.send_c_echo()
        if not response or "Status" not in response:
            raise DestinationUnreachable(f"{destination} did not answer the C-ECHO")
        return int(response.Status)
    finally:
        if assoc.is_established:
            assoc.release()
