"""Errors of the node and its command line, each with a message a person can act on."""


class NodeError(Exception):
    """Base class of the errors raised by ``dicom_node`` (bad arguments, configuration, I/O)."""
