"""The input side: DICOM files -> series groups -> one checked volume with its geometry.

``loader`` finds and loads series, ``frames`` reads single- and multi-frame headers,
``checks`` decides whether a stack is usable, ``decode`` turns pixel data into HU.
"""
from pipelines.series.loader import SeriesFiles, SeriesRules, discover_series, load_series, scan_inputs

__all__ = ["SeriesFiles", "SeriesRules", "discover_series", "load_series", "scan_inputs"]
