"""Validation of a CT series from its headers: what is dropped, what is refused, and why.

Every check either passes, repairs in a documented way (the repair is recorded as
``"<code>: <what was done>"`` in ``CTSeries.repairs``), or raises ``SeriesRejected`` with
a code from ``REJECTION_CODES`` and a one-line reason naming the series and instances by
UID. Documented repairs:

* ``dropped_non_ct``: instances of another SOP class in a CT series (a dose screen capture,
  a report) are left out when CT images remain;
* ``dropped_localizers``: images whose ImageType/FrameType says LOCALIZER, and a few
  images (at most ``max_localizers``) in a plane more than 45 degrees off the majority's,
  are left out: scouts and topograms are never part of the volume;
* ``dropped_duplicates``: a second image at the same position with the same pixels is
  left out (compared after decoding); different pixels at one position are refused;
* ``resampled_tilt``: slices stacked with a constant in-plane drift (gantry tilt) are
  shifted in-plane onto an orthogonal grid (see ``TiltPlan``), at most ``max_tilt_degrees``.

Slices are always put in order along the slice normal, whatever their InstanceNumber or
file order; that is not a repair. Missing slices (gaps), irregular spacing, mixed
orientations, pixel spacings or matrix sizes, missing geometry, too few slices and a
series whose instances name more than one study or patient are refused.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import SeriesRejected
from pipelines.series.frames import Frame

REJECTION_CODES = (
    "no_instances",         # nothing to load
    "not_ct",               # no CT image in the series (MR, secondary capture, SEG, SR...)
    "unsupported_pixels",   # colour, not monochrome, a modality LUT table instead of a rescale
    "mixed_instances",      # single-frame and multi-frame instances, or several multi-frame ones
    "mixed_studies",        # instances of one SeriesInstanceUID that name different studies or patients
    "missing_geometry",     # ImagePositionPatient, ImageOrientationPatient or PixelSpacing absent
    "orientation",          # image planes that differ (and are not clearly localizers)
    "pixel_spacing",        # PixelSpacing differs between images
    "matrix_size",          # Rows/Columns differ between images
    "too_few_slices",       # fewer slices than SeriesRules.min_slices
    "duplicate_conflict",   # two images at one position with different pixels
    "gap",                  # missing slices: the positions are listed
    "irregular_spacing",    # steps between slices differ (and are not whole gaps)
    "gantry_tilt",          # a tilt beyond max_tilt_degrees, or resample_tilt=False
    "misaligned",           # slice positions off the normal, and not a constant tilt
    "corrupt_pixels",       # pixel data cannot be decoded, or decodes to the wrong size
)

LOCALIZER_ANGLE_DEGREES = 45.0


@dataclass(frozen=True)
class SeriesRules:
    """What the loader accepts, repairs or refuses. The defaults suit diagnostic spine CT.

    * ``min_slices`` (20): fewer distinct slices is refused (too short for a spine model).
    * ``orientation_tolerance`` (1e-3): largest difference of an ImageOrientationPatient
      cosine between images still counted as the same plane (~0.06 degree).
    * ``pixel_spacing_tolerance_mm`` (1e-3): largest PixelSpacing difference between images.
    * ``position_tolerance_mm`` (0.05): largest in-plane drift of slice positions still
      counted as a straight stack, and the tolerance of the tilt and spacing fits.
    * ``slice_spacing_tolerance`` (0.05): largest relative deviation of a step between
      slices from the series' slice spacing (5 %).
    * ``max_gap_factor`` (1.5): a step longer than this times the slice spacing is a gap
      (missing slices, listed in the refusal); a step between the tolerance and this factor
      is irregular spacing (refused too).
    * ``resample_tilt`` (True) and ``max_tilt_degrees`` (30): a gantry tilt up to this
      angle is resampled onto an orthogonal grid; beyond it, or with ``resample_tilt=False``,
      the series is refused.
    * ``max_localizers`` (3): at most this many images in a plane more than 45 degrees off
      the majority are dropped as localizers without a LOCALIZER ImageType; more are refused.
    * ``fill_hu`` (-1024): the value of voxels a tilt resampling shifts in from outside the
      field of view (air).
    """

    min_slices: int = 20
    orientation_tolerance: float = 1e-3
    pixel_spacing_tolerance_mm: float = 1e-3
    position_tolerance_mm: float = 0.05
    slice_spacing_tolerance: float = 0.05
    max_gap_factor: float = 1.5
    resample_tilt: bool = True
    max_tilt_degrees: float = 30.0
    max_localizers: int = 3
    fill_hu: float = -1024.0

    def __post_init__(self) -> None:
        if self.min_slices < 2:
            raise ValueError(f"min_slices must be at least 2 (a volume needs a slice spacing), not {self.min_slices}")
        if self.max_gap_factor <= 1 + self.slice_spacing_tolerance:
            raise ValueError(f"max_gap_factor ({self.max_gap_factor}) must exceed 1 + slice_spacing_tolerance")
        if min(self.orientation_tolerance, self.pixel_spacing_tolerance_mm, self.position_tolerance_mm,
               self.slice_spacing_tolerance) < 0:
            raise ValueError("tolerances must not be negative")


@dataclass
class TiltPlan:
    """How to put a tilted stack on an orthogonal grid: an in-plane shift (rows, columns) in pixels per slice.

    Slice k of the output keeps the plane of source slice k (same distance along the
    normal), so only in-plane shifts are needed, never an interpolation across slices.
    The output grid's in-plane origin is the middle slice's, so that slice is not
    interpolated and the field of view lost at either end is at most half the drift.
    """

    shifts: np.ndarray          # (slices, 2): scipy.ndimage.shift offsets (rows, columns)
    origin: np.ndarray          # (3,) ImagePositionPatient of output slice 0
    angle_degrees: float
    max_shift_mm: float


@dataclass
class StackPlan:
    """The slices to load, in order along the normal, and what the checks found on the way."""

    frames: list[Frame]                         # one per output slice, sorted along the normal
    duplicates: list[tuple[int, Frame]]         # (output slice, a second frame at its position)
    origin: np.ndarray
    direction: np.ndarray                       # columns: row, column, normal directions
    spacing: tuple[float, float, float]         # (between slices, between rows, between columns)
    tilt: TiltPlan | None = None
    repairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _uids(frames: list[Frame], limit: int = 3) -> str:
    """A short list of frame labels for a message: the first few, then how many more."""
    labels = [f.label for f in frames[:limit]]
    more = len(frames) - limit
    return ", ".join(labels) + (f" and {more} more" if more > 0 else "")


def drop_localizers(frames: list[Frame], repairs: list[str]) -> list[Frame]:
    """Leave out the images whose ImageType/FrameType says LOCALIZER, recording the repair."""
    scouts = [f for f in frames if f.is_localizer]
    if scouts:
        repairs.append(f"dropped_localizers: left out {len(scouts)} LOCALIZER image(s) ({_uids(scouts)})")
    return [f for f in frames if not f.is_localizer]


def require_geometry(frames: list[Frame], uid: str) -> None:
    """Refuse images without a readable position, orientation, pixel spacing or matrix size."""
    for name, test in (("ImagePositionPatient", lambda f: f.position is None),
                       ("ImageOrientationPatient", lambda f: f.orientation is None),
                       ("PixelSpacing", lambda f: f.pixel_spacing is None or np.any(f.pixel_spacing <= 0)),
                       ("Rows/Columns", lambda f: f.rows <= 0 or f.columns <= 0)):
        missing = [f for f in frames if test(f)]
        if missing:
            raise SeriesRejected("missing_geometry", uid,
                                 f"{name} is missing or unreadable in {len(missing)} image(s): {_uids(missing)}")


def _unit_vectors(orientation: np.ndarray, uid: str, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines, normalised and made orthogonal; refused when not (nearly) so."""
    row, col = orientation[:3], orientation[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if min(nr, nc) < 0.9 or max(nr, nc) > 1.1 or abs(np.dot(row, col)) > 0.01 * nr * nc:
        raise SeriesRejected("orientation", uid,
                             f"ImageOrientationPatient {list(orientation)} of {frame.label} is not two unit "
                             "vectors at right angles")
    row = row / nr
    col = col - np.dot(col, row) * row
    return row, col / np.linalg.norm(col)


def _majority(frames: list[Frame], key) -> tuple:
    """The most common value of ``key`` (ties: the first seen), as a tuple."""
    return Counter(key(f) for f in frames).most_common(1)[0][0]


def _orientation_key(f: Frame) -> tuple:
    return tuple(np.round(f.orientation, 3))


def consistent_planes(frames: list[Frame], rules: SeriesRules, uid: str, repairs: list[str]) -> list[Frame]:
    """One plane orientation, matrix size and pixel spacing for the series.

    Images in a plane more than 45 degrees off the majority's are dropped as localizers
    when there are at most ``max_localizers`` of them; any other difference is refused.
    """
    reference = np.array(_majority(frames, _orientation_key), float)
    off = [f for f in frames if np.max(np.abs(f.orientation - reference)) > rules.orientation_tolerance]
    if off:
        normal = np.cross(reference[:3], reference[3:])
        steep = [f for f in off
                 if abs(np.dot(np.cross(f.orientation[:3], f.orientation[3:]), normal))
                 < np.cos(np.radians(LOCALIZER_ANGLE_DEGREES))]
        if len(steep) < len(off) or len(off) > rules.max_localizers:
            raise SeriesRejected("orientation", uid,
                                 f"{len(off)} image(s) have an ImageOrientationPatient other than the majority's "
                                 f"{[float(v) for v in reference]}: {_uids(off)}")
        repairs.append(f"dropped_localizers: left out {len(off)} image(s) in a plane more than "
                       f"{LOCALIZER_ANGLE_DEGREES:.0f} degrees off the series' ({_uids(off)})")
        frames = [f for f in frames if all(f is not o for o in off)]
    size = _majority(frames, lambda f: (f.rows, f.columns))
    odd = [f for f in frames if (f.rows, f.columns) != size]
    if odd:
        raise SeriesRejected("matrix_size", uid, f"{len(odd)} image(s) are not {size[0]}x{size[1]} like the rest "
                                                 f"(e.g. {odd[0].rows}x{odd[0].columns}): {_uids(odd)}")
    spacing = np.array(_majority(frames, lambda f: tuple(f.pixel_spacing)), float)
    odd = [f for f in frames if np.max(np.abs(f.pixel_spacing - spacing)) > rules.pixel_spacing_tolerance_mm]
    if odd:
        raise SeriesRejected("pixel_spacing", uid,
                             f"{len(odd)} image(s) have a PixelSpacing other than {[float(v) for v in spacing]} "
                             f"(e.g. {[float(v) for v in odd[0].pixel_spacing]}): {_uids(odd)}")
    return frames


def order_and_deduplicate(frames: list[Frame], normal: np.ndarray,
                          rules: SeriesRules) -> tuple[list[Frame], list[tuple[int, Frame]], np.ndarray]:
    """Sort along the normal; frames at one position become one slice plus duplicates to compare.

    Ties are broken by InstanceNumber, SOPInstanceUID and frame number, so the kept frame
    does not depend on file order.
    """
    def along(f: Frame) -> float:
        return float(np.dot(f.position, normal))

    ordered = sorted(frames, key=lambda f: (along(f), f.instance_number or 0, f.sop_instance_uid, f.frame_number))
    kept: list[Frame] = []
    duplicates: list[tuple[int, Frame]] = []
    for f in ordered:
        if kept and np.linalg.norm(f.position - kept[-1].position) <= rules.position_tolerance_mm:
            duplicates.append((len(kept) - 1, f))
        else:
            kept.append(f)
    return kept, duplicates, np.array([along(f) for f in kept])


def _tilt_plan(frames: list[Frame], row: np.ndarray, col: np.ndarray, along: np.ndarray,
               rules: SeriesRules, uid: str) -> TiltPlan | None:
    """None for a straight stack; a TiltPlan for a constant in-plane drift; refused otherwise."""
    offsets = np.array([[np.dot(f.position - frames[0].position, row),
                         np.dot(f.position - frames[0].position, col)] for f in frames])
    drift = float(np.max(np.linalg.norm(offsets - offsets[0], axis=1)))
    if drift <= rules.position_tolerance_mm:
        return None
    design = np.stack([along - along[0], np.ones_like(along)], axis=1)
    coef, *_ = np.linalg.lstsq(design, offsets, rcond=None)
    residual = float(np.max(np.linalg.norm(design @ coef - offsets, axis=1)))
    if residual > rules.position_tolerance_mm:
        raise SeriesRejected("misaligned", uid,
                             f"slice positions wander up to {drift:.2f} mm off the slice normal, neither a straight "
                             "stack nor a constant gantry tilt")
    angle = float(np.degrees(np.arctan(np.linalg.norm(coef[0]))))
    if not rules.resample_tilt or angle > rules.max_tilt_degrees:
        why = "resampling is disabled" if not rules.resample_tilt else f"more than {rules.max_tilt_degrees:g} degrees"
        raise SeriesRejected("gantry_tilt", uid, f"gantry tilt of {angle:.1f} degrees ({why})")
    middle = len(frames) // 2
    reference = offsets[middle]
    spacing = frames[0].pixel_spacing
    shifts = np.stack([(offsets[:, 1] - reference[1]) / spacing[0], (offsets[:, 0] - reference[0]) / spacing[1]], 1)
    whole = np.rint(shifts)
    shifts = np.where(np.abs(shifts - whole) < 1e-4, whole, shifts)  # whole pixels stay exact, not 4.0000000001
    origin = frames[0].position + reference[0] * row + reference[1] * col
    max_shift = float(np.max(np.linalg.norm(offsets - reference, axis=1)))
    return TiltPlan(shifts, origin, angle, max_shift)


def slice_spacing(frames: list[Frame], along: np.ndarray, rules: SeriesRules, uid: str) -> float:
    """The spacing between slices; gaps (listed) and irregular steps are refused."""
    steps = np.diff(along)
    base = float(np.median(steps))
    tolerance = max(rules.slice_spacing_tolerance * base, rules.position_tolerance_mm)
    missing: list[float] = []
    for a, step in zip(along[:-1], steps):
        if step > rules.max_gap_factor * base:
            count = max(int(round(step / base)) - 1, 1)
            missing.extend(a + step * m / (count + 1) for m in range(1, count + 1))
    if missing:
        shown = ", ".join(f"{v:.2f}" for v in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise SeriesRejected("gap", uid, f"{len(missing)} slice(s) missing at {shown} mm along the slice normal "
                                         f"(slice spacing {base:.3g} mm)")
    odd = np.flatnonzero(np.abs(steps - base) > tolerance)
    if odd.size:
        i = int(odd[0])
        raise SeriesRejected("irregular_spacing", uid,
                             f"slice spacing varies: {steps[i]:.3f} mm between {frames[i].label} and "
                             f"{frames[i + 1].label}, {base:.3f} mm elsewhere")
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    if np.max(np.abs(along - along[0] - spacing * np.arange(len(along)))) > tolerance:
        raise SeriesRejected("irregular_spacing", uid, f"slice positions drift off a regular {spacing:.3f} mm grid")
    return spacing


def plan_stack(frames: list[Frame], rules: SeriesRules, uid: str) -> StackPlan:
    """Run the header checks in order and return the slices to decode, with the output geometry.

    ``frames`` are the CT image frames of one series (non-CT instances already left out).
    """
    repairs: list[str] = []
    warnings: list[str] = []
    frames = drop_localizers(frames, repairs)
    if not frames:
        raise SeriesRejected("too_few_slices", uid, "only localizer images, no axial slices")
    require_geometry(frames, uid)
    frames = consistent_planes(frames, rules, uid, repairs)
    row, col = _unit_vectors(frames[0].orientation, uid, frames[0])
    normal = np.cross(row, col)
    kept, duplicates, along = order_and_deduplicate(frames, normal, rules)
    if len(kept) < rules.min_slices:
        raise SeriesRejected("too_few_slices", uid,
                             f"{len(kept)} distinct slice(s), fewer than the {rules.min_slices} required")
    tilt = _tilt_plan(kept, row, col, along, rules, uid)
    spacing = slice_spacing(kept, along, rules, uid)
    numbers = [f.instance_number for f in kept if f.frame_number == 0]
    if None not in numbers and len(numbers) > 2:
        steps = np.diff(np.array(numbers, float))
        if not (np.all(steps > 0) or np.all(steps < 0)):
            warnings.append("InstanceNumber order differs from the order of positions along the slice normal; "
                            "slices are ordered by position")
    sy, sx = (float(v) for v in kept[0].pixel_spacing)
    direction = np.stack([row, col, normal], axis=1)
    origin = tilt.origin if tilt is not None else kept[0].position.astype(np.float64)
    if tilt is not None:
        repairs.append(f"resampled_tilt: gantry tilt of {tilt.angle_degrees:.1f} degrees; each slice shifted in-plane "
                       f"(linear interpolation) onto an orthogonal grid through the middle slice, up to "
                       f"{tilt.max_shift_mm:.1f} mm, the uncovered edge filled with {rules.fill_hu:g} HU")
    return StackPlan(kept, duplicates, origin, direction, (spacing, sy, sx), tilt, repairs, warnings)
