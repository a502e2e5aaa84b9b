"""Check a received C-STORE payload and read what the node records about it, without decoding pixels.

The SCP hands the bytes exactly as received (file meta + data set) to ``inspect_payload``:
it parses the data set (pixel data stays encoded bytes), refuses what cannot be a usable
instance (not DICOM, truncated, an image without its pixels) with the DIMSE status a peer
understands, and returns an ``InstanceHeader``: the UIDs, the key of the series it belongs to
and the slice geometry that series completion needs.

A series without a SeriesInstanceUID (real exports have such files) gets the key the
pipeline derives from what its instances share (``pipelines.series.loader.derived_series_uid``),
so that its slices still land in one series, named as ``spine-node process`` names it.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipelines.series.loader import derived_series_uid, derived_study_uid

from dicom_node.dimse.status import StoreStatus
from dicom_node.errors import NodeError

# Encapsulated pixel data ends with a Sequence Delimitation Item (FFFE,E0DD) of length 0.
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_PLAIN_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class PayloadError(NodeError):
    """A payload the node refuses: its DIMSE status and a one-line reason."""

    def __init__(self, status: StoreStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class InstanceHeader:
    """What the node records about one received instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    series_key: str
    study_key: str
    modality: str | None
    geometry: dict | None


def inspect_payload(data: bytes, sop_class_uid: str, sop_instance_uid: str) -> InstanceHeader:
    """Parse and check ``data`` (file meta + data set, as received); raise ``PayloadError`` if unusable.

    pydicom parses values lazily, so a wrong or unknown VR (Rows as US with 3 bytes, VR
    'ZZ') fails only when a value is read, with an error of its own (``BytesLengthException``,
    ``NotImplementedError``, ``struct.error``...). Every such error is 'cannot understand'
    with the element named, never an exception out of the SCP's handler (D8).
    """
    try:
        return _inspect(data, sop_class_uid, sop_instance_uid)
    except PayloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any conversion error of a hostile or broken data set
        raise PayloadError(StoreStatus.CANNOT_UNDERSTAND, f"cannot read the data set: {_conversion_reason(exc)}") \
            from exc


def _conversion_reason(exc: Exception) -> str:
    """A one-line reason: the exception's type and the element it names, without the value's bytes."""
    text = str(exc)
    tag = re.search(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)", text)
    vr = re.search(r"(?:VR|Representation) '([^']{0,4})'", text)
    where = f" in ({tag.group(1).upper()},{tag.group(2).upper()})" if tag else ""
    return f"{type(exc).__name__}{where}" + (f", VR {vr.group(1)!r}" if vr else "")


