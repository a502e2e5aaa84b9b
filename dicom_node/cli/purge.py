"""``spine-node purge [--dry-run]``: apply the retention rules once, or list what they would remove.

Reads the node's configuration like ``serve`` (``--config FILE`` and ``SPINE_NODE_*``):
``SPINE_NODE_RETENTION_DAYS`` for instance files and ``SPINE_NODE_OUTPUT_RETENTION_DAYS``
for outputs; ``--days`` / ``--output-days`` override them for this run. Only finished
series whose outputs are all delivered, and outputs whose every delivery is confirmed, are
ever offered (``storage.operations``); the rows stay and each purge is an event. The node
may be running: each purge is its own transaction and re-checks the row before the files go.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from storage import Store, StorageError, open_database
from storage.operations import Operations

from dicom_node.config.settings import load_config
from dicom_node.errors import NodeError
from dicom_node.runtime.retention import Retention


def add_parser(sub) -> None:
    p = sub.add_parser("purge", help="remove instance files and outputs past their retention (rows are kept)")
    p.add_argument("--config", type=Path, help="configuration file (default: $SPINE_NODE_CONFIG, if set)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--days", type=float, help="instance files older than this many days (default: retention_days)")
    p.add_argument("--output-days", type=float,
                   help="outputs older than this many days (default: output_retention_days)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=cmd_purge)


def cmd_purge(args: argparse.Namespace) -> int:
    config = load_config(args.config, os.environ)
    days = config.retention_days if args.days is None else args.days
    output_days = config.output_retention_days if args.output_days is None else args.output_days
    if days < 0 or output_days < 0:
        raise NodeError("--days and --output-days are 0 (keep) or more")
    if not days and not output_days:
        print("retention is off (SPINE_NODE_RETENTION_DAYS and SPINE_NODE_OUTPUT_RETENTION_DAYS are 0): "
              "nothing to purge; give --days or --output-days for a one-off purge")
        return 0
    try:
        db = open_database(config.database_url, create=False)
    except StorageError as exc:
        raise NodeError(str(exc)) from exc
    try:
        report = Retention(Operations(Store(db)), config.data_dir, days, output_days).purge(dry_run=args.dry_run)
    except StorageError as exc:
        raise NodeError(str(exc)) from exc
    finally:
        db.close()
    if args.json:
        print(json.dumps({"dry_run": report.dry_run, "files": report.files, "bytes": report.freed_bytes,
                          "series": [c.uid for c in report.series], "outputs": [c.uid for c in report.outputs]},
                         indent=1))
    else:
        print("\n".join(report.lines()))
    return 0
