"""Lesions inserted into real CT: the insertion tool, reslicing to 1-3 mm, the real scans with vertebra masks."""