def _inspect(data: bytes, sop_class_uid: str, sop_instance_uid: str) -> InstanceHeader:
    ds = _parse(data)
    _check_complete(ds, data)
    declared = str(ds.get("SOPClassUID", "") or "")
    if declared and declared != sop_class_uid:
        raise PayloadError(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           f"data set SOP class {declared} differs from the request's {sop_class_uid}")
    _check_image_pixels(ds, data)
    if not _PLAIN_UID.fullmatch(sop_instance_uid) or len(sop_instance_uid) > 64:
        raise PayloadError(StoreStatus.CANNOT_UNDERSTAND, f"SOP Instance UID {sop_instance_uid[:64]!r} is not a UID")
    study = _uid(ds, "StudyInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    key = series_key_of(ds)
    return InstanceHeader(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        study_instance_uid=study,
        series_instance_uid=series,
        series_key=key,
        study_key=study_key_of(ds),
        modality=str(ds.get("Modality", "") or "") or None,
        geometry=slice_geometry(ds),
    )


def _parse(data: bytes) -> Dataset:
    """The data set, with pixel data left encoded; 'cannot understand' if it is not DICOM."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(io.BytesIO(data))
        except Exception as exc:  # pydicom raises many types on garbage; all mean the same here
            raise PayloadError(StoreStatus.CANNOT_UNDERSTAND,
                               f"payload is not a DICOM data set ({type(exc).__name__})") from exc
    for warning in caught:
        if "delimiter" in str(warning.message).lower() or "end of file" in str(warning.message).lower():
            raise PayloadError(StoreStatus.TRUNCATED, "payload truncated: data set ends before a delimiter")
    if len(ds) == 0:
        raise PayloadError(StoreStatus.CANNOT_UNDERSTAND, "payload holds no data element")
    return ds


def _check_complete(ds: Dataset, data: bytes) -> None:
    """Refuse a data set whose last element declares more bytes than were received."""
    for elem in ds._dict.values():  # raw elements: their declared length is still known
        if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED_LENGTH or elem.value is None:
            continue
        if len(elem.value) < elem.length:
            raise PayloadError(StoreStatus.TRUNCATED,
                               f"payload truncated: element ({elem.tag.group:04X},{elem.tag.element:04X}) "
                               f"declares {elem.length} bytes, {len(elem.value)} received")


def _check_image_pixels(ds: Dataset, data: bytes) -> None:
    """An image (it has Rows) must carry all its pixel data: native long enough, encapsulated closed."""
    if "Rows" not in ds:
        return
    raw = ds._dict.get(_PIXEL_DATA)
    if raw is None:
        raise PayloadError(StoreStatus.TRUNCATED, "image has no Pixel Data (payload truncated?)")
    if getattr(raw, "length", None) == _UNDEFINED_LENGTH:
        last = max(ds._dict)
        if last == _PIXEL_DATA and not data.endswith(_SEQUENCE_DELIMITER):
            raise PayloadError(StoreStatus.TRUNCATED, "payload truncated: encapsulated Pixel Data is not closed")
        return
    expected = _native_pixel_bytes(ds)
    got = len(raw.value) if raw.value is not None else 0
    if expected and got < expected:
        raise PayloadError(StoreStatus.TRUNCATED, f"payload truncated: Pixel Data has {got} of {expected} bytes")


def _native_pixel_bytes(ds: Dataset) -> int:
    """Bytes native Pixel Data must hold (0 if the header does not say)."""
    try:
        bits = int(ds.BitsAllocated)
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return 0
    return (pixels * frames * bits + 7) // 8


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    return value or None


def series_key_of(ds: Dataset) -> str:
    """The series' key: its SeriesInstanceUID when that is a plain UID, else the pipeline's derived UID.

    The same rule as ``pipelines.series.loader``, so that the node and ``spine-node process`` name a
    series without UID (or with a malformed one) alike.
    """
    uid = _uid(ds, "SeriesInstanceUID")
    if uid and len(uid) <= 64 and _PLAIN_UID.fullmatch(uid):
        return uid
    if uid:
        return generate_uid(entropy_srcs=["spine-node series key", uid])
    return derived_series_uid(ds)


def study_key_of(ds: Dataset) -> str:
    """The study's folder name: its StudyInstanceUID when that is a plain UID, else a derived one."""
    uid = _uid(ds, "StudyInstanceUID")
    if uid and len(uid) <= 64 and _PLAIN_UID.fullmatch(uid):
        return uid
    return derived_study_uid(ds) if not uid else generate_uid(entropy_srcs=["spine-node study key", uid])


def slice_geometry(ds: Dataset) -> dict | None:
    """Position and orientation of a single-frame image, or frame positions of a multi-frame one."""
    if "Rows" not in ds:
        return None
    geometry: dict = {"rows": _int(ds.get("Rows")), "columns": _int(ds.get("Columns")),
                      "frames": _int(ds.get("NumberOfFrames", 1)) or 1,
                      "instance_number": _int(ds.get("InstanceNumber"))}
    orientation = _floats(ds.get("ImageOrientationPatient"))
    position = _floats(ds.get("ImagePositionPatient"))
    spacing = _floats(ds.get("PixelSpacing"))
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        orientation = orientation or _functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = spacing or _functional(ds, "PixelMeasuresSequence", "PixelSpacing")
        geometry["frame_positions"] = _frame_positions(ds)
    geometry.update(orientation=orientation, position=position, pixel_spacing=spacing)
    return geometry


def _functional(ds: Dataset, sequence: str, keyword: str) -> list[float] | None:
    """An attribute from the shared functional groups, else from the first frame's."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            return _floats(getattr(ds[groups].value[0], sequence)[0].get(keyword))
        except (AttributeError, IndexError, KeyError, TypeError):
            continue
    return None


def _frame_positions(ds: Dataset) -> list[list[float]]:
    positions = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        try:
            positions.append(_floats(frame.PlanePositionSequence[0].ImagePositionPatient))
        except (AttributeError, IndexError):
            continue
    return [p for p in positions if p]


def _floats(values) -> list[float] | None:
    if values is None:
        return None
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
