"""Retrieve on request from the dashboard: the same ``dimse.retrieve.retrieve`` as ``spine-node retrieve``.

A retrieve can take minutes (a whole study over C-MOVE), so the page starts it in a
thread and lists it with its outcome; the retrieved series then appear among the received
series like pushed ones. The list of recent requests lives in memory only (the SQL rows of
what arrived are the record); the query keys are shown, a patient ID only as 'patient'.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dicom_node.config.settings import NodeConfig
from dicom_node.dimse.retrieve import NodeAddress, Query, parse_source, retrieve
from dicom_node.errors import NodeError

log = logging.getLogger(__name__)
KEPT = 20  # recent requests listed on the page


@dataclass
class RetrieveRequest:
    """One request made from the page and what became of it."""

    source: str
    what: str
    method: str
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    state: str = "running"
    outcome: str = ""


class Retrievals:
    """Runs retrieves in background threads and remembers the recent ones."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self._lock = threading.Lock()
        self.recent: list[RetrieveRequest] = []

    def node_address(self) -> NodeAddress:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return NodeAddress(self.config.ae_title, host, self.config.port)

    def start(self, source_text: str, key: str, value: str, method: str = "move",
              date_range: str | None = None) -> RetrieveRequest:
        """Check the request (NodeError with the reason), then run it in a thread."""
        source = parse_source(source_text.strip())
        if key not in ("accession", "study", "patient"):
            raise NodeError(f"search by accession, study or patient, not {key!r}")
        if method not in ("move", "get"):
            raise NodeError(f"method move or get, not {method!r}")
        query = Query(**{{"accession": "accession", "study": "study_uid", "patient": "patient_id"}[key]: value.strip()},
                      date_range=(date_range or "").strip() or None)
        shown = "patient (ID not shown)" if key == "patient" else f"{key} {value.strip()}"
        request = RetrieveRequest(source_text.strip(), shown, "WADO-RS" if isinstance(source, str) else method)
        with self._lock:
            self.recent.insert(0, request)
            del self.recent[KEPT:]
        threading.Thread(target=self._run, args=(request, source, query, method), name="retrieve",
                         daemon=True).start()
        return request

    def _run(self, request: RetrieveRequest, source, query: Query, method: str) -> None:
        try:
            result = retrieve(source, query, self.node_address(), self.config.ae_title, method)
        except NodeError as exc:
            request.state, request.outcome = "failed", str(exc)
            log.warning("retrieve from %s failed: %s", request.source, exc)
            return
        except Exception as exc:  # a thread must not die silently; the page shows why
            request.state, request.outcome = "failed", f"unexpected error: {exc}"
            log.exception("retrieve from %s", request.source)
            return
        request.state = "done" if not result.failed else "failed"
        request.outcome = (f"{len(result.studies)} study(ies), {result.instances} instance(s) retrieved"
                           + (f", {result.failed} failed" if result.failed else ""))
