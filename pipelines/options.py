"""The pipeline's options and their defaults: the one place where each default is decided.

``PipelineOptions`` is what a worker needs to analyse a series and what the provenance
records. It checks itself on construction (an object that exists is valid), in the manner
of highdicom's constructors, and raises ``PipelineOptionError`` with a sentence that names
the option. The node's configuration (``dicom_node.config``) and every CLI flag take their
defaults from the constants below, so that ``process`` and ``serve`` cannot drift apart.

Nothing here reads the environment: where installed model bundles live is an option
(``models_dir``), set by the caller from ``SPINE_NODE_MODELS_DIR`` / ``data_dir``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.errors import LesionConfigError, PipelineOptionError

DEFAULT_MODEL = "spine-phantom-demo"
DEFAULT_DEVICE = "auto"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DEFAULT_STEP_SIZE = 0.5
DEFAULT_MIRRORING = False
SEG_TYPES = ("binary", "labelmap")
DEFAULT_SEG_TYPE = "binary"
DEFAULT_SEG_ALL_FRAMES = False
OUTPUT_KINDS = ("seg", "sr", "rtstruct", "sc", "pdf")
DEFAULT_OUTPUTS = ("seg", "sr")
DEFAULT_MIN_SLICES = 20
DEFAULT_DATA_DIR = "spine-node-data"
DEFAULT_BONE_DENSITY_THRESHOLD_HU = 104.0
DEFAULT_BONE_DENSITY_SOURCE = ("L1 trabecular attenuation below 104 HU: 90 % specific for osteoporosis "
                               "(opportunistic CT screening, Insights into Imaging 2023)")
MODELS_SUBDIR = "models"

_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,2})?")


def default_models_dir(data_dir: Path | str = DEFAULT_DATA_DIR) -> Path:
    """Where installed bundles live when nothing else says: ``<data_dir>/models``."""
    return Path(data_dir) / MODELS_SUBDIR


@dataclass(frozen=True)
class PipelineOptions:
    """Everything a worker needs to analyse a series; picklable, recorded in the provenance.

    * ``model``: bundle name (looked up in ``models_dir``, then among the bundled ones) or folder.
    * ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
    * ``step_size``: sliding-window step as a fraction of the patch, in (0, 1].
    * ``mirroring``: test-time mirroring (8x slower; the demo model is trained without it).
    * ``seg_type``: ``binary`` (widest viewer support) or ``labelmap`` DICOM SEG.
    * ``seg_all_frames``: the SEG has a frame for every CT slice, empty ones included (for
      viewers that need every frame with the same geometry); default: only the slab of slices
      that hold a vertebra.
    * ``outputs``: the objects written and sent, among ``OUTPUT_KINDS`` (``rtstruct``: RT
      Structure Set, ``sc``: key images, ``pdf``: encapsulated PDF report); the SEG and SR
      are always made (the summary needs them) but written only when listed.
    * ``seg_variants``: further forms of the SEG to build, each ``(seg_type, all_frames)`` and
      each with an SR of its own that references it (for callers that send different SEG forms
      to different places); default none: only ``seg_type`` / ``seg_all_frames``.
    * ``min_slices``: a series with fewer distinct slices is refused.
    * ``lesion_thresholds``: overrides of the lesion classifier's numbers (checked here).
    * ``bone_density_threshold_hu`` and ``bone_density_source``: the L1 (else L2) trabecular
      HU below which the report flags low bone density, and where that number comes from.
    * ``match_without_issuer``: recognise a patient by PatientID alone when the series has no
      IssuerOfPatientID (for comparisons with prior studies; off: such a patient is never matched).
    * ``patient_key_secret``: the node's secret for pseudonymous patient keys (hex; never recorded).
    * ``models_dir``: the folder of installed bundles (``None``: only the bundled ones).
    """

    model: str = DEFAULT_MODEL
    device: str = DEFAULT_DEVICE
    step_size: float = DEFAULT_STEP_SIZE
    mirroring: bool = DEFAULT_MIRRORING
    seg_type: str = DEFAULT_SEG_TYPE
    seg_all_frames: bool = DEFAULT_SEG_ALL_FRAMES
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    seg_variants: tuple[tuple[str, bool], ...] = ()
    min_slices: int = DEFAULT_MIN_SLICES
    lesion_thresholds: dict | None = None
    bone_density_threshold_hu: float = DEFAULT_BONE_DENSITY_THRESHOLD_HU
    bone_density_source: str = DEFAULT_BONE_DENSITY_SOURCE
    match_without_issuer: bool = False
    patient_key_secret: str | None = field(default=None, compare=False, repr=False)
    models_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PipelineOptionError(f"model must be a bundle name or folder, got {self.model!r}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise PipelineOptionError(f"device {self.device!r} is not one of {', '.join(DEVICE_CHOICES)}")
        if (isinstance(self.step_size, bool) or not isinstance(self.step_size, (int, float))
                or not math.isfinite(self.step_size) or not 0 < self.step_size <= 1):
            raise PipelineOptionError(f"step_size must be in (0, 1], got {self.step_size!r}")
        if not isinstance(self.mirroring, bool):
            raise PipelineOptionError(f"mirroring must be true or false, got {self.mirroring!r}")
        if self.seg_type not in SEG_TYPES:
            raise PipelineOptionError(f"seg_type {self.seg_type!r} is not one of {', '.join(SEG_TYPES)}")
        if not isinstance(self.seg_all_frames, bool):
            raise PipelineOptionError(f"seg_all_frames must be true or false, got {self.seg_all_frames!r}")
        self._check_outputs()
        self._check_seg_variants()
        if isinstance(self.min_slices, bool) or not isinstance(self.min_slices, int) or self.min_slices < 2:
            raise PipelineOptionError(f"min_slices must be a whole number of at least 2, got {self.min_slices!r}")
        self._check_thresholds()
        if (isinstance(self.bone_density_threshold_hu, bool) or not isinstance(self.bone_density_threshold_hu, (int, float))
                or not -200 <= self.bone_density_threshold_hu <= 500):
            raise PipelineOptionError("bone_density_threshold_hu must be a number of HU in -200..500, "
                                      f"got {self.bone_density_threshold_hu!r}")
        if not isinstance(self.bone_density_source, str) or not self.bone_density_source.strip():
            raise PipelineOptionError("bone_density_source must name where the threshold comes from")

    def _check_outputs(self) -> None:
        outputs = self.outputs
        if isinstance(outputs, str) or not isinstance(outputs, (tuple, list)) or not outputs:
            raise PipelineOptionError(f"outputs must name one or more of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
        unknown = [kind for kind in outputs if kind not in OUTPUT_KINDS]
        if unknown:
            raise PipelineOptionError(f"outputs {', '.join(map(repr, unknown))} unknown; "
                                      f"choose among {', '.join(OUTPUT_KINDS)}")
        if len(set(outputs)) != len(outputs):
            raise PipelineOptionError(f"outputs {', '.join(outputs)} names one object twice")
        object.__setattr__(self, "outputs", tuple(outputs))  # frozen: a list given becomes the tuple recorded

    def _check_seg_variants(self) -> None:
        variants = self.seg_variants
        if isinstance(variants, str) or not isinstance(variants, (tuple, list)):
            raise PipelineOptionError(f"seg_variants must be a list of (seg_type, all_frames), got {variants!r}")
        checked = []
        for variant in variants:
            if (not isinstance(variant, (tuple, list)) or len(variant) != 2 or variant[0] not in SEG_TYPES
                    or not isinstance(variant[1], bool)):
                raise PipelineOptionError(f"SEG variant {variant!r} is not (one of {', '.join(SEG_TYPES)}, "
                                          "true or false)")
            checked.append((variant[0], variant[1]))
        if (self.seg_type, self.seg_all_frames) in checked or len(set(checked)) != len(checked):
            raise PipelineOptionError(f"seg_variants {checked} repeat a SEG form (the main one is "
                                      f"{self.seg_type}, all_frames={self.seg_all_frames})")
        object.__setattr__(self, "seg_variants", tuple(checked))

    def _check_thresholds(self) -> None:
        if self.lesion_thresholds is None:
            return
        if not isinstance(self.lesion_thresholds, Mapping):
            raise LesionConfigError("lesion thresholds must map names to numbers, "
                                    f"got {type(self.lesion_thresholds).__name__}")
        from pipelines.lesions import LesionThresholds

        LesionThresholds.from_dict(self.lesion_thresholds)  # unknown names and bad values: one sentence

    def parameters(self) -> dict:
        """The options as the provenance records them (where bundles are looked up is not a parameter)."""
        recorded = asdict(self)
        recorded.pop("models_dir")
        recorded.pop("patient_key_secret")
        return recorded

    def density_rule(self):
        """The bone-density rule of the spine report (``pipelines.measure.density.DensityRule``)."""
        from pipelines.measure.density import DensityRule

        return DensityRule(float(self.bone_density_threshold_hu), self.bone_density_source)

    def models_dirs(self) -> list[Path]:
        """The folders searched for ``model``, installed bundles first."""
        from pipelines.model.bundles import BUNDLED_DIR

        return ([Path(self.models_dir)] if self.models_dir else []) + [BUNDLED_DIR]
