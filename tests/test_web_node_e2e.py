"""End to end with a person's view: `spine-node serve`, storescu in, storescp out, the dashboard in chromium.

A phantom series sent by DCMTK storescu appears on the overview; its job's stages and its
deliveries (to a DCMTK storescp) are on the job page; pressing Requeue on that page runs
the job again. ``/metrics`` is scraped while the node runs and its counters are compared
with the SQL. Screenshots: ``build/test-artifacts/web/e2e-*.png``.
"""
from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import func, select

from storage import Store, open_database
from storage.models import Delivery, Instance, Job
from support.browser import Browser
from support.dimse import StoreScp, free_port, storescu
from support.node_process import NodeProcess
from support.series_files import phantom_series
from support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.peer]  # nnU-Net on the CPU; storescu, storescp, chromium


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _dashboard_up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _job(url: str, job_id: int) -> dict:
    return httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()


def _finished(url: str, job_id: int) -> dict | None:
    job = _job(url, job_id)
    return job if job.get("state") in ("done", "failed", "rejected") else None


def _delivered(url: str, job_id: int) -> dict | None:
    job = _job(url, job_id)
    return job if job["deliveries"] and all(d["state"] == "delivered" for d in job["deliveries"]) else None


def test_a_series_sent_by_storescu_is_on_the_dashboard_and_a_requeue_from_the_page_runs_it_again(tmp_path):
    files = phantom_series(tmp_path / "phantom")
    destination = StoreScp(tmp_path / "received").start()
    http_port = free_port()
    node = NodeProcess(tmp_path / "data", {
        "SPINE_NODE_DESTINATIONS": destination.address, "SPINE_NODE_ALLOWED_AES": "SENDER,ECHOSCU",
        "SPINE_NODE_STABLE_AGE": "5", "SPINE_NODE_RETRY_MAX_S": "2", "SPINE_NODE_HTTP_PORT": str(http_port)})
    url = f"http://127.0.0.1:{http_port}"
    try:
        node.start(timeout=180)
        wait_until(lambda: _dashboard_up(url), 60, "the node's dashboard")  # it starts just after the SCP
        storescu(node.port, files)
        series_uid = str(__import__("pydicom").dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        with Browser() as browser:
            browser.goto(url + "/")
            assert series_uid in browser.text("#series")
            browser.screenshot("e2e-overview-received")
            jobs = wait_until(lambda: httpx.get(url + "/api/jobs", timeout=10).json()["jobs"], 60, "a job")
            first = jobs[0]["id"]
            job = wait_until(lambda: _finished(url, first), 900, f"job {first} to finish")
            assert job["state"] == "done", job["error"]
            wait_until(lambda: _delivered(url, first), 120, "the outputs to reach storescp")

            browser.goto(f"{url}/jobs/{first}")
            assert "network" in browser.text("#stages") and "load" in browser.text("#stages")
            deliveries = browser.text("#deliveries")
            assert destination.address in deliveries and "delivered" in deliveries and "seg" in deliveries
            browser.screenshot("e2e-job-done")

            metrics = httpx.get(url + "/metrics", timeout=10).text
            store = Store(open_database(f"sqlite:///{tmp_path / 'data' / 'spine-node.db'}", create=False))
            with store.db.reading() as session:
                instances = session.scalar(select(func.count()).select_from(Instance))
                done = session.scalar(select(func.count()).select_from(Job).where(Job.state == "done"))
                pending = session.scalar(select(func.count()).select_from(Delivery)
                                         .where(Delivery.state == "pending"))
            assert _metric(metrics, "spine_node_instances_received_total") == instances == len(files)
            assert _metric(metrics, 'spine_node_jobs{state="done"}') == done == 1
            assert _metric(metrics, "spine_node_outbox_depth") == pending == 0
            assert _metric(metrics, 'spine_node_stage_duration_seconds_count{stage="network"}') == 1

            browser.click("#requeue")
            second = int(browser.evaluate("location.pathname").rsplit("/", 1)[1])
            assert second > first
            browser.screenshot("e2e-requeued")
            again = wait_until(lambda: _finished(url, second), 900, f"the requeued job {second} to finish")
            assert again["state"] == "done", again["error"]
            browser.goto(f"{url}/jobs/{second}")
            assert "done" in browser.text("#job-state")
            browser.screenshot("e2e-requeued-done")
    finally:
        node.stop()
        destination.stop()
