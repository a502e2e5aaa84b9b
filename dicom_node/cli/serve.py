"""``spine-node serve [--config FILE]`` runs the node; ``spine-node echo AE@host:port`` checks a DICOM peer.

``serve`` reads the configuration (file and ``SPINE_NODE_*`` variables; every mistake is
one line and exit status 2), logs to stderr (UIDs only, never patient data) and runs
until SIGTERM or SIGINT. ``echo`` sends a C-ECHO and exits 0 when the peer answers Success.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dicom_node.errors import NodeError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="run the DICOM node (receive, process, send back)")
    p.add_argument("--config", type=Path, help="configuration file (default: $SPINE_NODE_CONFIG, if set)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(handler=cmd_serve)
    e = sub.add_parser("echo", help="C-ECHO a DICOM peer (exit 0 when it answers Success)")
    e.add_argument("peer", help="AE@host:port")
    e.add_argument("--calling-ae", default="SPINENODE", help="our AE title in the association (SPINENODE)")
    e.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the peer")
    e.set_defaults(handler=cmd_echo)


def configure_logging(level: str) -> None:
    """Log to stderr; libraries only from WARNING (their INFO lines add nothing the node does not log)."""
    logging.basicConfig(level=getattr(logging, level), format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
    for noisy in ("distributed", "highdicom", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.config.settings import load_config
    from dicom_node.runtime.node import serve

    from storage import StorageError

    config = load_config(args.config, os.environ)
    configure_logging(args.log_level)
    try:
        return serve(config)
    except StorageError as exc:
        raise NodeError(str(exc)) from exc


def cmd_echo(args: argparse.Namespace) -> int:
    from dicom_node.dimse.scu import DestinationUnreachable, echo, parse_destination
    from dicom_node.config.values import DimsePeer

    peer = parse_destination(args.peer)
    if not isinstance(peer, DimsePeer):
        raise NodeError(f"{args.peer!r}: C-ECHO needs AE@host:port")
    try:
        status = echo(peer, args.calling_ae, args.timeout)
    except DestinationUnreachable as exc:
        print(f"spine-node: {exc}", file=sys.stderr)
        return 1
    print(f"{peer}: C-ECHO status 0x{status:04X}")
    return 0 if status == 0 else 1
