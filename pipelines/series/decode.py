"""Decode a planned CT stack straight into one preallocated float32 volume, in Hounsfield units.

pydicom 3 decodes the pixel data with the installed plugins (native and deflated data
itself; JPEG baseline/extended/lossless and JPEG 2000 through pylibjpeg-libjpeg and
pylibjpeg-openjpeg or Pillow; HTJ2K through pylibjpeg-openjpeg; JPEG-LS through pyjpegls or
pylibjpeg-libjpeg; RLE itself or through pylibjpeg-rle). No GDCM is needed: the loader's
tests decode each of these syntaxes from a real CT series. Each frame is read, rescaled with its own RescaleSlope and
RescaleIntercept and written into its slice of the output, so a series costs one float32
volume plus one file and one frame at a time. A frame that cannot be decoded, or decodes
to the wrong size, refuses the series with the instance's UID.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
from pydicom import dcmread
from pydicom.pixels import iter_pixels
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from scipy import ndimage

from pipelines.errors import SeriesRejected
from pipelines.series.checks import StackPlan
from pipelines.series.frames import Frame, Instance, is_multi_frame


def _corrupt(frame: Frame, uid: str, why: str) -> SeriesRejected:
    return SeriesRejected("corrupt_pixels", uid, f"pixel data of instance {frame.label} cannot be decoded: {why}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read(instance: Instance):
    """The whole instance; a bare dataset (no file meta) gets the transfer syntax it was read with."""
    ds = dcmread(instance.path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _pixels(instance: Instance, frames: list[Frame], uid: str) -> Iterator[tuple[Frame, np.ndarray]]:
    """The stored values of ``frames`` (all of one instance), each checked against the header's matrix size."""
    try:
        ds = _read(instance)
        if is_multi_frame(instance.header):
            wanted = sorted({f.frame_number - 1 for f in frames})
            decoded = dict(zip(wanted, iter_pixels(ds, indices=wanted)))
            arrays = [decoded[f.frame_number - 1] for f in frames]
        else:
            arrays = [ds.pixel_array] * len(frames)
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure is this instance's fault: say so, with the UID
        raise _corrupt(frames[0], uid, _one_line(exc)) from None
    for frame, array in zip(frames, arrays):
        if array.shape != (frame.rows, frame.columns):
            raise _corrupt(frame, uid, f"decodes to shape {array.shape}, the header says {frame.rows}x{frame.columns}")
        yield frame, array


def _rescale_into(array: np.ndarray, frame: Frame, out: np.ndarray) -> None:
    """out = stored value x RescaleSlope + RescaleIntercept (1 and 0 when absent), in place."""
    out[...] = array
    if frame.slope is not None and frame.slope != 1.0:
        out *= np.float32(frame.slope)
    if frame.intercept:
        out += np.float32(frame.intercept)


def decode_stack(instances: list[Instance], plan: StackPlan, out: np.ndarray, uid: str) -> None:
    """Fill ``out`` (slices, rows, columns) float32 with the HU of ``plan.frames``, one instance at a time."""
    by_instance: dict[int, list[int]] = defaultdict(list)
    for k, frame in enumerate(plan.frames):
        by_instance[frame.instance].append(k)
    for index in sorted(by_instance):
        slices = by_instance[index]
        for k, (frame, array) in zip(slices, _pixels(instances[index], [plan.frames[k] for k in slices], uid)):
            _rescale_into(array, frame, out[k])


def decode_frame(instances: list[Instance], frame: Frame, uid: str) -> np.ndarray:
    """One frame's HU as a float32 (rows, columns) array."""
    (_, array), = list(_pixels(instances[frame.instance], [frame], uid))
    out = np.empty(array.shape, np.float32)
    _rescale_into(array, frame, out)
    return out


def check_duplicates(instances: list[Instance], plan: StackPlan, hu: np.ndarray, uid: str) -> list[str]:
    """Compare each second image at a slice's position with the slice: identical ones are dropped
    (returned as a repair), different ones refuse the series."""
    if not plan.duplicates:
        return []
    for k, frame in plan.duplicates:
        if not np.array_equal(decode_frame(instances, frame, uid), hu[k]):
            raise SeriesRejected("duplicate_conflict", uid,
                                 f"instances {plan.frames[k].label} and {frame.label} lie at the same position "
                                 f"{[round(float(v), 3) for v in frame.position]} with different pixels")
    labels = ", ".join(f.label for _, f in plan.duplicates[:3])
    more = len(plan.duplicates) - 3
    return [f"dropped_duplicates: left out {len(plan.duplicates)} image(s) identical to another at the same "
            f"position ({labels}{f' and {more} more' if more > 0 else ''})"]


def shift_slices(hu: np.ndarray, shifts: np.ndarray, fill_hu: float) -> None:
    """Shift each slice in-plane by its (rows, columns) offset, linear interpolation, in place."""
    scratch = np.empty(hu.shape[1:], np.float32)
    for k, shift in enumerate(shifts):
        if np.any(shift):
            ndimage.shift(hu[k], shift, output=scratch, order=1, mode="constant", cval=fill_hu, prefilter=False)
            hu[k] = scratch
