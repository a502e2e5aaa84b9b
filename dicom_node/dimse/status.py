"""DIMSE statuses, named and interpreted by pynetdicom's tables of the standard (PS3.4 B.2.3, PS3.7 C).

pynetdicom's ``status`` module holds the storage service class table and ``code_to_category``;
this module names the few codes the node answers and decides, from those tables, what a
peer's answer means. Nothing else in the node writes a status code as a bare number.
"""
from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import (GENERAL_STATUS, STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS,
                               code_to_category)


class StoreStatus(IntEnum):
    """C-STORE response statuses the node answers; each is a row of pynetdicom's storage table."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRUNCATED = 0xC001  # 'Cannot Understand' range; the node uses it for a payload cut short


def is_stored(status: int) -> bool:
    """Whether a C-STORE answer means the peer kept the instance: Success, or a Warning (coercion, ...)."""
    return code_to_category(int(status)) in (STATUS_SUCCESS, STATUS_WARNING)


def meaning(status: int) -> str:
    """The standard's words for a status code, e.g. 'Failure: Refused: Out of Resources'."""
    code = int(status)
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code) or (code_to_category(code), "")
    return f"{category}: {text}" if text else category
