"""The dashboard in a real browser (Debian's chromium, headless, over its DevTools protocol).

Screenshots are kept under ``build/test-artifacts/web/`` for a person to look at. The
store is filled with the node's own ``Store`` API (``support.web.seed_store``); the
end-to-end case with a running node and storescu is ``test_web_node_e2e.py``.
"""
from __future__ import annotations

import pytest

from support.browser import Browser
from support.web import DESTINATION, PATIENT_ID, PATIENT_NAME, node_config, seed_store, web_server

pytestmark = pytest.mark.peer  # chromium


@pytest.fixture
def dashboard(tmp_path):
    config = node_config(tmp_path / "data")
    seeded = seed_store(config)
    with web_server(config, seeded.store) as server, Browser() as browser:
        yield server, browser, seeded


def test_the_overview_shows_received_series_their_state_and_health(dashboard):
    server, browser, seeded = dashboard
    browser.goto(server.url + "/")
    table = browser.text("#series")
    assert seeded.series_uid in table and "done" in table and f"job {seeded.job_id}" in table
    assert seeded.receiving_key in table and "receiving" in table
    assert "ok" in browser.text("#health-database") and "watermark" in browser.text("#health-disk")
    page = browser.text()
    assert PATIENT_NAME not in page and PATIENT_ID not in page
    assert browser.screenshot("overview").stat().st_size > 10_000


def test_a_jobs_page_shows_its_stages_deliveries_and_last_error(dashboard):
    server, browser, seeded = dashboard
    browser.goto(server.url + f"/jobs/{seeded.job_id}")
    stages = browser.text("#stages")
    for stage in ("load", "network", "seg", "write"):
        assert stage in stages
    assert "12.5 s" in stages and "420 ms" in stages
    deliveries = browser.text("#deliveries")
    assert DESTINATION in deliveries and "pending" in deliveries and "connection refused" in deliveries
    browser.screenshot("job")


def test_requeue_from_the_page_queues_the_series_again(dashboard):
    server, browser, seeded = dashboard
    browser.goto(server.url + f"/jobs/{seeded.job_id}").click("#requeue")
    assert browser.evaluate("location.pathname") == f"/jobs/{seeded.job_id + 1}"
    assert browser.text("#job-state") == "queued"
    assert f"requeued from job {seeded.job_id}" in browser.text(".message")
    assert [j.id for j in seeded.store.queued_jobs()] == [seeded.job_id + 1]
    browser.screenshot("job-requeued")


def test_the_deliveries_page_retries_and_pauses_a_destination(dashboard):
    server, browser, seeded = dashboard
    browser.goto(server.url + "/deliveries")
    assert "connection refused" in browser.text("#outbox")
    browser.click("#outbox button")  # Retry now
    assert [d.id for d in seeded.store.due_deliveries()] == [seeded.delivery_id]
    browser.click("#destinations button")  # Pause
    assert "paused" in browser.text("#destinations")
    assert seeded.store.due_deliveries() == []
    browser.screenshot("deliveries-paused")
    browser.click("#destinations button")  # Resume
    assert "active" in browser.text("#destinations")


def test_an_unknown_job_is_a_404_page(dashboard):
    server, browser, _ = dashboard
    browser.goto(server.url + "/jobs/4242")
    assert browser.status_of_last_navigation() == 404
    assert "There is no job 4242" in browser.text()
    browser.screenshot("not-found")


def test_the_configuration_page_shows_the_settings_in_force(dashboard):
    server, browser, _ = dashboard
    browser.goto(server.url + "/config")
    table = browser.text("#config")
    assert DESTINATION in table and "min_free_mb" in table and "http_port" in table
    browser.screenshot("config")


def test_a_retrieve_from_the_page_brings_the_study_among_the_received_series(tmp_path):
    import json

    from dicom_node.dimse.scp import Receiver, ScpSettings, start_scp
    from storage import InstanceFiles
    from support.dimse import LOOPBACK, free_port
    from support.pacs import FakePacs
    from support.synthetic_ct import ct_datasets, save, volume
    from support.waiting import wait_until

    scp_port = free_port()
    config = node_config(tmp_path / "data", SPINE_NODE_PORT=str(scp_port), SPINE_NODE_HOST=LOOPBACK)
    seeded = seed_store(config)
    datasets = ct_datasets(volume(slices=3), name="retrieved-from-the-page")
    for ds in datasets:
        ds.AccessionNumber = "ACC-PAGE"
    files = save(datasets, tmp_path / "pacs")
    receiver = Receiver(seeded.store, InstanceFiles(config.data_dir))
    scp = start_scp(ScpSettings("SPINENODE", LOOPBACK, scp_port), receiver)
    pacs = FakePacs(files, {"SPINENODE": (LOOPBACK, scp_port)})
    try:
        with web_server(config, seeded.store) as server, Browser() as browser:
            browser.goto(server.url + "/retrieve")
            browser.evaluate(f"document.querySelector('[name=source]').value = {json.dumps(str(pacs.peer))};"
                             "document.querySelector('[name=value]').value = 'ACC-PAGE';")
            browser.click("#retrieve")
            assert "retrieve started" in browser.text(".message")
            wait_until(lambda: "done" in browser.goto(server.url + "/retrieve").text("#retrievals"), 30,
                       "the retrieve to finish")
            assert "3 instance(s) retrieved" in browser.text("#retrievals")
            browser.screenshot("retrieve")
            browser.goto(server.url + "/")
            assert str(datasets[0].SeriesInstanceUID) in browser.text("#series")
    finally:
        pacs.stop()
        scp.shutdown()
        receiver.close()
