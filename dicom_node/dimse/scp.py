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
(the peer sees the presentation context rejected); a called AE title the node does not
answer, calling AE titles outside the allow-list and associations over the limits are
refused at association (A-ASSOCIATE-RJ), logged with the true reason and recorded
(``dicom_node.dimse.admission``: deadlines, caps, TLS off the accept thread).

The handler never raises into pynetdicom: anything unexpected while reading a payload
(a wrong or unknown VR, a value pydicom cannot convert) is 0xC000 with the reason, and a
``rejected_instances`` row.

A series whose association was aborted, or one of whose instances the node refused, is
marked incomplete (a series event, ``Store.mark_series_incomplete``): completion waits for
a later instance and a quiet period. A mark the database cannot take now (it is away, the
disk is full) is kept in memory and written at the next chance; completion reads both.

An instance whose bytes equal the stored file of the same SOP Instance UID is
acknowledged without touching its series (an identical resend re-opens nothing).

The handlers receive their dependencies (a ``Receiver``) as bound arguments, never globals.
"""
from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from storage import IncomingInstance, InstanceFiles, Store, StorageError
from storage.models import utcnow

from dicom_node.dimse.admission import AdmissionLimits, AdmissionServer
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
    max_associations: int = 32
    max_peer_connections: int = 48
    max_pending: int = 64
    associate_timeout_s: float = 10.0
    called_aes: tuple[str, ...] = ()           # more titles answered besides ae_title; "*": any

    def limits(self) -> AdmissionLimits:
        return AdmissionLimits(max_associations=self.max_associations, max_peer_connections=self.max_peer_connections,
                               max_pending=self.max_pending, associate_timeout_s=self.associate_timeout_s,
                               allowed_calling=tuple(self.allowed_aes), called_aes=tuple(self.called_aes))


class Receiver:
    """The state and dependencies of the C-STORE handlers: the store, the files, and who to tell."""

    def __init__(self, store: Store, files: InstanceFiles,
                 on_released: Callable[[list[str]], None] | None = None):
        self.store = store
        self.files = files
        self.on_released = on_released
        self._series_of: dict[int, set[str]] = {}  # id(association) -> series keys received on it
        self._unwritten_marks: dict[str, tuple] = {}  # series key -> (at, reason): incomplete marks not yet in SQL
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="scp-header")

    # --- association events -----------------------------------------------------------------------------

    def accepted(self, event: evt.Event) -> None:
        self._record_association(event, "accepted")
        with self._lock:
            self._series_of[id(event.assoc)] = set()

    def refused(self, assoc, reason: str) -> None:
        """The admission refused an association (logged there with its reason): recorded when it got that far."""
        if assoc is not None:
            self._record(assoc, "rejected")

    def released(self, event: evt.Event) -> None:
        keys = self._forget(event)
        self._record_association(event, "released")
        if keys:
            self._call_store(self.store.mark_association_released, keys)
            if self.on_released:
                self.on_released(keys)

    def aborted(self, event: evt.Event) -> None:
        """An aborted association's series are held as incomplete, unless the node itself ended it for idling.

        pynetdicom aborts an association idle for ``network_timeout`` (60 s): the sender had
        sent nothing for that long after its last acknowledged instance, which tells nothing
        missing; such a series completes by the quiet period as usual.
        """
        keys = self._forget(event)
        self._record_association(event, "aborted")
        if keys and not _idle_timeout(event.assoc):
            self.mark_incomplete(keys, "association aborted")

    # --- incomplete series ----------------------------------------------------------------------------------

    def mark_incomplete(self, keys, reason: str) -> None:
        """Mark series incomplete (aborted association, refused instance); kept in memory if SQL cannot take it."""
        at = utcnow()
        with self._lock:
            for key in keys:
                self._unwritten_marks[key] = (at, reason)
        self.flush_marks()

    def flush_marks(self) -> None:
        """Write the incomplete marks not yet in SQL (the completion loop calls it before each pass)."""
        with self._lock:
            marks = dict(self._unwritten_marks)
        if not marks:
            return
        try:
            self.store.mark_series_incomplete(marks)
        except StorageError as exc:
            log.error("could not record %d incomplete series mark(s) yet (kept in memory): %s", len(marks), exc)
            return
        with self._lock:
            for key, mark in marks.items():
                if self._unwritten_marks.get(key) == mark:
                    del self._unwritten_marks[key]

    def unwritten_marks(self) -> dict[str, tuple]:
        """Incomplete marks the database has not taken yet: completion holds these series too."""
        with self._lock:
            return dict(self._unwritten_marks)

    def _forget(self, event: evt.Event) -> list[str]:
        with self._lock:
            return sorted(self._series_of.pop(id(event.assoc), set()))

    def _record_association(self, event: evt.Event, what: str) -> None:
        self._record(event.assoc, what)

    def _record(self, assoc, what: str) -> None:
        """An association event, with the called AE title the peer asked for (not the node's own)."""
        self._call_store(self.store.record_association, calling_ae=_assoc_calling(assoc),
                         called_ae=_called_ae(assoc), peer_host=str(assoc.requestor.address or ""),
                         peer_port=int(assoc.requestor.port or 0), event=what)

    def _call_store(self, method, *args, **kwargs) -> None:
        """Record something that is not part of an answer: a failure is logged, never raised into pynetdicom."""
        try:
            method(*args, **kwargs)
        except StorageError as exc:
            log.error("could not record %s: %s", method.__name__, exc)

    # --- DIMSE services -----------------------------------------------------------------------------------

    def store_instance(self, event: evt.Event) -> Dataset:
        """Write, fsync and record one instance, then answer; never raises (D8: anything unexpected is 0xC000)."""
        request = event.request
        sop_class = str(getattr(request, "AffectedSOPClassUID", "") or "")
        sop_uid = str(getattr(request, "AffectedSOPInstanceUID", "") or "")
        calling = _calling_ae(event)
        try:
            transfer_syntax = str(event.context.transfer_syntax)
        except Exception:  # noqa: BLE001 - provenance only
            transfer_syntax = ""
        refuse = lambda status, reason, header=None: self._refuse(  # noqa: E731
            status, reason, calling, sop_uid, sop_class, transfer_syntax, header, event)
        try:
            return self._store(event, calling, sop_class, sop_uid, refuse)
        except Exception as exc:  # noqa: BLE001 - the handler must answer, never raise into pynetdicom
            log.exception("instance %s: unexpected error while storing", sop_uid)
            return refuse(StoreStatus.CANNOT_UNDERSTAND, f"cannot process the instance: {type(exc).__name__}")

    def _store(self, event: evt.Event, calling: str, sop_class: str, sop_uid: str, refuse) -> Dataset:
        data = event.encoded_dataset(include_meta=True)
        try:
            header, incoming = self._write_and_read(data, sop_class, sop_uid)
        except PayloadError as exc:
            return refuse(exc.status, exc.reason)
        except _WriteFailed as exc:
            return refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot write the instance: {_short(exc.error)}", exc.header)
        except (OSError, StorageError) as exc:
            return refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot write the instance: {_short(exc)}")
        if self._identical_copy_stored(header, data):
            incoming.discard()
            self._call_store(self.store.touch_series, header.series_key)  # an arrival, not a new version
            log.info("instance %s of series %s from %s: identical to the stored copy; series left as it is",
                     sop_uid, header.series_key, calling)
            self._remember(event, header.series_key)
            return _status(StoreStatus.SUCCESS)
        try:
            final = self.files.instance_path(header.study_key, header.series_key, sop_uid)
            existed = final.exists()
            path = self.files.place_instance(incoming, header.study_key, header.series_key)
        except (OSError, StorageError) as exc:
            return refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot write the instance: {_short(exc)}", header)
        try:
            row = self._record_row(header, calling, path, len(incoming.data))
        except StorageError as exc:
            if not existed:  # refused: no file without its row (a replaced copy keeps its row, so it stays)
                path.unlink(missing_ok=True)
            return refuse(StoreStatus.OUT_OF_RESOURCES, f"cannot record the instance: {_short(exc)}", header)
        self._remove_moved_copy(row, path)
        self._remember(event, header.series_key)
        log.debug("stored %s of series %s from %s", sop_uid, header.series_key, calling)
        return _status(StoreStatus.SUCCESS)

    def _remember(self, event: evt.Event, series_key: str) -> None:
        with self._lock:
            self._series_of.setdefault(id(event.assoc), set()).add(series_key)

    def _identical_copy_stored(self, header: InstanceHeader, data: bytes) -> bool:
        """Whether this SOP Instance UID's file in its series folder holds exactly these bytes (D7)."""
        try:
            final = self.files.instance_path(header.study_key, header.series_key, header.sop_instance_uid)
            if not final.is_file() or final.stat().st_size != len(data):
                return False
            return final.read_bytes() == data and self.store.has_instance(header.sop_instance_uid, final)
        except (OSError, StorageError):
            return False  # cannot tell: store it as any other copy

    def _remove_moved_copy(self, row, path) -> None:
        """A duplicate that moved to another series leaves no file behind in the old series' folder."""
        previous = getattr(row, "previous_path", None)
        if previous and str(previous) != str(path):
            try:
                Path(previous).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove the earlier copy %s: %s (reconcile removes it at start)",
                            previous, exc.strerror or exc)

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
            raise _WriteFailed(write_error, header)
        return header, incoming

    def close(self) -> None:
        """Stop the header-reading threads (after the SCP has stopped)."""
        self._readers.shutdown(wait=True)

    def _record_row(self, header: InstanceHeader, calling: str, path, size: int):
        return self.store.record_instance(
            sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
            series_key=header.series_key, series_instance_uid=header.series_instance_uid or header.series_key,
            study_instance_uid=header.study_instance_uid, transfer_syntax_uid=header.transfer_syntax_uid,
            calling_ae=calling, path=path, size=size, modality=header.modality, geometry=header.geometry,
            durable=False)  # the fsynced file is the truth: a row lost to a power cut is rebuilt at start (reconcile)

    def _refuse(self, status: StoreStatus, reason: str, calling: str, sop_uid: str, sop_class: str,
                transfer_syntax: str, header: InstanceHeader | None = None, event: evt.Event | None = None) -> Dataset:
        """Answer a failure, record why, and hold the series it belongs to (or the association's) as incomplete.

        Without ``event`` the association is the current thread (pynetdicom runs the handlers in it).
        """
        log.warning("refused instance %s from %s: 0x%04X %s", sop_uid, calling, status, reason)
        self._call_store(self.store.record_rejected_instance, calling_ae=calling, reason=f"0x{status:04X} {reason}",
                         sop_instance_uid=_uid_or_none(sop_uid), sop_class_uid=_uid_or_none(sop_class),
                         transfer_syntax_uid=_uid_or_none(transfer_syntax))
        assoc = event.assoc if event is not None else threading.current_thread()
        with self._lock:
            keys = {header.series_key} if header is not None else set(self._series_of.get(id(assoc), ()))
        if keys:
            self.mark_incomplete(keys, f"instance {_uid_or_none(sop_uid) or '?'} refused (0x{status:04X})")
        return _status(status, reason)


