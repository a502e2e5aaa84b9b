"""The dashboard's JSON API, /healthz and /metrics on a real uvicorn server (httpx on a free loopback port).

The store is filled with the ``Store`` API the node uses (``support.web.seed_store``), so
these tests need no model and no peer; the browser tests are in ``test_web_dashboard.py``.
"""
from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from dicom_node.errors import ConfigError
from dicom_node.runtime.disk import DiskGuard
from storage.models import Delivery, Instance, Job, RejectedInstance
from support.web import DESTINATION, PATIENT_ID, PATIENT_NAME, TIMINGS, node_config, seed_store, web_server

TOKEN = "a-token-of-thirty-two-characters!"


@pytest.fixture
def seeded(tmp_path, database_url):
    """The seeded store on SQLite and on PostgreSQL (``database_url``): the dashboard's SQL runs on both."""
    config = node_config(tmp_path / "data", SPINE_NODE_DATABASE_URL=database_url)
    return config, seed_store(config)


@pytest.fixture
def served(seeded):
    config, seeded_store = seeded
    with web_server(config, seeded_store.store) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client, seeded_store


def test_the_api_lists_received_series_with_state_and_latest_job(served):
    client, seeded = served
    series = {s["series_instance_uid"]: s for s in client.get("/api/series").json()["series"]}
    assert series[seeded.series_uid]["state"] == "done"
    assert series[seeded.series_uid]["job_id"] == seeded.job_id
    assert series[seeded.series_uid]["instances"] == 4
    assert series[seeded.receiving_key]["state"] == "receiving"
    assert series[seeded.receiving_key]["job_id"] is None


def test_the_api_shows_a_jobs_stages_outputs_and_deliveries_with_the_last_error(served):
    client, seeded = served
    job = client.get(f"/api/jobs/{seeded.job_id}").json()
    assert job["state"] == "done" and job["timings"] == TIMINGS
    assert [d["destination"] for d in job["deliveries"]] == [DESTINATION]
    assert "connection refused" in job["deliveries"][0]["last_error"]
    listed = client.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [seeded.job_id]
    outbox = client.get("/api/deliveries").json()["deliveries"]
    assert outbox[0]["state"] == "pending" and outbox[0]["attempts"] == 1


def test_unknown_job_and_series_are_404_on_the_api_and_the_pages(served):
    client, _ = served
    assert client.get("/api/jobs/9999").status_code == 404
    assert client.get("/api/jobs/9999").json()["error"] == "no job 9999"
    assert client.get("/api/series/1.2.3.999").status_code == 404
    page = client.get("/jobs/9999")
    assert page.status_code == 404 and "no job 9999" in page.text
    assert client.get("/no-such-page").status_code == 404


def test_requeue_runs_a_finished_jobs_series_again_as_a_new_job(served):
    client, seeded = served
    answer = client.post(f"/api/jobs/{seeded.job_id}/requeue")
    assert answer.status_code == 200, answer.text
    new_id = answer.json()["job_id"]
    assert new_id != seeded.job_id and answer.json()["state"] == "queued"
    again = client.post(f"/api/jobs/{seeded.job_id}/requeue")  # the series is queued now: refused
    assert again.status_code == 409 and "queued" in again.json()["error"]
    new = seeded.store.get_job(new_id)
    assert new.series_key == seeded.series_key and "requeued by the dashboard" in new.reason


def test_requeue_from_the_page_redirects_to_the_new_job(served):
    client, seeded = served
    answer = client.post(f"/jobs/{seeded.job_id}/requeue")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"/jobs/{seeded.job_id + 1}?message=requeued")


def test_retry_makes_a_pending_delivery_due_now_and_a_delivered_one_is_refused(served):
    client, seeded = served
    assert not seeded.store.due_deliveries()  # the failed attempt put the next one an hour away
    assert client.post(f"/api/deliveries/{seeded.delivery_id}/retry").status_code == 200
    assert [d.id for d in seeded.store.due_deliveries()] == [seeded.delivery_id]
    seeded.store.mark_delivered(seeded.delivery_id)
    refused = client.post(f"/api/deliveries/{seeded.delivery_id}/retry")
    assert refused.status_code == 409 and "already delivered" in refused.json()["error"]
    assert client.post("/api/deliveries/9999/retry").status_code == 404


def test_a_paused_destination_is_skipped_by_the_outbox_until_resumed(served):
    client, seeded = served
    client.post(f"/api/deliveries/{seeded.delivery_id}/retry")
    assert client.post(f"/api/destinations/{DESTINATION}/pause").json()["paused"] is True
    assert seeded.store.due_deliveries() == []
    destinations = client.get("/api/destinations").json()["destinations"]
    assert destinations == [dict(destinations[0], destination=DESTINATION, paused=True, pending=1)]
    assert client.post(f"/api/destinations/{DESTINATION}/resume").json()["paused"] is False
    assert [d.id for d in seeded.store.due_deliveries()] == [seeded.delivery_id]


