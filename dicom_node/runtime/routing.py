"""Which destinations get which output: each destination's profile (``dicom_node.config.profiles``) decides.

The job builds the union of what its destinations take (``NodeConfig.pipeline_options``);
here each object it wrote is matched with the destinations that want it:

* a SEG goes where its kind is wanted *and* its form (binary or labelmap, slab or every
  frame) is the destination's;
* an SR goes where SRs are wanted: the SR that references the destination's SEG form when
  the destination takes a SEG and that form was built, otherwise the primary SR;
* RTSTRUCT, key images and the PDF go where their kind is wanted;
* a "not processed" notice goes where notices are on.

A destination that wants nothing of a job gets no delivery row at all: nothing is proposed
to it that it did not ask for, so the SCU's presentation contexts are exactly its objects.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from dicom_node.config.profiles import OutputProfile, SegVariant

NOTICE_KIND = "notice"
"""The kind of the "not processed" notice in ``outputs.kind``."""

ProfileOf = Callable[[str], OutputProfile]


def targets(kind: str, variant: SegVariant | None, destinations: Iterable[str], profile_of: ProfileOf,
            built: Collection[SegVariant], primary: SegVariant | None) -> list[str]:
    """The destinations (as ``destinations_for`` names them) that get one written object.

    ``variant``: the SEG form of a SEG or of the SEG an SR references (None for other kinds);
    ``built``: the SEG forms the job made; ``primary``: the first of them (None when no SEG was made).
    """
    return [d for d in destinations if _wants(profile_of(d), kind, variant, built, primary)]


def _wants(profile: OutputProfile, kind: str, variant: SegVariant | None, built: Collection[SegVariant],
           primary: SegVariant | None) -> bool:
    if kind == NOTICE_KIND:
        return profile.notices
    if kind not in profile.outputs:
        return False
    if kind == "seg":
        return variant is None or variant == profile.seg_variant
    if kind == "sr" and variant is not None:
        own = profile.seg_variant if "seg" in profile.outputs and profile.seg_variant in built else primary
        return own is None or variant == own
    return True


def everything(options_outputs: tuple[str, ...], seg_type: str, seg_all_frames: bool) -> ProfileOf:
    """A profile for every destination that takes all the job makes and no notice (a dispatcher given no profiles)."""
    profile = OutputProfile(tuple(options_outputs), seg_type, seg_all_frames, notices=False)
    return lambda destination: profile
