"""Receive throughput of the node's C-STORE SCP against fair peers, side by side in one run.

One CT series (a thoraco-lumbar phantom, 300 slices of 512x512 at 0.8x0.8x1 mm, ~158 MB)
is sent over loopback with DCMTK ``storescu`` (the same sender, one association) to each
receiver in turn. The sender runs with ``TCP_NODELAY=1`` (DCMTK's libdcmnet reads this
environment variable and then disables Nagle's algorithm; Debian's build leaves Nagle on
by default): with Nagle on at both DCMTK ends, each instance's last small segment waits
for the peer's delayed ACK (~40 ms), which made storescp look ~50x slower than it is and
the node "11x faster" than DCMTK (issue 13). Receivers:

* ``node``: ``spine-node serve`` (SQLite by default; ``--postgres`` adds the node on a
  fresh PostgreSQL database): write + fsync + SQL row before each Success, as in production;
* ``storescp``: **the fair DCMTK peer**, ``storescp`` with ``TCP_NODELAY=1`` too, writing
  files into a folder (it does not fsync: it is faster than any durable receiver can be);
* ``storescp-nagle``: storescp and storescu with DCMTK's default (Nagle on): the old,
  unfair comparison, kept to show the artifact (not in the default set; ``--only``);
* ``orthanc``: Orthanc 1.10 as found (``orthanc/local_orthanc.py``), its own storage and index;
* ``minimal``: the least a durable SCP does, in this file: pynetdicom, each data set
  written to its file and fsynced, then Success (same PDU setting as the node);
* ``disk``: writing the same bytes to files with fsync in a loop, no network: the disk's
  limit for a receiver that fsyncs each instance before answering.

The clock runs from storescu's start to its exit (every instance acknowledged and the
association released). Each receiver starts fresh (empty folder, fresh database) for each
repeat and is left to settle (CPU idle: the node's worker loads its model at start) before
the clock starts; the node's quiet period is an hour and the node is killed as soon as
storescu exits, so that the job the release triggers never competes with a measurement.
Repeats are interleaved over the receivers (the minimal SCP and the node back to back) and the
median is reported: these machines are noisy (use --repeats 5 for a steadier ratio).
What the receivers wrote is deleted only at the end, and the page cache is synced before each
measurement, so that one contender's disk work does not land in another's time.

The report gives the node's throughput as a ratio of each peer's. Targets: node >= 0.8x
the minimal pynetdicom SCP (issue 4), >= 0.5x the fair DCMTK peer (issue 13: reported
whatever it is).

    .venv/bin/python benchmarks/receive_throughput.py [--repeats 3] [--postgres] [--series DIR]
        [--slices 300] [--only node,minimal,disk,storescp,storescp-nagle,orthanc]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (LOOPBACK, echo as _echo, free_port, local_orthanc, node_environment, start_node,
                    stop_group, thoracolumbar_phantom, verdict, wait_for)

SENDER_AE = "BENCHSCU"
# DCMTK's libdcmnet disables Nagle's algorithm when TCP_NODELAY=1 is in its environment.
SENDER_ENV = {**os.environ, "TCP_NODELAY": "1"}
NAGLE_ENV = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
SLICES = 300
SPACING = (1.0, 0.8, 0.8)
PG_ADMIN = os.environ.get("SPINE_NODE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def echo(port: int, called: str) -> bool:
    return _echo(port, called, calling=SENDER_AE)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def settle(pgid: int, timeout: float = 180.0, idle_cpu_s: float = 0.05) -> None:
    """Wait until the process group uses less than ``idle_cpu_s`` of CPU in a second (start-up work done)."""
    deadline = time.monotonic() + timeout
    last = group_cpu_s(pgid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = group_cpu_s(pgid)
        if now - last < idle_cpu_s:
            return
        last = now


# --- the series ----------------------------------------------------------------------------------------

def make_series(folder: Path, seed: int = 200000, slices: int = SLICES) -> list[Path]:
    """The thoraco-lumbar phantom (``slices`` of 512x512) as DICOM files (kept in ``folder`` for later runs)."""
    existing = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if len(existing) == slices:
        return existing
    from research.phantoms.dicom import write_dicom_series

    return write_dicom_series(thoracolumbar_phantom(seed, slices, SPACING, matrix=512), folder)


# --- receivers: start(folder) -> (AE title, port, process group); finish() checks and stops -------------

class NodeReceiver:
    """``spine-node serve`` on SQLite (its data folder) or on a fresh PostgreSQL database."""

    def __init__(self, postgres: bool = False):
        self.name = "node (PostgreSQL)" if postgres else "node (SQLite)"
        self.postgres = postgres
        self.process: subprocess.Popen | None = None
        self.database: str | None = None

    def start(self, folder: Path) -> tuple[str, int, int]:
        port = free_port()
        env = node_environment(SPINE_NODE_DATA_DIR=str(folder / "data"), SPINE_NODE_PORT=str(port),
                               SPINE_NODE_HOST=LOOPBACK, SPINE_NODE_STABLE_AGE="3600", SPINE_NODE_DEVICE="cpu",
                               SPINE_NODE_DESTINATIONS=f"NOBODY@{LOOPBACK}:9")
        if self.postgres:
            self.database = f"spine_bench_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
            _pg_admin(f'CREATE DATABASE "{self.database}"')
            env["SPINE_NODE_DATABASE_URL"] = f"postgresql://postgres@{LOOPBACK}:5432/{self.database}"
        self.process = start_node(env, folder / "node.log", cwd=folder)
        wait_for(lambda: self.process.poll() is None and echo(port, "SPINENODE"), 120, "the node")
        return "SPINENODE", port, self.process.pid

    def finish(self, folder: Path) -> int:
        stop_group(self.process)  # at once: the job the release queued must not run into the next measurement
        from sqlalchemy import text

        from storage import open_database
        url = (f"postgresql://postgres@{LOOPBACK}:5432/{self.database}" if self.postgres
               else f"sqlite:///{folder / 'data' / 'spine-node.db'}")
        db = open_database(url, create=False)
        try:
            with db.reading() as session:
                return int(session.execute(text("SELECT count(*) FROM instances")).scalar())
        finally:
            db.close()
            if self.postgres:
                _pg_admin(f'DROP DATABASE "{self.database}" WITH (FORCE)')


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql)


class StoreScpReceiver:
    """DCMTK storescp, one folder; ``nodelay``: TCP_NODELAY=1 (the fair peer), else DCMTK's default (Nagle on)."""

    def __init__(self, nodelay: bool = True):
        self.nodelay = nodelay
        self.name = "DCMTK storescp, NODELAY" if nodelay else "DCMTK storescp, Nagle on"
        self.sender_env = SENDER_ENV if nodelay else NAGLE_ENV

    def start(self, folder: Path) -> tuple[str, int, int]:
        port = free_port()
        (folder / "in").mkdir()
        self.process = subprocess.Popen(["storescp", "--aetitle", "STORESCP", "--output-directory", str(folder / "in"),
                                         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, env=self.sender_env)
        wait_for(lambda: echo(port, "STORESCP"), 30, "storescp")
        return "STORESCP", port, self.process.pid

    def finish(self, folder: Path) -> int:
        stop_group(self.process, signal.SIGTERM)
        return sum(1 for p in (folder / "in").iterdir() if p.is_file())


class OrthancReceiver:
    """Orthanc 1.10 from orthanc/local_orthanc.py, the sender declared as a modality, routing idle (StableAge 1 h)."""

    name = "Orthanc"

    def start(self, folder: Path) -> tuple[str, int, int]:
        orthanc = local_orthanc()
        self.orthanc = orthanc.LocalOrthanc(stable_age=3600, storage=folder / "storage",
                                            modalities={"bench": orthanc.Modality(SENDER_AE, LOOPBACK, 104)}).start()
        return self.orthanc.aet, self.orthanc.dicom_port, os.getpgid(self.orthanc.pid)

    def finish(self, folder: Path) -> int:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.orthanc.url}/statistics", timeout=30) as answer:
            count = int(json.load(answer)["CountInstances"])
        self.orthanc.cleanup()
        return count


