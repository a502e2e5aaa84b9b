"""Output profiles: what each destination gets, and what the node must therefore build.

A destination names the objects it takes (``seg``, ``sr``, ``rtstruct``, ``sc``, ``pdf``), the
form of its SEG (``binary`` or ``labelmap``; the vertebrae's slab or every CT slice) and
whether it gets the "not processed" notice of a refused or failed series. What it does not
name comes from the node-wide settings (``outputs``, ``seg_type``, ``seg_all_frames``,
``notices``), so the old plain ``AE@host:port`` keeps its meaning.

The node builds the union: every kind some destination takes, and each SEG form that some
destination takes once (``seg_variants``). The first SEG form wanted is the primary one (the
summary names it; a destination that takes the SR without a SEG gets the primary SR); each
other form gets its own SR, which references that SEG, so that the SR a destination receives
always points at the SEG it received.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipelines.options import OUTPUT_KINDS

SegVariant = tuple[str, bool]
"""(seg_type, all_frames): one form of the DICOM SEG."""


@dataclass(frozen=True)
class OutputProfile:
    """What one destination gets: the objects, the form of its SEG, and whether it gets notices."""

    outputs: tuple[str, ...]
    seg_type: str
    seg_all_frames: bool
    notices: bool

    @property
    def seg_variant(self) -> SegVariant:
        return self.seg_type, self.seg_all_frames

    def describe(self) -> str:
        """``seg,sr; SEG binary, slab; notices`` (for the start-up log)."""
        frames = "all frames" if self.seg_all_frames else "slab"
        seg = f"; SEG {self.seg_type}, {frames}" if "seg" in self.outputs else ""
        return f"{','.join(self.outputs)}{seg}; notices {'on' if self.notices else 'off'}"


def needed_outputs(profiles: Iterable[OutputProfile]) -> tuple[str, ...]:
    """Every kind some profile takes, in the order of ``OUTPUT_KINDS``."""
    wanted = {kind for profile in profiles for kind in profile.outputs}
    return tuple(kind for kind in OUTPUT_KINDS if kind in wanted)


def needed_seg_variants(profiles: Iterable[OutputProfile], fallback: SegVariant) -> tuple[SegVariant, ...]:
    """The SEG forms to build, each once, the primary first; ``(fallback,)`` when no profile takes a SEG."""
    variants = tuple(dict.fromkeys(p.seg_variant for p in profiles if "seg" in p.outputs))
    return variants or (fallback,)
