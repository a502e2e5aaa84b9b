"""Webhook notifications: a JSON POST when a job's results are all delivered or a job fails, retried.

The store is filled with the node's own ``Store`` API (``support.web.seed_store``); the
webhook is a small HTTP server on a free loopback port that refuses its first call.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dicom_node.runtime.notify import Notifier
from storage.notifications import Notifications
from support.dimse import LOOPBACK, free_port
from support.web import PATIENT_ID, PATIENT_NAME, node_config, seed_store


class Webhook:
    """Records the JSON bodies POSTed to it; answers 500 to the first ``fail_first`` calls."""

    def __init__(self, fail_first: int = 1):
        received, state = [], {"left": fail_first}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if state["left"] > 0:
                    state["left"] -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

        self.received = received
        self.server = ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    webhook = Webhook()
    yield webhook
    webhook.stop()


def test_a_delivered_result_is_announced_once_after_a_failed_attempt_is_retried(tmp_path, hook, database_url):
    config = node_config(tmp_path / "data", SPINE_NODE_WEBHOOKS=hook.url, SPINE_NODE_DATABASE_URL=database_url)
    seeded = seed_store(config)
    notifier = Notifier(seeded.store, config.webhooks, retry_max_s=0.0, ae_title="SPINENODE")
    assert notifier() == 0 and hook.received == []  # the output is still pending: nothing to announce
    seeded.store.mark_delivered(seeded.delivery_id)

    assert notifier() == 0  # the webhook answered 500: kept, retried
    (row,) = Notifications(seeded.store.db).overview()
    assert row["state"] == "pending" and row["attempts"] == 1 and "HTTP 500" in row["last_error"]
    assert notifier() == 1
    assert notifier() == 0  # announced once

    (body,) = hook.received
    assert body["event"] == "result-delivered" and body["job_id"] == seeded.job_id
    assert body["series_instance_uid"] == seeded.series_uid
    assert body["outputs"][0]["deliveries"][0]["state"] == "delivered"
    assert PATIENT_NAME not in json.dumps(body) and PATIENT_ID not in json.dumps(body)


def test_a_failed_job_is_announced(tmp_path, hook):
    config = node_config(tmp_path / "data", SPINE_NODE_WEBHOOKS=hook.url)
    seeded = seed_store(config)
    job = seeded.store.create_job(seeded.receiving_key, "test")
    seeded.store.claim_next_job("w")
    seeded.store.finish_job(job.id, state="failed", error="the network ran out of memory")
    notifier = Notifier(seeded.store, config.webhooks, retry_max_s=0.0, ae_title="SPINENODE")
    notifier()
    notifier()
    assert [(b["event"], b["job_id"], b["error"]) for b in hook.received] == \
        [("job-failed", job.id, "the network ran out of memory")]


def test_an_unreachable_webhook_is_retried_with_the_error_kept(tmp_path):
    url = f"http://{LOOPBACK}:{free_port()}/nobody"
    config = node_config(tmp_path / "data", SPINE_NODE_WEBHOOKS=url)
    seeded = seed_store(config)
    seeded.store.mark_delivered(seeded.delivery_id)
    Notifier(seeded.store, config.webhooks, retry_max_s=300.0, ae_title="SPINENODE")()
    (row,) = Notifications(seeded.store.db).overview()
    assert row["state"] == "pending" and "ConnectionError" in row["last_error"]
    assert Notifications(seeded.store.db).due() == []  # the next attempt waits (5 s first)
