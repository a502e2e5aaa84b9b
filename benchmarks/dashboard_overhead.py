"""What the dashboard and /metrics cost the node's receive path: the same node, the same series, with them on and off.

``spine-node serve`` receives one CT series (a lumbar phantom, ``--slices`` 512x512 images)
from DCMTK ``storescu`` (``TCP_NODELAY=1``, one association) in two configurations, in the
same run, interleaved repeat by repeat:

* ``off``: ``SPINE_NODE_HTTP_PORT=0`` (no web server in the process);
* ``on``: the dashboard on a free port, and a scraper in this process fetching ``/metrics``,
  ``/`` (the overview page) and ``/healthz`` back to back, every ``--scrape-interval`` s
  (0.5 by default; Prometheus scrapes every 15-60 s), for the whole transfer.

The clock runs from storescu's start to its exit; the node process's CPU seconds over the
same span (``/proc/PID/stat``: every thread of the node, SCP and web server alike) are
measured too, because on a shared machine the wall time of a few seconds is mostly other
people's load, while the CPU the node spends is its own. Each node starts fresh (empty
folder, fresh SQLite database), is left to load its model first, and is killed as soon as
storescu exits (the job the release triggers never competes). The report gives the
medians and the ratios on/off (target: throughput >= 0.95x, CPU per instance <= 1.05x).

    .venv/bin/python benchmarks/dashboard_overhead.py [--repeats 3] [--slices 200] [--scrape-interval 0.5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import common
from common import LOOPBACK, echo, free_port, node_environment, start_node, stop_group, wait_for


def phantom_series(folder: Path, slices: int) -> list[Path]:
    """A lumbar phantom of ``slices`` 512x512 images as DICOM files (written once per run)."""
    from research.phantoms.dicom import write_dicom_series
    from research.phantoms.generator import make_phantom

    phantom = make_phantom(100123, fov="lumbar", spacing=(1.0, 0.8, 0.8), matrix=512)
    files = write_dicom_series(phantom, folder)
    return sorted(files)[:slices]


class Scraper:
    """Fetches /metrics, / and /healthz in a loop until stopped; counts what it fetched."""

    def __init__(self, url: str, interval_s: float):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=10)
        self.interval_s = interval_s
        self.fetched = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in ("/metrics", "/", "/healthz"):
                try:
                    ok = self.client.get(path).status_code in (200, 503)
                except Exception:  # a refused scrape is counted, the benchmark goes on
                    ok = False
                self.fetched += ok
                self.failed += not ok
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def receive_once(files: list[Path], work: Path, dashboard: bool, interval_s: float) -> tuple[float, float, int]:
    """Seconds for storescu to send ``files`` to a fresh node, the node's CPU seconds meanwhile, pages scraped."""
    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    port, http_port = free_port(), free_port()
    env = node_environment(SPINE_NODE_DATA_DIR=str(data), SPINE_NODE_PORT=str(port), SPINE_NODE_HOST=LOOPBACK,
                           SPINE_NODE_DEVICE="cpu", SPINE_NODE_STABLE_AGE="3600",
                           SPINE_NODE_DESTINATIONS="DEST@127.0.0.1:9",
                           SPINE_NODE_HTTP_PORT=str(http_port) if dashboard else "0")
    node = start_node(env, data.parent / f"{data.name}.log")
    try:
        wait_for(lambda: echo(port, "SPINENODE"), 120, "the node")
        time.sleep(3.0)  # the worker's model load settles
        subprocess.run(["sync"], check=False)
        command = ["storescu", "-aet", "SENDER", "-aec", "SPINENODE", LOOPBACK, str(port), *map(str, files)]
        sender_env = {**os.environ, "TCP_NODELAY": "1"}
        if dashboard:
            with Scraper(f"http://{LOOPBACK}:{http_port}", interval_s) as scraper:
                cpu, started = cpu_seconds(node.pid), time.perf_counter()
                subprocess.run(command, env=sender_env, check=True, capture_output=True, timeout=900)
                seconds, cpu = time.perf_counter() - started, cpu_seconds(node.pid) - cpu
            return seconds, cpu, scraper.fetched
        cpu, started = cpu_seconds(node.pid), time.perf_counter()
        subprocess.run(command, env=sender_env, check=True, capture_output=True, timeout=900)
        return time.perf_counter() - started, cpu_seconds(node.pid) - cpu, 0
    finally:
        stop_group(node)
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--scrape-interval", type=float, default=0.5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spine-node-dashboard-bench-"))
    try:
        files = phantom_series(work / "series", args.slices)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        times = {"off": [], "on": []}
        cpus = {"off": [], "on": []}
        pages = []
        for repeat in range(args.repeats):
            for name in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
                seconds, cpu, fetched = receive_once(files, work, name == "on", args.scrape_interval)
                times[name].append(seconds)
                cpus[name].append(cpu)
                if name == "on":
                    pages.append(fetched)
                print(f"repeat {repeat + 1}: dashboard {name:<3} {seconds:6.2f} s "
                      f"({len(files) / seconds:5.1f} instances/s), node CPU {cpu:5.2f} s" + (f", {fetched} pages scraped" if fetched else ""),
                      flush=True)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        ratio = off / on
        print(f"\n{len(files)} instances, {size_mb:.0f} MB, median of {args.repeats}: off {off:.2f} s, on {on:.2f} s "
              f"(scraped every {args.scrape_interval:g} s, median {statistics.median(pages):.0f} pages)")
        cpu_off, cpu_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
        cpu_ratio = cpu_on / cpu_off if cpu_off else float("nan")
        print(f"throughput with the dashboard and metrics scraped / without: {ratio:.3f} "
              f"(target >= 0.95) {common.verdict(ratio >= 0.95)}")
        print(f"node CPU seconds with / without: {cpu_on:.2f} / {cpu_off:.2f} = {cpu_ratio:.3f} "
              f"(target <= 1.05) {common.verdict(cpu_ratio <= 1.05)}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
