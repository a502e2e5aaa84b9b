"""The QC picture of one analysed CT: the named vertebrae over the bone, readable at a glance.

Two panels side by side, each a thin-slab maximum intensity projection that follows the
spine's axis slice by slice (so a scoliotic or kyphotic spine stays in view):

* **sagittal** (left panel): a slab ``SAGITTAL_SLAB_MM`` thick around the axis, the
  patient's front on the left, head up (the radiological convention);
* **coronal** (right panel): a slab through the vertebral bodies and the rib heads, the
  patient's right on the left, head up; the ribs show, so a reader can count them.

Every vertebra is tinted and outlined in its level colour (``codes.level_colour``, the
SEG's colours) and named beside the spine. A lesion call is a red disc with a letter
(L lytic, B blastic, M mixed); any other call that is not "none" (an indeterminate one)
is a yellow disc with "?". Pixels are square: each panel is resampled from the voxel
spacing, so distances read true. The header says what the picture is; the footer
carries the naming verdict when one is given.

``qc_picture`` returns an RGB ``uint8`` array (rows, columns, 3), ready for a DICOM
secondary capture; ``write_png`` writes it to a file. Arrays are (z, y, x) in LPS order:
axis 0 towards the head, axis 1 towards the back, axis 2 towards the patient's left.
Text is drawn with Pillow's built-in font; nothing here reads patient data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipelines.levels import LEVELS
from pipelines.model.anatomy import column_axis
from pipelines.outputs.codes import level_colour

BONE_WINDOW = (-450.0, 1350.0)   # HU shown black .. white (width 1800, level 450)
SAGITTAL_SLAB_MM = 10.0          # half of it either side of the axis, left-right
CORONAL_SLAB_MM = (-40.0, 20.0)  # front .. back of the axis: the bodies, pedicles and rib heads
SAGITTAL_VIEW_MM = (-130.0, 90.0)  # front .. back of the axis shown
CORONAL_VIEW_MM = 120.0          # either side of the axis shown
AXIS_SMOOTH_MM = 8.0             # the slabs follow the spine's curve, not each slice's noise
TARGET_HEIGHT_PX = 900
MIN_PIXEL_MM = 0.25
TINT = 0.35                      # opacity of a level's colour over its voxels
HEADER_PX, FOOTER_PX, GAP_PX = 56, 64, 12
NOTE_PX = 420
"""The listing's extra width for the notes (collapse, change since the prior)."""
LESION_LETTERS = {"lytic": "L", "blastic": "B", "mixed": "M"}
LESION_RED = (230, 30, 30)
INDETERMINATE = (250, 210, 40)


@dataclass
class VertebraMark:
    """What the picture says about one vertebra: its level, its lesion call, and a short note (collapse, change)."""

    level: str
    lesion: str = "none"
    note: str = ""


def qc_picture(hu: np.ndarray, labels: np.ndarray, spacing, label_map: dict[int, str],
               marks: list[VertebraMark] | None = None, title: str = "", footer: str = "",
               ribs: list[tuple[float, str | None]] | None = None) -> np.ndarray:
    """The QC picture (RGB uint8) of ``labels`` over ``hu``, both LPS (z, y, x) arrays on one grid.

    ``label_map`` maps label ids to levels; ``marks`` give each level's lesion call
    (default: none; the list on the right shows them all, also a vertebra outside both
    slabs); ``title`` and ``footer`` are text (no patient data); ``ribs`` are rib levels
    found on the CT, (slice index, anatomical name or None), ticked at the coronal
    panel's left edge so that the network's names can be read against the rib count.
    """
    hu = np.asarray(hu, np.float32)
    levels = _level_lookup(label_map)
    axis = _axis(labels, levels, spacing)
    pixel = max(hu.shape[0] * float(spacing[0]) / TARGET_HEIGHT_PX, MIN_PIXEL_MM)
    lesions = {m.level: m.lesion for m in marks or []}
    notes = {m.level: m.note for m in marks or [] if m.note}
    panels = []
    for view in ("sagittal", "coronal"):
        grey, names, across = _panel(hu, labels, levels, axis, spacing, view)
        panels.append(_render(grey, names, across, spacing, pixel, view, lesions))
    if ribs:
        _rib_ticks(panels[1], ribs, hu.shape[0], float(spacing[0]) / pixel)
    found = [lv for lv in LEVELS if lv in set(label_map.get(int(i)) for i in np.unique(labels) if i)]
    if not found:
        for panel in panels:
            _banner(panel, "NO VERTEBRA FOUND")
    panels.append(_listing(found, lesions, panels[0].height, notes))
    return _compose(panels, title, footer)


