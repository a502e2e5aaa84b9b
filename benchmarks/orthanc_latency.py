"""Latency with Orthanc: series stable in Orthanc -> SEG and SR stored in Orthanc, against `spine-node process`.

Measured in one run on one phantom CT series (default: 300 slices of 512x512 at 0.8x0.8x1 mm,
a thoraco-lumbar phantom cut to 300 slices, as in process_cpu.py; ``--slices``/``--matrix``
for a smaller one, the size used is printed):

* ``process``: wall time of ``spine-node process SERIES --out DIR`` (a fresh process: Python
  start, model load, load, analyse, SEG/SR, write), and the sum of its pipeline stages from
  summary.json (the same work without start-up and model load);
* ``Orthanc``: a local Orthanc 1.10.1 (orthanc/local_orthanc.py, Lua routing script) and
  ``spine-node serve`` (SQLite, destination = that Orthanc by C-STORE, accepting Orthanc's AE
  only), the node warmed up by a small series that went the whole way first (its worker holds
  the model, as in a running service). The series is uploaded through Orthanc's REST API; the
  clock starts when Orthanc's ``/changes`` shows the series' StableSeries change and stops when
  it shows the NewInstance of both the SEG and the SR in the series' study (``/changes`` is
  polled every 50 ms; its own Date field has a resolution of one second and is printed as a
  cross-check). The interval is split with the node's database times: Orthanc -> node transfer
  (until the node saw the association released), queue and analysis, delivery and storing.

Target (issue 5): Orthanc latency - process wall <= 15 % of process wall. These machines are
shared and noisy: compare only figures measured in the same run.

    .venv/bin/python benchmarks/orthanc_latency.py [--slices 300] [--matrix 512] [--stable-age 5] [--keep]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from common import (PIPELINE_STAGES, echo, local_orthanc as _local_orthanc, lumbar_series, node_environment,
                    start_node as _serve, stop_group, thoracolumbar_phantom, time_process as _time_process, verdict,
                    wait_for)

NODE_AET = "SPINENODE"
SEG_SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR"}

local_orthanc = _local_orthanc()


# ------------------------------------------------------------------ series

def big_series(folder: Path, slices: int, matrix: int, seed: int = 500001) -> Path:
    """A thoraco-lumbar phantom at 0.8x0.8x1 mm on a ``matrix``-square grid, cut to ``slices`` slices."""
    from research.phantoms.dicom import write_dicom_series

    pixel = 0.8 * 512 / matrix  # the same field of view whatever the matrix
    write_dicom_series(thoracolumbar_phantom(seed, slices, (1.0, pixel, pixel), matrix), folder)
    return folder


def small_series(folder: Path, seed: int = 500002) -> Path:
    return lumbar_series(folder, seed, matrix=192)


def series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# ------------------------------------------------------------------ process

def time_process(series: Path, out: Path, device: str) -> dict:
    timed = _time_process(series, out, device)
    return {**timed, "network_s": timed["timings_s"].get("network", 0.0)}


# ------------------------------------------------------------------ Orthanc side

class Orthanc:
    """The few REST calls the measurement needs (plain requests: the timing loop stays thin)."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, **params):
        answer = self.http.get(f"{self.url}/{path}", params=params, timeout=60)
        answer.raise_for_status()
        return answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else answer.text

    def upload(self, files: list[Path]) -> tuple[str, str]:
        """POST each file to /instances; (Orthanc study id, Orthanc series id) of the series."""
        answer = None
        for path in files:
            answer = self.http.post(f"{self.url}/instances", data=path.read_bytes(), timeout=120)
            answer.raise_for_status()
        instance = answer.json()
        return instance["ParentStudy"], instance["ParentSeries"]

    def last_change(self) -> int:
        return int(self.get("changes", last="")["Last"])

    def outputs_in_study(self, study_id: str) -> set[str]:
        return {s["MainDicomTags"].get("Modality") for s in self.get(f"studies/{study_id}/series")
                if s["Instances"]} & {"SEG", "SR"}


