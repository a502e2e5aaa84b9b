"""``spine-node jobs list|show``: the provenance in SQL, as a table or JSON.

Both read the database named by the configuration (``--config FILE`` and the
``SPINE_NODE_*`` variables, as ``serve`` does) and never create one: a missing SQLite
file is an error that says so.

* ``jobs list [--json]``: every job, newest first: state, series UID, timings, output UIDs.
* ``jobs show ID [--json]``: one job's whole story: events, model identity, device,
  parameters, software versions, outputs and their deliveries, errors.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from storage import Store, StorageError, open_database

from dicom_node.config.settings import load_config
from dicom_node.errors import NodeError


def add_parser(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="configuration file (default: $SPINE_NODE_CONFIG, if set)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("jobs", help="the jobs recorded in the node's database")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    jsub.add_parser("list", parents=[common], help="every job: state, series, timings, outputs") \
        .set_defaults(handler=cmd_jobs_list)
    show = jsub.add_parser("show", parents=[common], help="one job's whole story")
    show.add_argument("job_id", type=int, metavar="ID")
    show.set_defaults(handler=cmd_jobs_show)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    jobs = _read(args, lambda store: store.list_jobs())
    if args.json:
        print(json.dumps(jobs, indent=1))
    elif not jobs:
        print("no jobs")
    else:
        print(format_jobs_table(jobs))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    detail = _read(args, lambda store: store.job_detail(args.job_id))
    print(json.dumps(detail, indent=1) if args.json else format_job_detail(detail))
    return 0


def _read(args: argparse.Namespace, query):
    config = load_config(args.config, os.environ)
    try:
        db = open_database(config.database_url, create=False)
    except StorageError as exc:
        raise NodeError(str(exc)) from exc
    try:
        return query(Store(db))
    except StorageError as exc:
        raise NodeError(str(exc)) from exc
    finally:
        db.close()


def format_jobs_table(jobs: list[dict]) -> str:
    """One line per job: id, state, series version, creation time, waiting and running seconds, UIDs."""
    header = ("ID", "STATE", "V", "CREATED (UTC)", "QUEUED_S", "RUN_S", "SERIES UID", "OUTPUT UIDS")
    rows = [(str(j["id"]), j["state"], str(j["series_version"]), _when(j["created_at"]), _secs(j["queued_s"]),
             _secs(j["run_s"]), j["series_instance_uid"], ",".join(j["output_uids"]) or "-") for j in jobs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in [header, *rows])


def format_job_detail(d: dict) -> str:
    """A job's story as text: identity, timings, events, outputs, deliveries."""
    model = d["model"]
    lines = [
        f"job {d['id']}: {d['state']} (series version {d['series_version']}, attempt {d['attempts']})",
        f"  reason:      {d['reason']}",
        f"  study:       {d['study_instance_uid']}",
        f"  series:      {d['series_instance_uid']} ({d['instances']} instances from {d['calling_ae']}; "
        f"series now {d['series_state']}, version {d['series_current_version']})",
        f"  model:       {model['name']} {model['version']} sha256 {model['sha256']}",
        f"  device:      {d['device']} (worker {d['worker']})",
        f"  parameters:  {_pairs(d['parameters'])}",
        f"  software:    {_pairs(d['software'])}",
        f"  created:     {_when(d['created_at'])}; started {_when(d['started_at'])}; "
        f"finished {_when(d['finished_at'])}",
        f"  durations:   queued {_secs(d['queued_s'])} s, ran {_secs(d['run_s'])} s; "
        f"stages: {_pairs(d['timings'], ' s')}",
    ]
    if d["error"]:
        lines.append(f"  error:       {d['error']}")
    lines.append("events:")
    lines += [f"  {_when(e['at'])}  {e['state']:<16} {e['detail']}" for e in d["events"]]
    lines.append("outputs:" if d["outputs"] else "outputs: none")
    lines += [f"  {o['kind']:<8} {o['sop_instance_uid']}  {o['path']}" for o in d["outputs"]]
    lines.append("deliveries:" if d["deliveries"] else "deliveries: none")
    for v in d["deliveries"]:
        status = f"delivered {_when(v['delivered_at'])}" if v["state"] == "delivered" \
            else f"pending, next attempt {_when(v['next_attempt_at'])}"
        error = f"; last error: {v['last_error']}" if v["last_error"] else ""
        lines.append(f"  {v['kind']:<8} {v['sop_instance_uid']} -> {v['destination']}: {status} "
                     f"after {v['attempts']} attempt(s){error}")
    return "\n".join(lines)


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _secs(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _pairs(mapping: dict | None, unit: str = "") -> str:
    return ", ".join(f"{k}={v}{unit}" for k, v in (mapping or {}).items()) or "-"
