"""The operators' subcommands of issue 17, registered together: ``purge`` and ``retrieve``.

One entry point keeps ``cli/main.py`` to one line for all of them.
"""
from __future__ import annotations

from dicom_node.cli import purge, retrieve


def add_parsers(sub) -> None:
    purge.add_parser(sub)
    retrieve.add_parser(sub)
