"""Coded concepts and colours that spine-node's DICOM SEG and TID 1500 SR use.

Every standard code comes from pydicom's DICOM tables (``pydicom.sr.codedict.codes``),
never typed by hand, so that a typo cannot reach a PACS (see DICOM_REFERENCE.md §1-2):

* a vertebra level -> its SNOMED CT code, e.g. L1 -> (66794005, SCT, "L1 vertebra");
* segment category (91723000, SCT, "Anatomical Structure") from CID 7150;
* algorithm family (123110, DCM, "Artificial Intelligence") from CID 7162.

No SNOMED CT concept for "osteolytic / osteoblastic / mixed lesion" could be confirmed,
so the lesion class is coded in a private scheme, ``99VERTMET`` (a private designator
must begin with "99"), which every object that uses it declares in its
CodingSchemeIdentificationSequence (``coding_scheme_identification()``). Generic readers
also get the standard (94222008, SCT, "Bony metastasis") = Present / Absent, or
(82334004, SCT, "Indeterminate") for the class ``indeterminate`` (``metastasis_value``).

Colours: the standard gives none per vertebra, so spine-node fixes its own palette
(``LEVEL_COLOURS``), a hue wheel walked in steps of 7/17 of a turn so that neighbouring
levels differ by ~150 degrees of hue. These RGB values are part of the output format:
keep them stable across versions.
"""
from __future__ import annotations

from pydicom.sr.codedict import codes
from highdicom.coding_schemes import CodingSchemeIdentificationItem  # not re-exported by highdicom 0.28
from highdicom.sr.coding import CodedConcept

from pipelines.errors import UnknownLevelError
from pipelines.levels import LEVELS
from pipelines.lesions import LESION_CLASSES

ANATOMICAL_STRUCTURE = CodedConcept.from_code(codes.SCT.AnatomicalStructure)  # 91723000, CID 7150
VERTEBRA = CodedConcept.from_code(codes.SCT.Vertebra)                           # 51282000
ARTIFICIAL_INTELLIGENCE = CodedConcept.from_code(codes.cid7162.ArtificialIntelligence)  # 123110 DCM

VOLUME = CodedConcept.from_code(codes.SCT.Volume)                               # 118565006
MILLILITRE = CodedConcept("ml", "UCUM", "milliliter")                          # codes.UCUM has no ml
ATTENUATION = CodedConcept.from_code(codes.DCM.AttenuationCoefficient)          # 112031 DCM
HOUNSFIELD_UNIT = CodedConcept.from_code(codes.UCUM.HounsfieldUnit)             # [hnsf'U]
MEAN = CodedConcept.from_code(codes.SCT.Mean)                                   # 373098007
BONY_METASTASIS = CodedConcept.from_code(codes.SCT.BonyMetastasis)              # 94222008
PRESENT = CodedConcept.from_code(codes.SCT.Present)                             # 52101004
ABSENT = CodedConcept.from_code(codes.SCT.Absent)                               # 272519000
INDETERMINATE = CodedConcept.from_code(codes.SCT.Indeterminate)                 # 82334004
CT_PROCEDURE = CodedConcept.from_code(codes.LN.CTUnspecifiedBodyRegion)         # 25045-6 LN

PRIVATE_SCHEME = "99VERTMET"
PRIVATE_SCHEME_VERSION = "1.0"

LESION_TYPE = CodedConcept("VML-001", PRIVATE_SCHEME, "Vertebral metastatic lesion type")
LESION_CODES: dict[str, CodedConcept] = {
    "none": CodedConcept("VML-013", PRIVATE_SCHEME, "No metastatic lesion"),
    "lytic": CodedConcept("VML-010", PRIVATE_SCHEME, "Osteolytic lesion"),
    "blastic": CodedConcept("VML-011", PRIVATE_SCHEME, "Osteoblastic (sclerotic) lesion"),
    "mixed": CodedConcept("VML-012", PRIVATE_SCHEME, "Mixed lytic-blastic lesion"),
    "indeterminate": CodedConcept("VML-014", PRIVATE_SCHEME, "Indeterminate: no lesion call"),
}

LEVEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "T1": (242, 73, 73),
    "T2": (73, 242, 152),
    "T3": (232, 73, 242),
    "T4": (172, 242, 73),
    "T5": (73, 93, 242),
    "T6": (242, 133, 73),
    "T7": (73, 242, 212),
    "T8": (242, 73, 192),
    "T9": (113, 242, 73),
    "T10": (113, 73, 242),
    "T11": (242, 192, 73),
    "T12": (73, 212, 242),
    "L1": (242, 73, 133),
    "L2": (73, 242, 93),
    "L3": (172, 73, 242),
    "L4": (232, 242, 73),
    "L5": (73, 152, 242),
}
"""Recommended display colour (sRGB) of each level's segment: fixed, documented, stable."""


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise UnknownLevelError(f"vertebra level {level!r} has no DICOM code here; expected one of T1..L5")


def vertebra_code(level: str) -> CodedConcept:
    """SNOMED CT code of a vertebra level (T1..L5) with its DICOM meaning, from pydicom's tables."""
    _check_level(level)
    return CodedConcept.from_code(getattr(codes.SCT, f"{level}Vertebra"))


def level_colour(level: str) -> tuple[int, int, int]:
    """The fixed RGB display colour of a level's segment."""
    _check_level(level)
    return LEVEL_COLOURS[level]


def lesion_code(lesion: str) -> CodedConcept:
    """The private-scheme code of a lesion class (none | lytic | blastic | mixed | indeterminate)."""
    try:
        return LESION_CODES[lesion]
    except KeyError:
        raise ValueError(f"lesion class {lesion!r} is not one of {', '.join(LESION_CLASSES)}") from None


def metastasis_value(lesion: str) -> CodedConcept:
    """The value of (94222008, SCT, "Bony metastasis") for a lesion class: Present, Absent or Indeterminate.

    Only lytic, blastic and mixed are Present. ``indeterminate`` (weak evidence, a vertebra
    cut by the scan, too little bone) is (82334004, SCT, "Indeterminate"): never reported as
    a metastasis, nor as its absence.
    """
    lesion_code(lesion)  # an unknown class is refused with the same sentence
    if lesion == "none":
        return ABSENT
    return INDETERMINATE if lesion == "indeterminate" else PRESENT


FREE_TEXT_SCHEME = "CST4"  # Cornerstone's scheme for a free-text label in a code (dcmjs, OHIF)
FREE_TEXT_VALUE = "CORNERSTONEFREETEXT"
LESION_WORDS = {"none": "no lesion", "lytic": "osteolytic lesion", "blastic": "osteoblastic lesion",
                "mixed": "mixed lytic-blastic lesion", "indeterminate": "indeterminate, no lesion call"}


def viewer_label(level: str, lesion: str) -> CodedConcept:
    """A free-text label (Cornerstone's CST4 CORNERSTONEFREETEXT) naming a vertebra and its lesion class.

    OHIF labels an SR measurement with its numbers and its first Finding Site's meaning, and
    shows no qualitative evaluation: a first Finding Site coded this way is how a viewer
    built on Cornerstone shows "L1 vertebra: osteolytic lesion". The standard codes (the
    SCT vertebra as the next Finding Site, the lesion class as a qualitative evaluation)
    stay in the same group for every other reader.
    """
    lesion_code(lesion)  # an unknown class is refused with the same sentence
    return CodedConcept(FREE_TEXT_VALUE, FREE_TEXT_SCHEME, f"{level} vertebra: {LESION_WORDS[lesion]}")


def free_text_scheme_identification() -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item that declares Cornerstone's free-text scheme CST4."""
    return CodingSchemeIdentificationItem(designator=FREE_TEXT_SCHEME, name="Cornerstone free-text labels",
                                          responsible_organization="cornerstonejs")


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item that declares the private scheme 99VERTMET.

    No Coding Scheme UID: the scheme is in no registry (the UID is required only for a
    registered scheme, and dciodvfy would flag an unknown one as one more warning).
    """
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="spine-node vertebral metastasis codes",
        version=PRIVATE_SCHEME_VERSION,
        responsible_organization="spine-node",
    )
