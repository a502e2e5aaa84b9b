"""The ``spine-node`` command line: one module per group of subcommands (see docs/ARCHITECTURE.md).

``main`` is the console entry point; it turns every error of the three packages into a
one-line message and an exit status.
"""
from dicom_node.cli.main import main

__all__ = ["main"]
