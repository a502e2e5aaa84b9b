"""Real vertebra shapes for the v2 phantoms: the manual VerSe masks in a canonical frame.

Each vertebra of the VerSe masks in ``../shared/data`` (C1-C7, T1-T5 of two cervico-thoracic
scans, T9-L5 and L1-L5 of two lumbar ones) becomes a ``Template``: its signed distance
(mm, > 0 inside) on a 1 mm grid in the vertebra's own frame, u to the patient's left, v to
the back, w along the spine towards the head (from the neighbouring centroids), centred on
the vertebral body. The phantom draws a vertebra by sampling a template at its own pose and
scale, so the shape (body, pedicles, laminae, facets, processes) is a real one, and levels
without a mask get a rescaled neighbour's.

The masks are CC BY-SA data and are not copied into the repository: templates are built from
``../shared/data`` on first use and cached (``~/.cache/spine-node``). Without the masks,
``analytic_templates`` draws the v1 phantom's geometric vertebrae on the same grid, so the
generator (and its tests) still run, with simpler shapes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

CACHE_VERSION = 1
TEMPLATE_LEVELS = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
"""VerSe numbering: level of label k is TEMPLATE_LEVELS[k - 1]."""

MASK_FILES = (
    "verse-masks/sub-gl003_dir-ax_seg-vert_msk.nii.gz",
    "verse-masks/sub-gl017_seg-vert_msk.nii.gz",
    "verse-masks/sub-verse010_seg-vert_msk.nii.gz",
    "verse-manual-mask/sub-verse004_seg-vert_msk.nii.gz",
)
USED_LEVELS = ("C5", "C6", "C7", *[f"T{i}" for i in range(1, 13)], *[f"L{i}" for i in range(1, 6)])
"""Levels whose masks are turned into templates (C1-C4 are never drawn)."""


@dataclass
class Template:
    """One vertebra shape: signed distance (w, v, u) at 1 mm around its body centre."""

    level: str
    source: str
    sd: np.ndarray  # float32, indexed (w, v, u), > 0 inside, mm
    origin: tuple[float, float, float]  # (w, v, u) mm of sd[0, 0, 0] relative to the body centre
    body: tuple[float, float, float]  # half width (u), half depth (v), half height (w) of the body, mm
    tips: tuple[tuple[float, float, float], tuple[float, float, float]]  # (u, v, w) of the transverse tips, right, left

    def index(self) -> int:
        return TEMPLATE_LEVELS.index(self.level)


def shared_data_root() -> Path:
    """``../shared/data`` beside the repository (or ``$SPINE_NODE_SHARED_DATA``)."""
    env = os.environ.get("SPINE_NODE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spine-node"
    return root / f"verse-templates-v{CACHE_VERSION}.npz"


def load_templates(data_root: Path | None = None, use_cache: bool = True) -> list[Template]:
    """Templates of the VerSe masks (cached), or the analytic ones when the masks are absent."""
    root = data_root or shared_data_root()
    files = [root / f for f in MASK_FILES]
    if not all(f.is_file() for f in files):
        return analytic_templates()
    cache = _cache_path()
    if use_cache and cache.is_file():
        try:
            return _read_cache(cache)
        except (OSError, KeyError, ValueError):
            pass
    templates = [t for f in files for t in templates_of_mask(f)]
    if use_cache:
        _write_cache(cache, templates)
    return templates


def _write_cache(path: Path, templates: list[Template]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, t in enumerate(templates):
        arrays[f"sd{i}"] = t.sd.astype(np.float16)
        arrays[f"meta{i}"] = np.array([*t.origin, *t.body, *t.tips[0], *t.tips[1]], np.float64)
        arrays[f"name{i}"] = np.array([t.level, t.source])
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, n=len(templates), **arrays)
    tmp.replace(path)


def _read_cache(path: Path) -> list[Template]:
    data = np.load(path)
    out = []
    for i in range(int(data["n"])):
        m = data[f"meta{i}"]
        level, source = (str(x) for x in data[f"name{i}"])
        out.append(Template(level, source, data[f"sd{i}"].astype(np.float32), tuple(m[0:3]), tuple(m[3:6]),
                            (tuple(m[6:9]), tuple(m[9:12]))))
    return out


def _world_points(image, index_kji: np.ndarray) -> np.ndarray:
    """World LPS coordinates (x, y, z) of voxel indices given as (k, j, i) rows."""
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    ijk = index_kji[:, ::-1].astype(np.float64) * spacing
    return origin + ijk @ direction.T


def _frames(centroids: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Rows (u, v, w) per label from the spine's direction at its centroid (w towards the head)."""
    frames = {}
    for label, c in centroids.items():
        up = centroids.get(label - 1, c)
        down = centroids.get(label + 1, c)
        w = up - down
        if np.linalg.norm(w) < 1e-6:
            w = np.array([0.0, 0.0, 1.0])
        w = w / np.linalg.norm(w)
        if w[2] < 0:
            w = -w
        u = np.cross([0.0, 1.0, 0.0], w)
        u /= np.linalg.norm(u)
        frames[label] = np.stack([u, np.cross(w, u), w])
    return frames


