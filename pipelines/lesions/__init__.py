"""Metastatic involvement of one vertebra: none, lytic, blastic, mixed or indeterminate, with the reasons.

An explainable rule (``classifier.py``) on the CT values inside the vertebral body
(``zones.py``), judged against the vertebra's own bone and the series' noise (``noise.py``).
``ThresholdClassifier(dict_or_None)`` is the configured entry; any object with the same
``classify`` signature (``LesionClassifier``) can replace it.
"""
from pipelines.lesions.classifier import (LESION_CLASSES, LESION_KINDS, LesionClassifier, LesionFinding,
                                          LesionThresholds, ThresholdClassifier, smoothing_sigma_mm)
from pipelines.lesions.noise import NoiseEstimate, estimate_noise
from pipelines.lesions.zones import snap_to_cortex, trabecular_core, vertebral_body

__all__ = ["LESION_CLASSES", "LESION_KINDS", "LesionClassifier", "LesionFinding", "LesionThresholds",
           "NoiseEstimate", "ThresholdClassifier", "estimate_noise", "smoothing_sigma_mm", "snap_to_cortex",
           "trabecular_core", "vertebral_body"]