def write_png(path: Path | str, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as a PNG file; returns the path."""
    path = Path(path)
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB").save(path, format="PNG", optimize=True)
    return path


# --- projections ------------------------------------------------------------------------------------

def _level_lookup(label_map: dict[int, str]) -> np.ndarray:
    """Label id -> level index + 1 (T1 = 1 ... L5 = 17), 0 for background and labels that are not vertebrae."""
    lut = np.zeros(256, np.uint8)
    for label, level in label_map.items():
        if level in LEVELS and 0 < label < 256:
            lut[label] = LEVELS.index(level) + 1
    return lut


def _axis(labels: np.ndarray, levels: np.ndarray, spacing) -> np.ndarray:
    """Per slice, the (y, x) index the slabs follow: the column's axis, smoothed over ``AXIS_SMOOTH_MM``.

    Without any vertebra, the middle of the image.
    """
    vertebra = levels[labels] > 0
    axis = column_axis(vertebra, spacing)
    if np.isnan(axis).any():
        return np.tile([labels.shape[1] / 2, labels.shape[2] / 2], (labels.shape[0], 1))
    sigma = AXIS_SMOOTH_MM / float(spacing[0])
    return np.stack([ndimage.gaussian_filter1d(axis[:, a], sigma, mode="nearest") for a in range(2)], axis=1)


def _panel(hu, labels, levels, axis, spacing, view: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(grey MIP, level index per pixel, axis column) of one view, rows = slices with the head first.

    The columns are fixed patient coordinates around the axis's median (the spine's
    curve shows as it is); only the slab follows the axis from slice to slice.
    """
    nz = hu.shape[0]
    if view == "sagittal":
        half = int(round(SAGITTAL_SLAB_MM / 2 / float(spacing[2])))
        lo, hi = (int(round(v / float(spacing[1]))) for v in SAGITTAL_VIEW_MM)
        centre = int(round(np.median(axis[:, 0])))
    else:
        lo_slab, hi_slab = (int(round(v / float(spacing[1]))) for v in CORONAL_SLAB_MM)
        half_view = int(round(CORONAL_VIEW_MM / float(spacing[2])))
        lo, hi = -half_view, half_view
        centre = int(round(np.median(axis[:, 1])))
    grey = np.full((nz, hi - lo), BONE_WINDOW[0], np.float32)
    names = np.zeros((nz, hi - lo), np.uint8)
    for z in range(nz):
        cy, cx = (int(round(v)) for v in axis[z])
        if view == "sagittal":
            cut = slice(max(cx - half, 0), min(cx + half + 1, hu.shape[2]))
            hu_plane, lab_plane = hu[z][:, cut], levels[labels[z][:, cut]]
        else:
            cut = slice(max(cy + lo_slab, 0), min(cy + hi_slab + 1, hu.shape[1]))
            hu_plane, lab_plane = hu[z][cut, :].T, levels[labels[z][cut, :]].T
        if hu_plane.size == 0:
            continue
        mip, lab = hu_plane.max(axis=1), lab_plane.max(axis=1)
        src = np.arange(centre + lo, centre + hi)
        ok = (src >= 0) & (src < len(mip))
        grey[z, ok], names[z, ok] = mip[src[ok]], lab[src[ok]]
    return grey[::-1], names[::-1], float(-lo)


# --- drawing ----------------------------------------------------------------------------------------

def _render(grey, names, across_axis, spacing, pixel, view, lesions) -> Image.Image:
    """One panel as a PIL image: bone window, tints, outlines, names and lesion marks."""
    row_mm = float(spacing[0])
    col_mm = float(spacing[1] if view == "sagittal" else spacing[2])
    zoom = (row_mm / pixel, col_mm / pixel)
    grey = ndimage.zoom(grey, zoom, order=1)
    names = ndimage.zoom(names, zoom, order=0)[: grey.shape[0], : grey.shape[1]]
    grey = grey[: names.shape[0], : names.shape[1]]
    low, high = BONE_WINDOW
    base = np.clip((grey - low) / (high - low), 0, 1) * 255
    rgb = np.repeat(base[..., None], 3, axis=2)
    palette = np.array([(0, 0, 0)] + [level_colour(lv) for lv in LEVELS], np.float32)
    tinted = names > 0
    rgb[tinted] = (1 - TINT) * rgb[tinted] + TINT * palette[names[tinted]]
    edge = tinted & (ndimage.grey_erosion(names, size=3) != ndimage.grey_dilation(names, size=3))
    rgb[edge] = palette[names[edge]]
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    _annotate(image, names, across_axis * zoom[1], view, lesions)
    _caption(image, "SAGITTAL  (front left)" if view == "sagittal" else "CORONAL  (patient's right on the left)")
    return image


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels (its bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _annotate(image: Image.Image, names: np.ndarray, axis_col: float, view: str, lesions: dict) -> None:
    """Each level's name in its colour beside the spine at its centre's height, then its lesion mark."""
    draw = ImageDraw.Draw(image)
    font = _font(22)
    present = [i for i in range(1, len(LEVELS) + 1) if (names == i).any()]
    placed: list[float] = []
    for index in present:
        rows, cols = np.nonzero(names == index)
        level = LEVELS[index - 1]
        row = float(np.median(rows))
        if any(abs(row - p) < 22 for p in placed):   # no two names on top of each other
            row = max(placed) + 22 if row > min(placed) else min(placed) - 22
        placed.append(row)
        near = np.abs(cols - axis_col) < 0.25 * image.width
        right = float(np.percentile(cols[near] if near.any() else cols, 90))
        x = min(right + 14, image.width - 90)
        _outlined_text(draw, (x, row - 12), level, level_colour(level), font)
        lesion = lesions.get(level, "none")
        if lesion and lesion != "none":
            _lesion_mark(draw, (x + draw.textlength(level, font=font) + 18, row), lesion, font)


def _outlined_text(draw: ImageDraw.ImageDraw, xy, text: str, colour, font) -> None:
    """Text in ``colour`` with a black outline, legible over bone and over air alike."""
    draw.text(xy, text, fill=tuple(colour), font=font, stroke_width=3, stroke_fill=(0, 0, 0))


def _lesion_mark(draw: ImageDraw.ImageDraw, centre, lesion: str, font) -> None:
    """A red disc with L/B/M for a lesion class, a yellow one with '?' for any other call."""
    letter = LESION_LETTERS.get(lesion, "?")
    colour = LESION_RED if lesion in LESION_LETTERS else INDETERMINATE
    x, y = centre
    draw.ellipse((x - 13, y - 13, x + 13, y + 13), fill=colour, outline=(0, 0, 0), width=2)
    draw.text((x, y), letter, fill=(255, 255, 255) if colour == LESION_RED else (0, 0, 0), font=font,
              anchor="mm")


def _rib_ticks(panel: Image.Image, ribs: list[tuple[float, str | None]], nz: int, rows_per_slice: float) -> None:
    """A white tick and the rib count's name at each rib level's height, at the panel's left edge."""
    draw = ImageDraw.Draw(panel)
    font = _font(16)
    for z, name in ribs:
        row = (nz - 1 - z) * rows_per_slice + rows_per_slice / 2
        draw.line((0, row, 26, row), fill=(255, 255, 255), width=3)
        _outlined_text(draw, (30, row - 9), f"rib {name}" if name else "rib", (255, 255, 255), font)


def _listing(found: list[str], lesions: dict, height: int, notes: dict | None = None) -> Image.Image:
    """The column on the right: every vertebra found, its colour and its lesion call, head to feet.

    ``notes`` (level -> text: its collapse, its change since the prior study) widen the
    column and are written after the call, in yellow, cut to fit.
    """
    notes = notes or {}
    image = Image.new("RGB", (270 + (NOTE_PX if notes else 0), height), (24, 24, 24))
    draw = ImageDraw.Draw(image)
    font = _font(20)
    draw.text((10, 6), "found" if found else "no vertebra found", fill=(255, 255, 255), font=font)
    for i, level in enumerate(found):
        y = 40 + 30 * i
        draw.rectangle((10, y + 2, 30, y + 22), fill=level_colour(level))
        draw.text((40, y), level, fill=(255, 255, 255), font=font)
        lesion = lesions.get(level, "none")
        if lesion != "none":
            _lesion_mark(draw, (100, y + 12), lesion, _font(16))
        draw.text((120, y), "no lesion" if lesion == "none" else lesion, fill=(220, 220, 220), font=_font(18))
        if notes.get(level):
            note = _fit(notes[level], draw, _font(15), NOTE_PX + 5)
            draw.text((255, y + 2), note, fill=(255, 220, 120), font=_font(15))
    return image


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: float) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _banner(image: Image.Image, text: str) -> None:
    """A red line of text across the top of a panel, for what must not be missed."""
    draw = ImageDraw.Draw(image)
    font = _font(34)
    x = max((image.width - draw.textlength(text, font=font)) / 2, 4)
    _outlined_text(draw, (x, 16), text, LESION_RED, font)


def _caption(image: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(image)
    _outlined_text(draw, (8, image.height - 28), text, (255, 255, 255), _font(18))


def _compose(panels: list[Image.Image], title: str, footer: str) -> np.ndarray:
    """The panels side by side under a header (title, legend) and over a footer line."""
    width = sum(p.width for p in panels) + GAP_PX * (len(panels) + 1)
    height = max(p.height for p in panels) + HEADER_PX + FOOTER_PX
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    x = GAP_PX
    for panel in panels:
        canvas.paste(panel, (x, HEADER_PX))
        x += panel.width + GAP_PX
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP_PX, 6), title or "spine-node QC", fill=(255, 255, 255), font=_font(22))
    legend = "vertebra colours = its level;  lesion: "
    draw.text((GAP_PX, 32), legend, fill=(200, 200, 200), font=_font(16))
    lx = GAP_PX + draw.textlength(legend, font=_font(16)) + 14
    for lesion, word in (("lytic", "lytic"), ("blastic", "blastic"), ("mixed", "mixed"), ("indeterminate", "indeterminate")):
        _lesion_mark(draw, (lx, 41), lesion, _font(14))
        draw.text((lx + 18, 32), word, fill=(200, 200, 200), font=_font(16))
        lx += 36 + draw.textlength(word, font=_font(16))
    for i, line in enumerate(_wrap(footer, draw, _font(16), width - 2 * GAP_PX)[:3]):
        draw.text((GAP_PX, height - FOOTER_PX + 6 + 19 * i), line, fill=(255, 220, 120), font=_font(16))
    return np.asarray(canvas, np.uint8).copy()


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: float) -> list[str]:
    """``text`` broken into lines that fit ``width`` pixels."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])