def test_metrics_match_the_sql(served):
    client, seeded = served
    text = client.get("/metrics").text
    with seeded.store.db.reading() as session:
        instances = session.scalar(select(func.count()).select_from(Instance))
        refused = session.scalar(select(func.count()).select_from(RejectedInstance))
        pending = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.state == "pending"))
        done = session.scalar(select(func.count()).select_from(Job).where(Job.state == "done"))
    assert f"spine_node_instances_received_total {float(instances)}" in text
    assert f'spine_node_instances_refused_total{{reason="0xA900"}} {float(refused)}' in text
    assert f'spine_node_jobs{{state="done"}} {float(done)}' in text
    assert "spine_node_series_completed_total 1.0" in text
    assert f"spine_node_outbox_depth {float(pending)}" in text
    assert 'spine_node_stage_duration_seconds_bucket{le="30.0",stage="network"} 1.0' in text
    assert 'spine_node_stage_duration_seconds_bucket{le="10.0",stage="network"} 0.0' in text
    assert 'spine_node_stage_duration_seconds_sum{stage="network"} 12.5' in text
    assert "spine_node_outbox_oldest_age_seconds" in text and "spine_node_disk_free_bytes" in text


def test_healthz_answers_for_database_disk_and_workers_each(served):
    client, _ = served
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and {"database", "disk", "workers"} <= set(body)
    assert all(body[part]["ok"] for part in ("database", "disk", "workers"))


def test_healthz_is_503_and_names_the_disk_below_its_watermark(seeded):
    config, seeded_store = seeded
    full = DiskGuard(config.data_dir, min_free_mb=10 ** 12)  # no disk has an exabyte free
    with web_server(config, seeded_store.store, guard=full) as server:
        answer = httpx.get(server.url + "/healthz", timeout=10)
    assert answer.status_code == 503
    assert answer.json()["disk"]["ok"] is False and "0xA700" in answer.json()["disk"]["detail"]
    assert answer.json()["database"]["ok"] is True