@dataclasses.dataclass
class Seen:
    """When the polling loop saw each change (time.time()), and Orthanc's own Date of it."""

    stable: float = 0.0
    stable_date: str = ""
    stable_count: int = 0  # more than one: the upload paused longer than StableAge (a partial series was routed)
    outputs: dict = dataclasses.field(default_factory=dict)       # "SEG"/"SR" -> time.time()
    output_dates: dict = dataclasses.field(default_factory=dict)  # "SEG"/"SR" -> Orthanc Date


def watch_changes(orthanc: Orthanc, since: int, study_id: str, series_id: str, timeout: float) -> Seen:
    """Poll /changes from ``since`` until the series is stable and a SEG and an SR are new in its study."""
    seen = Seen()
    deadline = time.monotonic() + timeout
    while set(seen.outputs) != {"SEG", "SR"}:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s; seen so far: {seen}")
        page = orthanc.get("changes", since=since, limit=1000)
        now = time.time()
        for change in page["Changes"]:
            if change["ChangeType"] == "StableSeries" and change["ID"] == series_id:
                seen.stable_count += 1
                if seen.stable_count == 1:
                    seen.stable, seen.stable_date = now, change["Date"]
            elif change["ChangeType"] == "NewInstance" and seen.stable:
                kind = _output_kind(orthanc, change["ID"], study_id)
                if kind and kind not in seen.outputs:
                    seen.outputs[kind], seen.output_dates[kind] = now, change["Date"]
        since = page["Last"]
        if page["Done"]:
            time.sleep(0.05)
    return seen


def _output_kind(orthanc: Orthanc, instance_id: str, study_id: str) -> str | None:
    sop_class = orthanc.get(f"instances/{instance_id}/metadata/SopClassUid")
    if sop_class not in SEG_SR_CLASSES:
        return None
    series = orthanc.get(f"instances/{instance_id}/series")
    return SEG_SR_CLASSES[sop_class] if series["ParentStudy"] == study_id else None


# ------------------------------------------------------------------ node

def start_node(work: Path, orthanc, port: int, device: str) -> subprocess.Popen:
    env = node_environment(SPINE_NODE_DATA_DIR=str(work / "node"), SPINE_NODE_PORT=str(port),
                           SPINE_NODE_HOST=local_orthanc.LOOPBACK, SPINE_NODE_AE_TITLE=NODE_AET,
                           SPINE_NODE_ALLOWED_AES=orthanc.aet,
                           SPINE_NODE_DESTINATIONS=f"{orthanc.aet}@{local_orthanc.LOOPBACK}:{orthanc.dicom_port}",
                           SPINE_NODE_DEVICE=device)
    node = _serve(env, work / "node.log")

    def up() -> bool:
        if node.poll() is not None:
            raise SystemExit(f"spine-node serve exited {node.returncode}; see {work / 'node.log'}")
        return echo(port, NODE_AET, calling=orthanc.aet)

    wait_for(up, 120, "the node to answer C-ECHO", interval=0.5)
    return node


def node_times(database: Path, series_uid: str) -> dict[str, float]:
    """The node's own times (time.time() scale) for the series: last instance, release, job, deliveries."""
    from sqlalchemy import select

    from storage import open_database
    from storage.models import Delivery, Job, Output, Series

    db = open_database(f"sqlite:///{database}", create=False)
    try:
        with db.reading() as session:
            series = session.scalars(select(Series).where(Series.series_instance_uid == series_uid)).one()
            job = session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.id.desc())).first()
            delivered = [d.delivered_at for d in session.scalars(
                select(Delivery).join(Output, Delivery.output_id == Output.id).where(Output.job_id == job.id))]
            times = {"first instance": series.first_received_at, "last instance": series.last_received_at,
                     "released": series.released_at, "job started": job.started_at,
                     "job finished": job.finished_at, "delivered": max(delivered)}
            pipeline = sum((job.timings or {}).get(k, 0.0) for k in PIPELINE_STAGES)
    finally:
        db.close()
    out = {name: _epoch(at) for name, at in times.items() if at is not None}
    out["pipeline_s"] = pipeline
    return out


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


