"""Phantoms v2: real VerSe vertebra shapes, ribs, organs and scanner effects (issue 12)."""
