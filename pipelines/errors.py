"""Errors of the pipelines package, each with a message a person can act on.

Every error names *what* went wrong and *where* (a path, a level, a label), in one line,
so that the CLI can print it as is and the node can record it in SQL.
"""


class PipelineError(Exception):
    """Base class of every error raised by ``pipelines``."""


class ModelBundleError(PipelineError):
    """A model bundle is missing, incomplete, corrupt or inconsistent with its manifest."""


class ChecksumMismatch(ModelBundleError):
    """A checkpoint's sha256 differs from the one its manifest records."""


class UnknownLevelError(ModelBundleError):
    """A label map names a vertebra level spine-node does not know."""


class EvaluationError(PipelineError):
    """A case cannot be evaluated (missing files, unknown label convention, shape mismatch)."""


class DicomWriteError(PipelineError):
    """A DICOM SEG or SR cannot be written from the inputs given (no findings, labels and findings disagree)."""
