"""The node's DICOM service class provider: C-ECHO and C-STORE (pynetdicom).

A C-STORE is answered Success only once its bytes, exactly as received (no pixel
decoding), are on disk with fsync and its row is committed in SQL; anything that prevents
that gets a failure status and a recorded reason. The file is the source of truth: the row's
commit survives the node being killed but is not fsynced (one fsync per instance, not two),
and ``dicom_node.runtime.reconcile`` records at start any file whose row a power cut took:

* a payload that is not DICOM or is truncated: 0xC000 / 0xC001 (cannot understand);
* a data set whose SOP class differs from the request's: 0xA900;
* the disk or the database failing: 0xA700 (out of resources).

SOP classes and transfer syntaxes the node does not take are refused at negotiation
(the peer sees the presentation context rejected); calling AE titles outside the
allow-list are refused at association (A-ASSOCIATE-RJ), and recorded.

The handlers receive their dependencies (a ``Receiver``) as bound arguments, never globals.
"""
from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from storage import IncomingInstance, InstanceFiles, Store, StorageError

from dicom_node.dimse.payload import InstanceHeader, PayloadError, inspect_payload
from dicom_node.dimse.status import StoreStatus

log = logging.getLogger(__name__)

# The transfer syntaxes the pipeline decodes (pydicom + pylibjpeg codecs): accepted as sent.
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]
_COMMENT_MAX = 64  # ErrorComment is LO
READER_THREADS = 16  # threads reading headers while association threads write (one per association at a time)


@dataclass(frozen=True)
class ScpSettings:
    """What the SCP needs from the configuration."""

    ae_title: str
    host: str
    port: int
    allowed_aes: tuple[str, ...] = ()          # empty: any calling AE
    ssl_context: ssl.SSLContext | None = None
    max_associations: int = 10


class Receiver:
    """The state and dependencies of the C-STORE handlers: the store, the files, and who to tell."""

    def __init__(self, store: Store, files: InstanceFiles,
                 on_released: Callable[[list[str]], None] | None = None):
        self.store = store
        self.files = files
        self.on_released = on_released
        self._series_of: dict[int, set[str]] = {}  # id(association) -> series keys received on it
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="scp-header")

    # --- association events -----------------------------------------------------------------------------

    def accepted(self, event: evt.Event) -> None:
        self._record_association(event, "accepted")
        with self._lock:
            self._series_of[id(event.assoc)] = set()

    def rejected(self, event: evt.Event) -> None:
        self._record_association(event, "rejected")
        log.warning("association from %s refused (AE title not allowed)", _calling_ae(event))

    def released(self, event: evt.Event) -> None:
        keys = self._forget(event)
        self._record_association(event, "released")
        if keys:
            self._call_store(self.store.mark_association_released, keys)
            if self.on_released:
                self.on_released(keys)

    def aborted(self, event: evt.Event) -> None:
        self._forget(event)
        self._record_association(event, "aborted")

    def _forget(self, event: evt.Event) -> list[str]:
        with self._lock:
            return sorted(self._series_of.pop(id(event.assoc), set()))

    def _record_association(self, event: evt.Event, what: str) -> None:
        assoc = event.assoc
        self._call_store(self.store.record_association, calling_ae=_calling_ae(event),
                         called_ae=str(assoc.acceptor.ae_title or "").strip(),
                         peer_host=str(assoc.requestor.address or ""), peer_port=int(assoc.requestor.port or 0),
                         event=what)

    def _call_store(self, method, *args, **kwargs) -> None:
        """Record something that is not part of an answer: a failure is logged, never raised into pynetdicom."""
        try:
            method(*args, **kwargs)
        except StorageError as exc:
            log.error("could not record %s: %s", method.__name__, exc)

    # --- DIMSE services -----------------------------------------------------------------------------------

    def store_instance(self, event: evt.Event) -> Dataset:
        """Write, fsync and record one instance, then answer; never raises."""
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_uid = str(request.AffectedSOPInstanceUID)
        calling = _calling_ae(event)
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            header, incoming = self._write_and_read(event.encoded_dataset(include_meta=True), sop_class, sop_uid)
        except PayloadError as exc:
            return self._refuse(exc.status, exc.reason, calling, sop_uid, sop_class, transfer_syntax)
        except (OSError, StorageError) as exc:
            return self._refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot write the instance: {_short(exc)}",
                                calling, sop_uid, sop_class, transfer_syntax)
        try:
            path = self.files.place_instance(incoming, header.study_key, header.series_key)
        except (OSError, StorageError) as exc:
            return self._refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot write the instance: {_short(exc)}",
                                calling, sop_uid, sop_class, transfer_syntax)
        try:
            self._record(header, calling, path, len(incoming.data))
        except StorageError as exc:
            return self._refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot record the instance: {_short(exc)}",
                                calling, sop_uid, sop_class, transfer_syntax)
        with self._lock:
            self._series_of.setdefault(id(event.assoc), set()).add(header.series_key)
        log.debug("stored %s of series %s from %s", sop_uid, header.series_key, calling)
        return _status(StoreStatus.SUCCESS)

    def _write_and_read(self, data: bytes, sop_class: str, sop_uid: str) -> tuple[InstanceHeader, IncomingInstance]:
        """Write the bytes synchronously while a helper thread reads the header (the write releases the GIL).

        A refused payload (PayloadError, which wins over a write error) leaves no file behind.
        """
        incoming, write_error = None, None
        try:
            incoming = self.files.incoming(sop_uid, data)  # checksum and create first: they need the GIL
        except StorageError as exc:
            write_error = exc
        reading = self._readers.submit(inspect_payload, data, sop_class, sop_uid)
        try:
            if incoming is not None:
                incoming.write()
        except StorageError as exc:
            write_error, incoming = exc, None  # write() removed the file
        try:
            header = reading.result()
        except BaseException:
            if incoming is not None:
                incoming.discard()
            raise
        if write_error is not None:
            raise write_error
        return header, incoming

    def close(self) -> None:
        """Stop the header-reading threads (after the SCP has stopped)."""
        self._readers.shutdown(wait=True)

    def _record(self, header: InstanceHeader, calling: str, path, size: int) -> None:
        self.store.record_instance(
            sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
            series_key=header.series_key, series_instance_uid=header.series_instance_uid or header.series_key,
            study_instance_uid=header.study_instance_uid, transfer_syntax_uid=header.transfer_syntax_uid,
            calling_ae=calling, path=path, size=size, modality=header.modality, geometry=header.geometry,
            durable=False)  # the fsynced file is the truth: a row lost to a power cut is rebuilt at start (reconcile)

    def _refuse(self, status: StoreStatus, reason: str, calling: str, sop_uid: str, sop_class: str,
                transfer_syntax: str) -> Dataset:
        log.warning("refused instance %s from %s: 0x%04X %s", sop_uid, calling, status, reason)
        self._call_store(self.store.record_rejected_instance, calling_ae=calling, reason=f"0x{status:04X} {reason}",
                         sop_instance_uid=sop_uid or None, sop_class_uid=sop_class or None,
                         transfer_syntax_uid=transfer_syntax or None)
        return _status(status, reason)


