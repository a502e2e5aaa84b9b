"""Errors of the pipelines package, each with a message a person can act on.

Every error names *what* went wrong and *where* (a path, a level, a label), in one line,
so that the CLI can print it as is and the node can record it in SQL. The tree::

    PipelineError                 anything pipelines refuses or cannot do
    ├── PipelineOptionError       an option out of range (PipelineOptions checks itself)
    ├── LesionConfigError         lesion classifier thresholds unknown or out of range
    ├── ModelBundleError          a bundle missing, incomplete, corrupt or inconsistent
    │   ├── ChecksumMismatch      a checkpoint's sha256 differs from its manifest
    │   └── UnknownLevelError     a label map names a level spine-node does not know
    ├── SeriesRejected            the input series is refused (``code`` + reason)
    ├── DicomWriteError           a SEG or SR cannot be built from what was given
    └── EvaluationError           a research evaluation case cannot be scored

``SeriesRejected`` is the input's fault (a 'rejected' outcome); every other one is ours
or the configuration's (a 'failed' outcome). See docs/ARCHITECTURE.md.
"""


class PipelineError(Exception):
    """Base class of every error raised by ``pipelines``."""


class PipelineOptionError(PipelineError):
    """A pipeline option (model, device, step size, SEG type, min slices) is out of range."""


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


class SeriesRejected(PipelineError):
    """A DICOM series the pipeline refuses to process, with a machine ``code`` and a reason a person reads.

    ``code`` is one short word from ``pipelines.series.checks.REJECTION_CODES`` ("not_ct",
    "too_few_slices", "gap", ...), for summary files, SQL and tests; the message names the
    series by its (possibly derived) SeriesInstanceUID, never by patient data.
    """

    def __init__(self, code: str, series_uid: str, reason: str):
        super().__init__(f"series {series_uid or '(no UID)'}: {reason}")
        self.code = code
        self.series_uid = series_uid
        self.reason = reason


class LesionConfigError(PipelineError):
    """The lesion classifier's thresholds (from the node configuration) are unknown or out of range."""
