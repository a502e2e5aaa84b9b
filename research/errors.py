"""Errors of the research package, each one line a person can act on.

They derive from ``pipelines.errors.PipelineError`` so that ``spine-node`` prints them as
``spine-node: error: ...`` like every other refusal. The tree::

    ResearchError                  anything research refuses or cannot do
    ├── DatasetError               a collection or dataset cannot be imported at all
    │   └── CaseRefused            one case of a collection is refused (``code`` + reason);
    │                              the importer records it and goes on with the others
    ├── TrainingError              the training protocol cannot run or resume
    ├── ModelImportError           an nnU-Net / TotalSegmentator results folder cannot become a bundle
    └── PaperValidationError       a validation or comparison cannot be computed
"""
from __future__ import annotations

from pipelines.errors import PipelineError


class ResearchError(PipelineError):
    """Base class of every error raised by ``research``'s dataset, training and validation modules."""


class DatasetError(ResearchError):
    """A collection, workbook or dataset cannot be read at all (nothing is written)."""


class CaseRefused(DatasetError):
    """One case is refused, with a machine ``code`` (for tests and the import log) and a reason."""

    def __init__(self, case: str, code: str, reason: str):
        super().__init__(f"case {case}: {reason}")
        self.case = case
        self.code = code
        self.reason = reason


class TrainingError(ResearchError):
    """The training protocol cannot start, resume or produce its bundle."""


class ModelImportError(ResearchError):
    """A trained-model folder cannot be made a bundle (not found, ambiguous, label names that map to no level)."""


class PaperValidationError(ResearchError):
    """The paper's validation figures or a comparison of two bundles cannot be computed."""
