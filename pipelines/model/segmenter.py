"""Vertebra segmentation with an nnU-Net v2 model bundle, in memory, on CUDA or the CPU.

``Segmenter`` loads a bundle's network once (through nnU-Net's own predictor) and then
segments any number of volumes. Around the network it does what nnU-Net's file-based
path would do, in a way that keeps a 512x512x300 CT within a few GB:

1. crop to the body (HU > -500) so that air around the patient costs nothing;
2. resample the crop to the model's spacing (trilinear, like nnU-Net's data resampling
   in spirit) and apply the plan's CT normalisation;
3. nnU-Net's sliding-window prediction (Gaussian weighting, configurable step and mirroring);
4. decide labels at the model's resolution (foreground first, then the level) and clean
   them there, where it is cheap (``postprocess.py``: fragments dropped, vertebrae the
   network ran together cut at their discs, one level per vertebra, levels consecutive
   from head to feet; the volume's axis 0 must grow towards the head, as it does for
   every LPS-oriented volume spine-node reads);
5. bring them back to the input grid slab by slab: the boundary from the interpolated
   foreground score (sub-voxel), the level from the nearest model voxel, so no
   full-resolution probability volume ever exists in memory.

Arrays are (z, y, x) with spacing (sz, sy, sx) in mm, the same axis order nnU-Net's
SimpleITK reader produces, so a bundle trained from NIfTI files sees what it was trained on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipelines.errors import ModelBundleError, PipelineError
from pipelines.model.bundles import ModelBundle
from pipelines.levels import LEVELS, check_auxiliary_labels
from pipelines.model.postprocess import name_column, remove_fragments

BODY_HU = -500.0
ANCHOR_WEIGHT = 3.0  # a piece's vote for an auxiliary C7 or sacrum counts three times: they are what one counts from
CROP_MARGIN_MM = 10.0


@dataclass
class Segmentation:
    """A label map on the input grid (the model's label ids) and where the time went."""

    labels: np.ndarray
    timings_s: dict[str, float] = field(default_factory=dict)


def pick_device(requested: str = "auto"):
    """torch.device for 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {requested!r} requested but CUDA is not available on this machine")
    return torch.device(requested)


class Segmenter:
    """A loaded model: create once, call ``segment`` for each volume."""

    def __init__(self, bundle: ModelBundle, device: str = "auto", step_size: float = 0.5,
                 mirroring: bool = False, threads: int | None = None, relabel: bool = True):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if threads:
            torch.set_num_threads(threads)
        self.bundle = bundle
        self.relabel = relabel
        # labels trained only to anchor the naming (C7, sacrum, ribs): used in _clean, never returned
        self.auxiliary = check_auxiliary_labels(bundle.manifest.get("auxiliary_labels", {}), bundle.label_map,
                                                str(bundle.path / "manifest.json"))
        self.device = pick_device(device)
        self.predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                         perform_everything_on_device=self.device.type == "cuda",
                                         device=self.device, verbose=False, allow_tqdm=False)
        try:
            self.predictor.initialize_from_trained_model_folder(
                str(bundle.nnunet_dir), use_folds=bundle.folds, checkpoint_name=bundle.checkpoint_name)
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise ModelBundleError(f"{bundle.nnunet_dir}: nnU-Net could not load the model ({exc})") from None
        cfg = self.predictor.configuration_manager
        plans = self.predictor.plans_manager
        self.transpose_forward = list(plans.transpose_forward)
        self.transpose_backward = list(plans.transpose_backward)
        self.spacing = np.array(cfg.spacing, float)  # in transposed axis order
        props = plans.foreground_intensity_properties_per_channel["0"]
        self.clip = (float(props["percentile_00_5"]), float(props["percentile_99_5"]))
        self.mean, self.std = float(props["mean"]), max(float(props["std"]), 1e-8)
        if cfg.normalization_schemes[0] != "CTNormalization":
            raise ModelBundleError(f"{bundle.path}: only CT-normalised models are supported, "
                                   f"this one uses {cfg.normalization_schemes[0]}")

    def segment(self, hu: np.ndarray, spacing: tuple[float, float, float]) -> Segmentation:
        """Label map (model label ids, uint8) of a CT volume (z, y, x) in HU with spacing (sz, sy, sx)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        box = body_box(hu, spacing)
        crop = hu[box].astype(np.float32, copy=False)
        data, in_shape = self._prepare(crop, np.asarray(spacing, float))
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        import torch

        with torch.no_grad():
            logits = self.predictor.predict_logits_from_preprocessed_data(data).float().cpu()
        timings["network"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = logits.permute(0, *[1 + a for a in self.transpose_backward])
        low_spacing = tuple(n * s / m for n, s, m in zip(in_shape, spacing, logits.shape[1:]))
        low = _decide(logits.transpose(0, 1), foreground_first=True).numpy()
        low = self._clean(low, low_spacing)
        timings["postprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        foreground = self._foreground(logits)
        del logits
        labels = np.zeros(hu.shape, np.uint8)
        labels[box] = upsample_labels(foreground, low, in_shape)
        timings["resample_back"] = time.perf_counter() - t0
        return Segmentation(labels, timings)

    def _foreground(self, logits):
        """log p(vertebra) - log p(not vertebra) per voxel: > 0 where a reported vertebra is more likely than not.

        Auxiliary classes (ribs, C7, sacrum) count as "not vertebra", so that a rib touching a
        vertebra is not grown into it when the labels are brought back to the input grid.
        """
        import torch

        if not self.auxiliary:
            return torch.logsumexp(logits[1:], dim=0) - logits[0]  # > 0 where p(background) < 0.5
        reported = sorted(label for label in self.bundle.label_map if label < logits.shape[0])
        other = [0] + sorted(label for label in self.auxiliary if label < logits.shape[0])
        return torch.logsumexp(logits[reported], dim=0) - torch.logsumexp(logits[other], dim=0)

    def _clean(self, low: np.ndarray, low_spacing) -> np.ndarray:
        """The post-processing steps on the model-resolution label map, where they are cheap.

        With auxiliary C7 and sacrum labels the column is named from C7 to the sacrum, so the
        two ends the network recognises anchor the count; the auxiliary labels are then set to
        background: they are never reported.
        """
        low = remove_fragments(low, low_spacing)
        if self.relabel:
            label_map, levels = dict(self.bundle.label_map), list(LEVELS)
            for label, name in self.auxiliary.items():
                if name == "C7":
                    label_map[label], levels = name, [name] + levels
                elif name == "sacrum":
                    label_map[label], levels = name, levels + [name]
            anchors = {name: ANCHOR_WEIGHT for name in self.auxiliary.values() if name in ("C7", "sacrum")}
            rib = next((label for label, name in self.auxiliary.items() if name == "rib"), None)
            low = name_column(low, low_spacing, label_map, levels, superior_axis=0, anchors=anchors, rib_label=rib)
        if self.auxiliary:
            low[np.isin(low, list(self.auxiliary))] = 0
        return low

    def _prepare(self, crop: np.ndarray, spacing: np.ndarray):
        """Transpose, resample to the model spacing and normalise; returns (tensor, crop shape)."""
        import torch
        import torch.nn.functional as F

        in_shape = crop.shape
        arr = np.transpose(crop, self.transpose_forward)
        sp = spacing[self.transpose_forward]
        target = [max(int(round(n * s / t)), 1) for n, s, t in zip(arr.shape, sp, self.spacing)]
        tensor = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        if list(arr.shape) != target:
            tensor = F.interpolate(tensor, size=target, mode="trilinear", align_corners=False)
        tensor = (tensor.clamp(*self.clip) - self.mean) / self.std
        return tensor[0], in_shape


def body_box(hu: np.ndarray, spacing) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of the body (HU > -500) plus a margin; the whole volume if empty."""
    body = hu > BODY_HU
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(body.any(axis=other))
        if hits.size == 0:
            return (slice(None),) * 3
        margin = int(np.ceil(CROP_MARGIN_MM / spacing[axis]))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, hu.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def upsample_labels(foreground, low_labels: np.ndarray, out_shape: tuple[int, int, int], slab: int = 16) -> np.ndarray:
    """Full-resolution labels from a model-resolution foreground score and cleaned label map.

    The boundary comes from the foreground score (log p(vertebra) - log p(background)),
    interpolated linearly in z and bilinearly in plane, so it is placed with sub-voxel
    accuracy; the level of each voxel is that of the nearest model voxel (the label map
    grown by one voxel first, so that a boundary voxel always finds its vertebra). One
    channel instead of all classes keeps this step cheap; slabs keep memory flat.
    """
    import torch
    import torch.nn.functional as F

    grown = low_labels.copy()
    empty = grown == 0
    grown[empty] = ndimage.grey_dilation(low_labels, size=(3, 3, 3))[empty]
    nz_in = foreground.shape[0]
    nz, ny, nx = out_shape
    near = [_nearest(n_in, n_out) for n_in, n_out in zip(low_labels.shape, out_shape)]
    out = np.empty(out_shape, np.uint8)
    for start in range(0, nz, slab):
        idx = np.arange(start, min(start + slab, nz))
        src = np.clip((idx + 0.5) * nz_in / nz - 0.5, 0, nz_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, nz_in - 1)
        w = torch.from_numpy((src - lo).astype(np.float32)).view(-1, 1, 1)
        planes = foreground[lo] * (1 - w) + foreground[hi] * w
        planes = F.interpolate(planes[:, None], size=(ny, nx), mode="bilinear", align_corners=False)[:, 0]
        level = grown[np.ix_(near[0][idx], near[1], near[2])]
        out[idx] = np.where(planes.numpy() > 0, level, 0)
    return out


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Index of the nearest input voxel centre for each output voxel (half-voxel convention)."""
    return np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), 0, n_in - 1)


def _decide(planes, foreground_first: bool):
    """Label per voxel of logits (k, C, y, x): plain arg-max, or foreground first then the best level.

    ``foreground_first``: a voxel is vertebra when the background probability is below one
    half, and then gets the most probable level. A plain arg-max would leave a voxel that is
    surely vertebra but split between two neighbouring levels (0.4 background, 0.3 T7,
    0.3 T8) as background, punching holes exactly where the level is ambiguous.
    """
    import torch

    if not foreground_first:
        return planes.argmax(1).to(torch.uint8)
    background = torch.softmax(planes, dim=1)[:, 0]
    level = planes[:, 1:].argmax(1) + 1
    return torch.where(background < 0.5, level, torch.zeros_like(level)).to(torch.uint8)
