"""Webhook notifications: a JSON POST to each ``SPINE_NODE_WEBHOOKS`` URL when a job's results are all
delivered (``result-delivered``) or a job fails (``job-failed``), retried like a delivery.

The outbox is in SQL (``storage.notifications``): each step first queues the events of
jobs finished since the node started (less ``LOOKBACK_S``, so that a restart announces
what finished just before it), then makes the due calls. A 2xx answer is success;
anything else (an error status, a refused connection, a timeout) is retried after 5, 10,
20 ... s, at most ``SPINE_NODE_RETRY_MAX_S``. The body carries UIDs and states only.
"""
from __future__ import annotations

import logging
from datetime import timedelta

import requests

from storage import Store
from storage.models import utcnow
from storage.notifications import Notifications
from storage.store import backoff_delay

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
LOOKBACK_S = 3600.0
INTERVAL_S = 2.0


class Notifier:
    """One step of the notification loop: queue new events, call the due webhooks."""

    def __init__(self, store: Store, urls: tuple[str, ...], retry_max_s: float, ae_title: str):
        self.outbox = Notifications(store.db)
        self.urls = tuple(urls)
        self.retry_max_s = retry_max_s
        self.since = utcnow() - timedelta(seconds=LOOKBACK_S)
        self.headers = {"Content-Type": "application/json", "User-Agent": f"spine-node ({ae_title})"}

    def __call__(self) -> int:
        """Queue and send; the number of calls that succeeded."""
        self.outbox.queue_new(self.urls, self.since)
        sent = 0
        for call in self.outbox.due():
            error = self._post(call["url"], call["body"])
            if error is None:
                self.outbox.mark_sent(call["id"])
                sent += 1
                log.info("webhook %s: %s of job %s sent", call["url"], call["body"]["event"], call["body"]["job_id"])
            else:
                delay = backoff_delay(call["attempts"] + 1, self.retry_max_s)
                self.outbox.mark_failed(call["id"], error, delay)
                log.warning("webhook %s: %s of job %s failed (attempt %d, next in %.0f s): %s", call["url"],
                            call["body"]["event"], call["body"]["job_id"], call["attempts"] + 1, delay, error)
        return sent

    def _post(self, url: str, body: dict) -> str | None:
        try:
            answer = requests.post(url, json=body, headers=self.headers, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code} {answer.text[:200]}"


def start_notifier(node) -> object | None:
    """Start the node's notification loop (a ``runtime.node.Loop``); None without webhooks."""
    from dicom_node.runtime.node import Loop

    if not node.config.webhooks:
        return None
    loop = Loop("notify", Notifier(node.store, node.config.webhooks, node.config.retry_max_s, node.config.ae_title),
                interval_s=INTERVAL_S)
    loop.start()
    return loop