# ------------------------------------------------------------------ main

def through_orthanc(orthanc: Orthanc, files: list[Path], timeout: float) -> Seen:
    since = orthanc.last_change()
    study_id, series_id = orthanc.upload(files)
    return watch_changes(orthanc, since, study_id, series_id, timeout)


def report(size: str, process: dict, seen: Seen, node: dict) -> None:
    latency = max(seen.outputs.values()) - seen.stable
    base = process["wall_s"]
    print(f"series: {size}")
    print(f"spine-node process: {base:.1f} s wall ({process['pipeline_s']:.1f} s in its pipeline stages, "
          f"network {process['network_s']:.1f} s)")
    print(f"Orthanc: StableSeries -> SEG and SR stored: {latency:.1f} s "
          f"(Orthanc's /changes Dates: stable {seen.stable_date}, SEG {seen.output_dates['SEG']}, "
          f"SR {seen.output_dates['SR']})")
    steps = [("Orthanc -> node transfer (to the node's 'released')", seen.stable, node.get("released")),
             ("queue (released -> job started)", node.get("released"), node.get("job started")),
             ("analysis in the node's worker (job started -> finished)", node.get("job started"),
              node.get("job finished")),
             ("delivery to Orthanc (job finished -> last delivered)", node.get("job finished"), node.get("delivered")),
             ("until Orthanc's /changes showed both", node.get("delivered"), max(seen.outputs.values()))]
    for name, start, end in steps:
        if start is not None and end is not None:
            print(f"  {name}: {end - start:.1f} s")
    print(f"  (the node's pipeline stages: {node['pipeline_s']:.1f} s; "
          f"{node.get('last instance', 0) - node.get('first instance', 0):.1f} s between first and last instance)")
    if seen.stable_count > 1:
        print(f"  WARNING: {seen.stable_count} StableSeries changes for the series: the upload paused longer than "
              "StableAge and Orthanc routed a partial series first; the figure above is not valid")
    overhead = latency - base
    ratio = overhead / base
    print(f"overhead vs process wall: {overhead:+.1f} s = {100 * ratio:+.1f} % (target <= +15 %: "
          f"{verdict(ratio <= 0.15)}); vs its pipeline stages: "
          f"{latency - process['pipeline_s']:+.1f} s = {100 * (latency / process['pipeline_s'] - 1):+.1f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--stable-age", type=int, default=5,
                        help="Orthanc's StableAge, seconds (not part of the latency; long enough that a pause "
                        "during the upload does not make a partial series stable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (series, node data, logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spine-node-orthanc-latency-"))
    t = time.perf_counter()
    series = big_series(work / "series", args.slices, args.matrix)
    files = series_files(series)
    warm = series_files(small_series(work / "warm"))
    size = f"{len(files)} slices of {args.matrix}x{args.matrix} (phantom, written in {time.perf_counter() - t:.0f} s)"
    print(f"series: {size}", flush=True)

    process = time_process(series, work / "process-out", args.device)
    print(f"spine-node process: {process['wall_s']:.1f} s", flush=True)

    node_port = local_orthanc.free_port()
    node_modality = local_orthanc.Modality(NODE_AET, local_orthanc.LOOPBACK, node_port)
    with local_orthanc.LocalOrthanc(stable_age=args.stable_age, node=node_modality) as orthanc_process:
        node = start_node(work, orthanc_process, node_port, args.device)
        try:
            orthanc = Orthanc(orthanc_process.url)
            through_orthanc(orthanc, warm, args.timeout)  # the worker loads the model
            print("node warmed up by a first series through Orthanc", flush=True)
            seen = through_orthanc(orthanc, files, args.timeout)
        finally:
            stop_group(node, signal.SIGTERM, 60)
    import pydicom

    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    report(size, process, seen, node_times(work / "node" / "spine-node.db", series_uid))
    if args.keep:
        print(f"(work folder {work}; node log {work / 'node.log'})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
