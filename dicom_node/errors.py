"""Errors of the node and its command line, each with a message a person can act on.

The tree::

    NodeError                   bad arguments, a refused start, a destination that cannot be reached
    ├── ConfigError             the configuration has mistakes (``messages``: one line each)
    ├── DestinationUnreachable  (dimse.scu) an SCU association or STOW-RS request failed
    └── PayloadError            (dimse.payload) a received instance cannot be stored (with its DIMSE status)

The node also meets the other packages' trees, ``pipelines.errors.PipelineError`` and
``storage.errors.StorageError``; ``dicom_node.cli.main`` turns each of the three into one
line on stderr and exit status 2. See docs/ARCHITECTURE.md.
"""


class NodeError(Exception):
    """Base class of the errors raised by ``dicom_node`` (bad arguments, configuration, I/O)."""


class ConfigError(NodeError):
    """The configuration (file and ``SPINE_NODE_*`` variables) has mistakes; ``messages`` lists each, one line each."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        if len(self.messages) == 1:
            text = self.messages[0]
        else:
            text = f"{len(self.messages)} configuration mistakes:\n" + "\n".join(f"  {m}" for m in self.messages)
        super().__init__(text)
