"""Vertebra levels and the label conventions that number them.

spine-node reports the 17 levels T1..L5 (the paper's scope). Other conventions are
mapped onto these names so that models and reference masks from VerSe or
TotalSegmentator can be read without code changes.
"""
from __future__ import annotations

from pipelines.errors import UnknownLevelError

THORACIC = [f"T{i}" for i in range(1, 13)]
LUMBAR = [f"L{i}" for i in range(1, 6)]
LEVELS: list[str] = THORACIC + LUMBAR
"""The levels spine-node segments and reports, cranial to caudal."""

KNOWN_LEVELS: list[str] = [f"C{i}" for i in range(1, 8)] + LEVELS + ["L6", "T13", "S1", "sacrum"]
"""Every level name a label map may use (transitional vertebrae included)."""

# The paper's own code (rouge1616/Spine-Mets-CT-SEG, tcia_dcm2nifti.py): T1..T12 = 1..12, L1..L5 = 13..17.
PAPER: dict[int, str] = {i + 1: name for i, name in enumerate(LEVELS)}

# VerSe: C1-C7 = 1-7, T1-T12 = 8-19, L1-L5 = 20-24, L6 = 25, T13 = 28.
VERSE: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 8: f"T{i + 1}" for i in range(12)},
    **{i + 20: f"L{i + 1}" for i in range(5)},
    25: "L6",
    28: "T13",
}

# TotalSegmentator v2, the *merged* output of its ``total`` task (one label map for 117 structures):
# sacrum 25, S1 26, L5 27 ... L1 31, T12 32 ... T1 43, C7 44 ... C1 50 (map_to_binary.py, class_map["total"]).
# These are the ids of the files TotalSegmentator writes, not of any one of its nnU-Net models.
TOTALSEGMENTATOR: dict[int, str] = {
    25: "sacrum",
    26: "S1",
    **{27 + i: f"L{5 - i}" for i in range(5)},
    **{32 + i: f"T{12 - i}" for i in range(12)},
    **{44 + i: f"C{7 - i}" for i in range(7)},
}

# TotalSegmentator's vertebrae model itself, Dataset292_TotalSegmentator_part2_vertebrae_1532subj
# (map_to_binary.py, class_map_5_parts["class_map_part_vertebrae"], task 292): sacrum 1, S1 2,
# L5 3 ... L1 7, T12 8 ... T1 19, C7 20 ... C1 26. A bundle made from those weights needs this map;
# the "totalsegmentator" one above would name every vertebra wrongly.
TOTALSEGMENTATOR_VERTEBRAE: dict[int, str] = {
    1: "sacrum",
    2: "S1",
    **{3 + i: f"L{5 - i}" for i in range(5)},
    **{8 + i: f"T{12 - i}" for i in range(12)},
    **{20 + i: f"C{7 - i}" for i in range(7)},
}

PRESETS: dict[str, dict[int, str]] = {
    "paper": PAPER,
    "verse": VERSE,
    "totalsegmentator": TOTALSEGMENTATOR,
    "totalsegmentator-vertebrae": TOTALSEGMENTATOR_VERTEBRAE,
}
"""Label-map presets by name. ``totalsegmentator`` is for label maps in the ids of TotalSegmentator's
merged ``total`` output; ``totalsegmentator-vertebrae`` is for its Dataset292 vertebrae model's own ids."""


def preset(name: str) -> dict[int, str]:
    """Return a copy of the label map called ``name`` (one of PRESETS' keys)."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise UnknownLevelError(
            f"unknown label convention {name!r}; expected one of {', '.join(PRESETS)}"
        ) from None


def check_label_map(label_map: dict[int, str], where: str) -> dict[int, str]:
    """Validate a label map (label id -> level name) and return it with int keys.

    Raises UnknownLevelError naming ``where`` (a file, a preset) and the offending entry.
    """
    if not isinstance(label_map, dict):
        raise UnknownLevelError(f"{where}: the label map must map label ids to level names")
    checked: dict[int, str] = {}
    for key, level in label_map.items():
        try:
            # int() would truncate 1.5 to 1 and take True for 1: only ints and integer strings.
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise TypeError
            label = int(key)
        except (TypeError, ValueError):
            raise UnknownLevelError(f"{where}: label id {key!r} is not an integer") from None
        if label <= 0:
            raise UnknownLevelError(f"{where}: label id {label} must be positive (0 is background)")
        if label in checked:
            raise UnknownLevelError(f"{where}: label id {label} is given twice")
        if level not in KNOWN_LEVELS:
            raise UnknownLevelError(
                f"{where}: label {label} names unknown level {level!r} "
                f"(known: C1-C7, T1-T13, L1-L6, S1, sacrum)"
            )
        checked[label] = level
    if len(set(checked.values())) != len(checked):
        twice = sorted({level for level in checked.values() if list(checked.values()).count(level) > 1})
        raise UnknownLevelError(f"{where}: level(s) {', '.join(twice)} appear under two label ids")
    return checked


AUXILIARY_NAMES: tuple[str, ...] = ("C7", "sacrum", "rib")
"""Structures a model may segment besides T1-L5 to anchor the naming (a bundle's ``auxiliary_labels``).

They are never reported: the segmenter uses C7 and the sacrum as the column's two ends when
it names the vertebrae, and sets every auxiliary label to background in its output."""


def check_auxiliary_labels(auxiliary: dict, label_map: dict[int, str], where: str) -> dict[int, str]:
    """Validate a bundle's auxiliary labels (id -> one of AUXILIARY_NAMES) against its reported label map."""
    if not isinstance(auxiliary, dict):
        raise UnknownLevelError(f"{where}: auxiliary_labels must map label ids to names")
    checked: dict[int, str] = {}
    for key, name in auxiliary.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)) or not str(key).lstrip("-").isdigit():
            raise UnknownLevelError(f"{where}: auxiliary label id {key!r} is not an integer")
        label = int(key)
        if label <= 0 or label in checked:
            raise UnknownLevelError(f"{where}: auxiliary label id {label} is not positive or given twice")
        if label in label_map:
            raise UnknownLevelError(f"{where}: label id {label} is both reported ({label_map[label]}) and auxiliary")
        if name not in AUXILIARY_NAMES:
            raise UnknownLevelError(f"{where}: auxiliary label {label} names {name!r} "
                                    f"(known: {', '.join(AUXILIARY_NAMES)})")
        checked[label] = name
    if len(set(checked.values())) != len(checked):
        raise UnknownLevelError(f"{where}: an auxiliary name appears under two label ids")
    return checked


def level_index(level: str) -> int:
    """Position of a level in the craniocaudal order of KNOWN_LEVELS' main column (C1=0 ... S1)."""
    order = [f"C{i}" for i in range(1, 8)] + THORACIC + ["T13"] + LUMBAR + ["L6", "S1", "sacrum"]
    return order.index(level)


def level_of_label_name(name: str) -> str | None:
    """The level a label name denotes, or None: ``vertebrae_T1``, ``T1``, ``T1 vertebra``, ``sacrum``, ``S1``.

    Trained-model folders (nnU-Net's ``dataset.json``, TotalSegmentator's class maps) name
    their labels rather than number them by any convention spine-node knows; reading the
    names is how a label map is derived from such a folder instead of being guessed.
    """
    text = name.strip().lower().replace("-", "_")
    for prefix in ("vertebrae_", "vertebra_"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    for suffix in (" vertebra", "_vertebra"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if text == "sacrum":
        return "sacrum"
    candidate = text.upper()
    return candidate if candidate in KNOWN_LEVELS else None