def test_no_page_or_answer_carries_the_patient_name_or_id_by_default(served):
    client, seeded = served
    for path in ("/", f"/series/{seeded.series_key}", "/jobs", f"/jobs/{seeded.job_id}", "/deliveries", "/config",
                 "/api/series", f"/api/series/{seeded.series_key}", "/api/jobs", f"/api/jobs/{seeded.job_id}",
                 "/metrics", "/healthz"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        for identity in (PATIENT_NAME, PATIENT_ID, "Test Series"):
            assert identity not in answer.text, f"{identity} on {path}"


def test_the_patient_is_shown_only_when_the_setting_allows_it(tmp_path):
    config = node_config(tmp_path / "data", SPINE_NODE_WEB_SHOW_PATIENT="true")
    seeded = seed_store(config)
    with web_server(config, seeded.store) as server:
        page = httpx.get(server.url + "/", timeout=10).text
        api = httpx.get(server.url + f"/api/series/{seeded.series_key}", timeout=10).json()
    assert PATIENT_NAME in page and PATIENT_ID in page
    assert api["patient"] == {"name": PATIENT_NAME, "id": PATIENT_ID}


def test_a_token_is_required_when_configured_and_a_wrong_one_is_401(tmp_path):
    config = node_config(tmp_path / "data", SPINE_NODE_HTTP_TOKEN=TOKEN)
    seeded = seed_store(config)
    with web_server(config, seeded.store) as server:
        missing = httpx.get(server.url + "/api/jobs", timeout=10)
        wrong = httpx.get(server.url + "/api/jobs", headers={"Authorization": "Bearer nope"}, timeout=10)
        right = httpx.get(server.url + "/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        metrics = httpx.get(server.url + "/metrics", timeout=10)
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert "authentication required" in wrong.json()["error"]
    assert right.status_code == 200


def test_basic_auth_lets_the_user_in_and_names_them_in_the_jobs_story(tmp_path):
    config = node_config(tmp_path / "data", SPINE_NODE_HTTP_BASIC_AUTH="operator:correct-horse")
    seeded = seed_store(config)
    with web_server(config, seeded.store) as server:
        refused = httpx.get(server.url + "/", auth=("operator", "wrong-pass"), timeout=10)
        page = httpx.get(server.url + "/", auth=("operator", "correct-horse"), timeout=10)
        requeued = httpx.post(server.url + f"/api/jobs/{seeded.job_id}/requeue", auth=("operator", "correct-horse"),
                              timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert page.status_code == 200
    assert "requeued by operator" in seeded.store.get_job(requeued.json()["job_id"]).reason


def test_a_cross_site_post_is_refused(served):
    client, seeded = served
    answer = client.post(f"/jobs/{seeded.job_id}/requeue", headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    assert seeded.store.queued_jobs() == []


def test_the_config_page_shows_the_settings_in_force_without_secrets(tmp_path):
    config = node_config(tmp_path / "data", SPINE_NODE_HTTP_TOKEN=TOKEN)
    seeded = seed_store(config)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with web_server(config, seeded.store) as server:
        api = httpx.get(server.url + "/api/config", headers=headers, timeout=10).json()
        page = httpx.get(server.url + "/config", headers=headers, timeout=10).text
    assert api["settings"]["destinations"] == [DESTINATION] and api["settings"]["http_token"] == "set"
    assert TOKEN not in page and TOKEN not in str(api)
    assert "min_free_mb" in page


def test_the_config_page_shows_what_each_destination_gets(tmp_path):
    profiled = "RTPLAN@127.0.0.1:11199[rtstruct,sc,pdf,no-notices]"
    config = node_config(tmp_path / "data", SPINE_NODE_DESTINATIONS=f"{DESTINATION},{profiled}")
    seeded = seed_store(config)
    with web_server(config, seeded.store) as server:
        api = httpx.get(server.url + "/api/config", timeout=10).json()
        page = httpx.get(server.url + "/config", timeout=10)
    profiles = api["settings"]["destination_profiles"]
    (rtplan,) = [p for key, p in profiles.items() if "RTPLAN" in key]
    assert rtplan["outputs"] == ["rtstruct", "sc", "pdf"] and rtplan["notices"] is False
    assert page.status_code == 200


def test_a_dashboard_on_another_address_needs_a_token_or_basic_auth(tmp_path):
    with pytest.raises(ConfigError, match="SPINE_NODE_HTTP_HOST: the dashboard on '0.0.0.0' would be open"):
        node_config(tmp_path, SPINE_NODE_HTTP_HOST="0.0.0.0", SPINE_NODE_HTTP_PORT="8011")
    assert node_config(tmp_path, SPINE_NODE_HTTP_HOST="0.0.0.0", SPINE_NODE_HTTP_TOKEN=TOKEN).http_token == TOKEN
    with pytest.raises(ConfigError, match="SPINE_NODE_HTTP_TOKEN: a 5-character value is not a token"):
        node_config(tmp_path, SPINE_NODE_HTTP_TOKEN="short")
    with pytest.raises(ConfigError, match="SPINE_NODE_HTTP_BASIC_AUTH"):
        node_config(tmp_path, SPINE_NODE_HTTP_BASIC_AUTH="nopassword")


def test_http_port_zero_turns_the_dashboard_off(tmp_path):
    from dicom_node.web.server import start_web

    class FakeNode:
        config = node_config(tmp_path, SPINE_NODE_HTTP_PORT="0")

    assert start_web(FakeNode()) is None
    assert node_config(tmp_path).http_port == 0 and \
        node_config(tmp_path, SPINE_NODE_HTTP_PORT="8011").http_port == 8011


def test_basic_auth_header_that_is_not_base64_is_401(tmp_path):
    config = node_config(tmp_path / "data", SPINE_NODE_HTTP_BASIC_AUTH="operator:correct-horse")
    seeded = seed_store(config)
    with web_server(config, seeded.store) as server:
        answer = httpx.get(server.url + "/", headers={"Authorization": "Basic %%%"}, timeout=10)
    assert answer.status_code == 401


def test_the_qc_picture_of_a_job_is_served_and_shown_on_its_page(served, tmp_path):
    from PIL import Image

    client, seeded = served
    assert client.get(f"/jobs/{seeded.job_id}/qc.png").status_code == 404
    assert 'id="qc"' not in client.get(f"/jobs/{seeded.job_id}").text
    folder = tmp_path / "data" / "outputs" / str(seeded.job_id)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "qc.png")
    picture = client.get(f"/jobs/{seeded.job_id}/qc.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.content == (folder / "qc.png").read_bytes()
    assert 'id="qc"' in client.get(f"/jobs/{seeded.job_id}").text
    assert client.get("/jobs/9999/qc.png").status_code == 404


def test_the_key_images_secondary_capture_is_the_jobs_qc_picture(served, tmp_path):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    client, seeded = served
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 20, 30, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = np.full((20, 30, 3), 120, np.uint8).tobytes()
    path = tmp_path / "data" / "outputs" / str(seeded.job_id) / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    seeded.store.record_output(seeded.job_id, kind="sc", sop_instance_uid=ds.SOPInstanceUID,
                               sop_class_uid=ds.SOPClassUID, series_instance_uid=generate_uid(), path=path,
                               destinations=[])
    picture = client.get(f"/jobs/{seeded.job_id}/qc.png")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert 'id="qc"' in client.get(f"/jobs/{seeded.job_id}").text
