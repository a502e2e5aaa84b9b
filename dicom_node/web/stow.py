"""STOW-RS receive: ``POST /dicom-web/studies`` (multipart/related; type="application/dicom").

The same promise as C-STORE: an instance is listed as stored in the answer only once its
bytes are on disk with fsync (``InstanceFiles``: O_SYNC write, rename) and its row is
committed in SQL (``durable=True``: the commit is fsynced too, since no association
release follows to reconcile at start). The answer is sent after every part is done, so a
node killed mid-request has acknowledged nothing of that request.

Each part is checked as a C-STORE payload is (``dicom_node.dimse.payload``) and the disk
watermark applies (``DiskGuard``); a refused part is listed in the answer's
FailedSOPSequence with the status a C-STORE would get (FailureReason 0xA700, 0xC000...),
and recorded in ``rejected_instances``. HTTP status (PS3.18 10.5.3): 200 every part
stored, 202 some stored, 409 none stored; a body that is not multipart/related of
application/dicom is 415 (or 400 when its boundary is missing), with the reason. A body
larger than ``stow_max_mb`` is 413: refused by its Content-Length before it is read, or as
soon as the stream passes the cap, so one request cannot take the node's memory; the
refusal is recorded in ``rejected_instances`` like any other.

The sender is recorded with the calling AE title ``STOW_CALLING_AE``; when the request
ends, its series are marked released (a completion signal, as at an association's end).
"""
from __future__ import annotations

import io
import logging
import re

import pydicom
from starlette.requests import Request
from starlette.responses import JSONResponse

from storage.errors import StorageError

from dicom_node.dimse.payload import PayloadError, inspect_payload
from dicom_node.dimse.status import StoreStatus
from dicom_node.web.context import WebContext

log = logging.getLogger(__name__)

STOW_CALLING_AE = "DICOMWEB"
DICOM_JSON = "application/dicom+json"


class NotMultipart(ValueError):
    """The body is not multipart/related of application/dicom; ``status`` is 415 or 400."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def split_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(part content type, part body) of a multipart/related message; NotMultipart when it is not one."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind != "multipart/related":
        raise NotMultipart(415, f"the body must be multipart/related; type=\"application/dicom\", not {kind or 'none'!r}")
    type_match = re.search(r'type="?([^";]+)"?', content_type, re.IGNORECASE)
    if type_match and type_match.group(1).strip().lower() != "application/dicom":
        raise NotMultipart(415, f"only application/dicom parts are taken, not {type_match.group(1)!r}")
    boundary = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not boundary:
        raise NotMultipart(400, "multipart/related without a boundary parameter")
    delimiter = b"--" + boundary.group(1).strip().encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise NotMultipart(400, "no part found between the boundaries")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, separator, data = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            raise NotMultipart(400, "a part has no header/body separator")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        part_type = ""
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                part_type = value.strip().lower()
        parts.append((part_type, data))
    return parts


def _identity(data: bytes) -> tuple[str, str]:
    """SOP Class and Instance UID from the part's file meta (or data set); ('', '') when unreadable."""
    try:
        meta = pydicom.filereader.read_file_meta_info(io.BytesIO(data))
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        if sop_class and sop_uid:
            return sop_class, sop_uid
    except Exception:  # noqa: BLE001 - unreadable meta: the data set may still say
        pass
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - not DICOM at all
        return "", ""


