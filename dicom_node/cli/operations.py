"""The operators' subcommands of issue 17, registered together: ``purge`` and ``retrieve``.

One entry point keeps ``cli/main.py`` to one line for all of them.
"""
from __future__ import annotations


def add_parsers(sub) -> None:
    from dicom_node.cli import purge

    purge.add_parser(sub)
    try:
        from dicom_node.cli import retrieve
    except ImportError:  # retrieve is not built yet in this tree
        return
    retrieve.add_parser(sub)
