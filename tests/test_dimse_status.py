"""DIMSE statuses come from pynetdicom's tables of the standard, not from a table of our own."""
from __future__ import annotations

import pytest
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicom_node.dimse.status import StoreStatus, is_stored, meaning


@pytest.mark.parametrize("status, category", [
    (StoreStatus.SUCCESS, "Success"),
    (StoreStatus.OUT_OF_RESOURCES, "Failure"),
    (StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Failure"),
    (StoreStatus.CANNOT_UNDERSTAND, "Failure"),
    (StoreStatus.TRUNCATED, "Failure"),
])
def test_every_status_the_node_answers_has_the_category_the_standard_gives_it(status, category):
    assert code_to_category(int(status)) == category
    assert int(status) == 0 or int(status) in STORAGE_SERVICE_CLASS_STATUS


def test_warnings_count_as_stored_and_failures_do_not():
    assert is_stored(0x0000) and is_stored(0xB000) and is_stored(0xB007) and is_stored(0xB006)
    assert not is_stored(0xA700) and not is_stored(0xC000) and not is_stored(0x0122)


def test_a_status_is_explained_in_the_standards_words():
    assert meaning(0xA700) == "Failure: Refused: Out of Resources"
    assert meaning(0x0122).startswith("Failure: Refused: SOP Class Not Supported")