class MinimalReceiver:
    """This file run with ``--minimal-scp PORT FOLDER``: pynetdicom, write + fsync, Success."""

    name = "minimal pynetdicom SCP"

    def start(self, folder: Path) -> tuple[str, int, int]:
        port = free_port()
        (folder / "in").mkdir()
        self.process = subprocess.Popen([sys.executable, __file__, "--minimal-scp", str(port), str(folder / "in")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        wait_for(lambda: self.process.poll() is None and echo(port, "MINIMAL"), 60, "the minimal SCP")
        return "MINIMAL", port, self.process.pid

    def finish(self, folder: Path) -> int:
        stop_group(self.process)
        return sum(1 for p in (folder / "in").iterdir() if p.is_file())


def run_minimal_scp(port: int, folder: Path) -> None:
    """The minimal durable SCP: every storage class, the node's transfer syntaxes and PDU size; write, fsync, 0x0000."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import Verification

    from dicom_node.dimse.scp import ACCEPTED_TRANSFER_SYNTAXES

    def on_store(event) -> int:
        path = folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        with open(path, "wb") as handle:
            handle.write(event.encoded_dataset(include_meta=True))
            handle.flush()
            os.fsync(handle.fileno())
        return 0x0000

    ae = AE(ae_title="MINIMAL")
    ae.maximum_pdu_size = 0  # as the node
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    ae.start_server((LOOPBACK, port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def write_with_fsync(files: list[Path], folder: Path) -> float:
    """Seconds to write each file's bytes to a new file with fsync, one after the other (no network)."""
    blobs = [p.read_bytes() for p in files]
    folder.mkdir()
    start = time.perf_counter()
    for number, blob in enumerate(blobs):
        with open(folder / f"{number}.dcm", "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
    return time.perf_counter() - start


# --- measuring -----------------------------------------------------------------------------------------

def send(files: list[Path], aet: str, port: int, env: dict | None = None) -> float:
    """Seconds from storescu's start to its exit, all files in one association (TCP_NODELAY=1 unless ``env``)."""
    start = time.perf_counter()
    result = subprocess.run(["storescu", "-aet", SENDER_AE, "-aec", aet, LOOPBACK, str(port), *map(str, files)],
                            capture_output=True, text=True, env=env or SENDER_ENV)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {aet} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds


def measure(receiver, files: list[Path], work: Path) -> float:
    folder = Path(tempfile.mkdtemp(prefix="recv-", dir=work))
    aet, port, pgid = receiver.start(folder)
    try:
        settle(pgid)
        os.sync()  # dirty pages of the previous contender are not flushed during this one
        seconds = send(files, aet, port, getattr(receiver, "sender_env", None))
    finally:
        count = receiver.finish(folder)
    # The folder stays until the end of the run: deleting 158 MB (online discard on this file system)
    # would load the disk while the next contender is measured.
    if count != len(files):
        raise SystemExit(f"{receiver.name} holds {count} instances after receiving {len(files)}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="also the node on a fresh PostgreSQL database")
    parser.add_argument("--series", type=Path, help="folder of the phantom series (written there if empty)")
    parser.add_argument("--work", type=Path, help="where receivers write (default: a temporary folder)")
    parser.add_argument("--slices", type=int, default=SLICES, help="slices of the phantom series (300)")
    parser.add_argument("--only", help="comma-separated subset of: node,postgres,storescp,storescp-nagle,orthanc,"
                                       "minimal,disk")
    parser.add_argument("--minimal-scp", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minimal_scp:
        run_minimal_scp(int(args.minimal_scp[0]), Path(args.minimal_scp[1]))
        return 0
    work = Path(tempfile.mkdtemp(prefix="spine-node-receive-", dir=args.work))
    files = make_series(args.series or work / "series", slices=args.slices)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    for path in files:  # the sender reads from the page cache in every run
        path.read_bytes()
    # The node and its reference run back to back in each repeat: the ratio is compared within seconds.
    contenders = {"minimal": MinimalReceiver(), "node": NodeReceiver()}
    if args.postgres:
        contenders["postgres"] = NodeReceiver(postgres=True)
    contenders.update({"disk": None, "storescp": StoreScpReceiver(), "orthanc": OrthancReceiver(),
                       "storescp-nagle": StoreScpReceiver(nodelay=False)})
    chosen = args.only.split(",") if args.only else [name for name in contenders if name != "storescp-nagle"]
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for repeat in range(args.repeats):
        for name in chosen:
            if name == "disk":
                os.sync()
                times[name].append(write_with_fsync(files, Path(tempfile.mkdtemp(dir=work)) / "out"))
            else:
                times[name].append(measure(contenders[name], files, work))
            print(f"  repeat {repeat + 1}: {name:<9} {times[name][-1]:6.2f} s", flush=True)
    report(times, contenders, len(files), size_mb)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report(times: dict[str, list[float]], contenders: dict, count: int, size_mb: float) -> None:
    print(f"\n{count} instances, {size_mb:.0f} MB, storescu over loopback; median of {len(next(iter(times.values())))}")
    print(f"{'receiver':<26}{'seconds':>9}{'MB/s':>8}{'ms/inst':>9}   runs (s)")
    medians = {name: statistics.median(runs) for name, runs in times.items()}
    for name, runs in times.items():
        label = contenders[name].name if contenders.get(name) else "write + fsync (disk limit)"
        m = medians[name]
        print(f"{label:<26}{m:9.2f}{size_mb / m:8.1f}{1000 * m / count:9.1f}   "
              + " ".join(f"{r:.2f}" for r in runs))
    targets = {"minimal": 0.8, "storescp": 0.5}
    for ours in ("node", "postgres"):
        if ours not in medians:
            continue
        for peer, m in medians.items():
            if peer in ("node", "postgres"):
                continue
            label = contenders[peer].name if contenders.get(peer) else "write + fsync (disk limit)"
            ratio = m / medians[ours]
            target = targets.get(peer)
            print(f"{contenders[ours].name} throughput / {label}: {ratio:.2f}x"
                  + (f" (target >= {target}x: {verdict(ratio >= target)})" if target else ""))


if __name__ == "__main__":
    sys.exit(main())
