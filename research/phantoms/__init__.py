"""Synthetic spine CT phantoms with exact labels: anatomy, rendering, DICOM and NIfTI writers."""