class StowReceiver:
    """Stores the parts of STOW-RS requests into the node's files and store."""

    def __init__(self, context: WebContext):
        self.context = context
        from storage import InstanceFiles

        self.files = InstanceFiles(context.config.data_dir)

    def store_part(self, part_type: str, data: bytes) -> tuple[str, str, int, str, str | None]:
        """(sop class, sop uid, status, reason, series key) of one part; status 0 means stored (fsync + row)."""
        sop_class, sop_uid = _identity(data)
        if part_type and part_type.split(";")[0].strip() != "application/dicom":
            return sop_class, sop_uid, int(StoreStatus.CANNOT_UNDERSTAND), f"part type {part_type!r} is not DICOM", None
        refusal = self.context.guard.refusal()
        if refusal:
            return sop_class, sop_uid, int(StoreStatus.OUT_OF_RESOURCES), refusal, None
        if not sop_class or not sop_uid:
            return sop_class, sop_uid, int(StoreStatus.CANNOT_UNDERSTAND), "part is not a DICOM file", None
        try:
            header = inspect_payload(data, sop_class, sop_uid)
        except PayloadError as exc:
            return sop_class, sop_uid, int(exc.status), exc.reason, None
        try:
            incoming = self.files.incoming(sop_uid, data)
            incoming.write()
            path = self.files.place_instance(incoming, header.study_key, header.series_key)
            self.context.store.record_instance(
                sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
                series_key=header.series_key, series_instance_uid=header.series_instance_uid or header.series_key,
                study_instance_uid=header.study_instance_uid, transfer_syntax_uid=header.transfer_syntax_uid,
                calling_ae=STOW_CALLING_AE, path=path, size=len(data), modality=header.modality,
                geometry=header.geometry, durable=True)
        except (OSError, StorageError) as exc:
            return sop_class, sop_uid, int(StoreStatus.OUT_OF_RESOURCES), \
                f"cannot store the instance: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", None
        return sop_class, sop_uid, 0, "", header.series_key

    def receive(self, parts: list[tuple[str, bytes]]) -> tuple[int, dict]:
        """Store every part; (HTTP status, the STOW-RS answer as DICOM JSON)."""
        stored, failed, keys = [], [], set()
        for part_type, data in parts:
            sop_class, sop_uid, status, reason, key = self.store_part(part_type, data)
            if status == 0:
                stored.append(_referenced(sop_class, sop_uid))
                keys.add(key)
                continue
            log.warning("STOW-RS: refused instance %s: 0x%04X %s", sop_uid or "?", status, reason)
            self.record_refusal(sop_class, sop_uid, status, reason)
            failed.append({**_referenced(sop_class, sop_uid), "00081197": {"vr": "US", "Value": [status]}})
        if keys:
            self._released(sorted(keys))
        answer = {}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        http = 200 if not failed else (202 if stored else 409)
        return http, answer

    def record_refusal(self, sop_class: str, sop_uid: str, status: int, reason: str) -> None:
        try:
            self.context.store.record_rejected_instance(calling_ae=STOW_CALLING_AE, reason=f"0x{status:04X} {reason}",
                                                        sop_instance_uid=sop_uid or None,
                                                        sop_class_uid=sop_class or None)
        except StorageError as exc:
            log.error("STOW-RS: could not record a refusal: %s", exc)

    def _released(self, keys: list[str]) -> None:
        try:
            self.context.store.mark_association_released(keys)
        except StorageError as exc:
            log.error("STOW-RS: could not mark series released: %s", exc)
        self.context.wake_completion()


def _referenced(sop_class: str, sop_uid: str) -> dict:
    item = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    return item


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to be over ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def stow_route(context: WebContext):
    """The Starlette endpoint of ``POST /dicom-web/studies``."""
    receiver = StowReceiver(context)

    async def stow(request: Request):
        limit = int(context.config.stow_max_mb * 1024 * 1024)
        body = await read_capped(request, limit)
        if body is None:
            reason = f"the request body exceeds the STOW-RS cap of {context.config.stow_max_mb:g} MB (stow_max_mb)"
            log.warning("STOW-RS: refused a request: %s", reason)
            receiver.record_refusal("", "", 0xA700, reason)
            return JSONResponse({"error": reason}, status_code=413)
        try:
            parts = split_parts(request.headers.get("content-type", ""), body)
        except NotMultipart as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        from starlette.concurrency import run_in_threadpool

        status, answer = await run_in_threadpool(receiver.receive, parts)
        return JSONResponse(answer, status_code=status, media_type=DICOM_JSON)

    return stow