def templates_of_mask(path: Path) -> list[Template]:
    """One template per used level of a VerSe vertebra mask file."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array = np.rint(array).astype(np.int16)
    labels = [int(x) for x in np.unique(array) if 0 < x <= len(TEMPLATE_LEVELS)]
    points = {lb: _world_points(image, np.argwhere(array == lb)) for lb in labels}
    centroids = {lb: p.mean(axis=0) for lb, p in points.items()}
    frames = _frames(centroids)
    out = []
    for lb in labels:
        level = TEMPLATE_LEVELS[lb - 1]
        if level not in USED_LEVELS:
            continue
        template = _template(image, array == lb, points[lb], centroids[lb], frames[lb], level, path.name)
        if template is not None:
            out.append(template)
    return out


def _body_centre(local: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Body centre (u, v, w) and half sizes of a vertebra from its points in its own frame.

    The body is what lies in front of the spinal canal: along v in the midline strip, the
    first empty millimetre after the most anterior bone is the canal's front wall.
    """
    strip = local[np.abs(local[:, 0]) < 4.0, 1]
    if strip.size == 0:
        strip = local[:, 1]
    bins = np.floor(strip - strip.min()).astype(int)
    counts = np.bincount(bins)
    empty = np.flatnonzero(counts == 0)
    cut = strip.min() + (empty[0] if empty.size else 0.45 * (strip.max() - strip.min()))
    body = local[local[:, 1] < cut]
    lo, hi = np.percentile(body, 1, axis=0), np.percentile(body, 99, axis=0)
    # the width from the front 60 % of the body only: transverse and uncinate processes reach forwards at C7-T1 and L5
    front = body[body[:, 1] < lo[1] + 0.6 * (hi[1] - lo[1])]
    lo[0], hi[0] = np.percentile(front[:, 0], 2), np.percentile(front[:, 0], 98)
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    return centre, (float(half[0]), float(half[1]), float(half[2]))


def _template(image, mask: np.ndarray, points: np.ndarray, centroid: np.ndarray, frame: np.ndarray,
              level: str, source: str) -> Template | None:
    """Resample one vertebra into its frame at 1 mm and turn it into a signed distance."""
    import SimpleITK as sitk

    local = (points - centroid) @ frame.T
    centre, half = _body_centre(local)
    anchor = centroid + centre @ frame
    rel = local - centre
    lo = np.floor(rel.min(axis=0)) - 4.0
    hi = np.ceil(rel.max(axis=0)) + 4.0
    size = (hi - lo + 1).astype(int)  # (u, v, w)
    box = np.argwhere(mask)
    k0, k1 = box.min(axis=0), box.max(axis=0)
    pad = 3
    start = np.maximum(k0 - pad, 0)
    stop = np.minimum(k1 + pad + 1, mask.shape)
    sub = sitk.GetImageFromArray(mask[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]].astype(np.float32))
    sub_origin = image.TransformIndexToPhysicalPoint([int(start[2]), int(start[1]), int(start[0])])
    sub.SetOrigin(sub_origin)
    sub.SetSpacing(image.GetSpacing())
    sub.SetDirection(image.GetDirection())
    out_origin = anchor + lo @ frame
    resampled = sitk.Resample(sub, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear,
                              tuple(float(x) for x in out_origin), (1.0, 1.0, 1.0),
                              tuple(float(x) for x in frame.T.ravel()), 0.0, sitk.sitkFloat32)
    inside = sitk.GetArrayFromImage(resampled) > 0.5  # (w, v, u)
    components, n = ndimage.label(inside)
    if n == 0:
        return None
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        inside = components == (int(np.argmax(sizes)) + 1)
    sd = signed_distance(inside)
    return Template(level, source, sd, (float(lo[2]), float(lo[1]), float(lo[0])), half, _tips(sd, (lo[2], lo[1], lo[0]), half))


def signed_distance(inside: np.ndarray) -> np.ndarray:
    """Signed distance in voxels (1 mm here): positive inside, negative outside, 0 on the surface."""
    d_in = ndimage.distance_transform_edt(inside)
    d_out = ndimage.distance_transform_edt(~inside)
    return np.where(inside, d_in - 0.5, 0.5 - d_out).astype(np.float32)


def _tips(sd: np.ndarray, origin, half) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(u, v, w) of the most lateral bone behind the body on each side: the transverse processes' tips."""
    idx = np.argwhere(sd > 0)
    w = idx[:, 0] + origin[0]
    v = idx[:, 1] + origin[1]
    u = idx[:, 2] + origin[2]
    behind = v > 0.5 * half[1]
    if not behind.any():
        behind = np.ones_like(v, bool)
    tips = []
    for side in (-1.0, 1.0):
        score = np.where(behind, side * u, -np.inf)
        i = int(np.argmax(score))
        tips.append((float(u[i]), float(v[i]), float(w[i])))
    return tips[0], tips[1]


def analytic_templates() -> list[Template]:
    """The v1 phantom's geometric vertebrae (C7..L5, one per level) as templates: a fallback without masks."""
    from research.phantoms.anatomy import sample_anatomy
    from research.phantoms.generator import _vertebra_parts

    anat = sample_anatomy(np.random.default_rng(12345), lesion_rate=0.0)
    out = []
    for vert in anat.vertebrae:
        if vert.level not in USED_LEVELS:
            continue
        a, b, h = vert.body
        reach = max(vert.canal[0] + vert.arch + vert.transverse, b + 2 * vert.canal[1] + vert.arch + vert.spinous) + 6
        lo = np.array([-(h + 25.0), -(b + 6.0), -reach])  # (w, v, u)
        hi = np.array([h + 25.0, reach + 6.0, reach])
        axes = [np.arange(lo[d], hi[d] + 1.0) for d in range(3)]
        w, v, u = np.meshgrid(*axes, indexing="ij")
        body, _, posterior, _ = _vertebra_parts(vert, u, v, w)
        sd = signed_distance(body | posterior)
        origin = (float(lo[0]), float(lo[1]), float(lo[2]))
        out.append(Template(vert.level, "analytic", sd, origin, (a, b, h), _tips(sd, origin, (a, b, h))))
    for level in ("C5", "C6"):
        c7 = next(t for t in out if t.level == "C7")
        out.append(Template(level, "analytic", c7.sd, c7.origin, c7.body, c7.tips))
    return out