class _WriteFailed(Exception):
    """The bytes could not be written, but the header was read: the series is known."""

    def __init__(self, error: Exception, header: InstanceHeader):
        super().__init__(str(error))
        self.error = error
        self.header = header


def _idle_timeout(assoc) -> bool:
    """Whether the node aborted this association because it was idle (pynetdicom's network timeout)."""
    try:
        return bool(assoc.dul.idle_timer_expired())
    except Exception:  # noqa: BLE001 - not knowing means: treat the abort as the peer's
        return False


def _uid_or_none(value: str) -> str | None:
    """A value that fits a UID column (64 characters), else None: a hostile UID never breaks the reason's row."""
    return value if value and len(value) <= 64 else (value[:64] if value else None)


def _status(status: StoreStatus, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = comment[:_COMMENT_MAX]
    return ds


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _calling_ae(event: evt.Event) -> str:
    return _assoc_calling(event.assoc)


def _assoc_calling(assoc) -> str:
    return str(assoc.requestor.ae_title or getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()


def _called_ae(assoc) -> str:
    """The called AE title the peer's A-ASSOCIATE-RQ named (D9), else the title the node answered as."""
    requested = getattr(assoc.requestor.primitive, "called_ae_title", None)
    return str(requested or assoc.acceptor.ae_title or "").strip()[:16]


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: the node is up."""
    return 0x0000


def handle_store(event: evt.Event, receiver: Receiver) -> Dataset:
    return receiver.store_instance(event)


def handle_accepted(event: evt.Event, receiver: Receiver) -> None:
    receiver.accepted(event)


def handle_released(event: evt.Event, receiver: Receiver) -> None:
    receiver.released(event)


def handle_aborted(event: evt.Event, receiver: Receiver) -> None:
    receiver.aborted(event)


def build_ae(settings: ScpSettings) -> AE:
    """An AE that accepts Verification and every storage class in the accepted transfer syntaxes."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = 0  # no limit on what peers send per PDU: fewer, larger reads
    # Admission (dimse.admission) checks titles and limits itself; pynetdicom's own count includes
    # connections not yet associated, so its limit is set above anything admission lets through.
    ae.maximum_associations = settings.max_associations + settings.max_pending + settings.max_peer_connections
    ae.require_calling_aet = []
    ae.require_called_aet = False
    ae.acse_timeout = settings.associate_timeout_s
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def start_scp(settings: ScpSettings, receiver: Receiver) -> AdmissionServer:
    """Start the SCP in background threads and return its server (``.shutdown()`` stops it)."""
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_ACCEPTED, handle_accepted, [receiver]),
        (evt.EVT_RELEASED, handle_released, [receiver]),
        (evt.EVT_ABORTED, handle_aborted, [receiver]),
    ]
    server = ae.make_server((settings.host, settings.port), evt_handlers=handlers, ssl_context=settings.ssl_context,
                            server_class=AdmissionServer, limits=settings.limits(), on_refused=receiver.refused)
    thread = threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True)
    thread.start()
    ae._servers.append(server)  # as AE.start_server does: server.shutdown() removes it
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