def _status(status: StoreStatus, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = comment[:_COMMENT_MAX]
    return ds


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _calling_ae(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title or "").strip()


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: the node is up."""
    return 0x0000


def handle_store(event: evt.Event, receiver: Receiver) -> Dataset:
    return receiver.store_instance(event)


def handle_accepted(event: evt.Event, receiver: Receiver) -> None:
    receiver.accepted(event)


def handle_rejected(event: evt.Event, receiver: Receiver) -> None:
    receiver.rejected(event)


def handle_released(event: evt.Event, receiver: Receiver) -> None:
    receiver.released(event)


def handle_aborted(event: evt.Event, receiver: Receiver) -> None:
    receiver.aborted(event)


def build_ae(settings: ScpSettings) -> AE:
    """An AE that accepts Verification and every storage class in the accepted transfer syntaxes."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = 0  # no limit on what peers send per PDU: fewer, larger reads
    ae.maximum_associations = settings.max_associations
    ae.require_calling_aet = list(settings.allowed_aes)
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def start_scp(settings: ScpSettings, receiver: Receiver) -> ThreadedAssociationServer:
    """Start the SCP in background threads and return its server (``.shutdown()`` stops it)."""
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_ACCEPTED, handle_accepted, [receiver]),
        (evt.EVT_REJECTED, handle_rejected, [receiver]),
        (evt.EVT_RELEASED, handle_released, [receiver]),
        (evt.EVT_ABORTED, handle_aborted, [receiver]),
    ]
    server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers,
                             ssl_context=settings.ssl_context)
    log.info("DICOM SCP %s listening on %s:%d%s", settings.ae_title, settings.host, settings.port,
             " (TLS)" if settings.ssl_context else "")
    return server


def make_ssl_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """A server TLS context; with ``ca``, peers must present a certificate signed by it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(certfile=cert, keyfile=key)
    if ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return context
