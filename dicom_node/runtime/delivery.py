"""The outbox: send every pending output to its destination until the destination confirms it.

One delivery row per output and destination (written by the job, ``Store.record_output``).
Each pass takes the rows that are due, sends them grouped by destination (one association
per destination and pass), and records the outcome per row: delivered, or failed with the
reason (the destination's failure status, or that it could not be reached) and the next
attempt after an exponential backoff. A refusal (the destination takes no presentation
context for the object's SOP class, or answers "SOP class not supported": ``scu.Refused``)
is recorded the same way, on that object's row only, and tried again at the longest interval
(``retry_max_s``): the others of the batch are delivered, and a destination whose operator
adds the class later still gets the object. To stop offering an object to a destination,
leave its kind out of that destination's outputs. Nothing is deleted here: an output's file stays on
disk after its delivery, as the provenance of what was sent.
"""
from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from collections.abc import Iterable

from storage import DeliveryRow, Store, StorageError
from storage.store import backoff_delay

from dicom_node.errors import NodeError
from dicom_node.dimse.scu import DestinationUnreachable, Refused, parse_destination, send

log = logging.getLogger(__name__)


class Deliverer:
    """Sends due deliveries; ``run_once`` is one pass (the node calls it from a background loop)."""

    def __init__(self, store: Store, calling_ae: str, retry_max_s: float = 300.0, timeout_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, tls_for_all: bool = False, verify: str | bool = True):
        """``ssl_context``: the client side of the node's TLS (``scu.client_ssl_context``), for ``tls:``
        destinations and, with ``tls_for_all``, every C-STORE destination; ``verify``: CA bundle for https."""
        self.store = store
        self.calling_ae = calling_ae
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self.tls_for_all = tls_for_all
        self.verify = verify

    def run_once(self, limit: int = 50) -> int:
        """Try every due delivery once; return how many were confirmed."""
        by_destination: dict[str, list[DeliveryRow]] = defaultdict(list)
        for row in self.store.due_deliveries(limit=limit):
            by_destination[row.destination].append(row)
        return sum(self._deliver(destination, rows) for destination, rows in by_destination.items())

    def _deliver(self, destination_text: str, rows: list[DeliveryRow]) -> int:
        try:
            destination = parse_destination(destination_text)
        except NodeError as exc:
            self._failed(rows, str(exc))
            return 0
        present = [row for row in rows if row.path.is_file()]
        self._failed([row for row in rows if row not in present], "output file missing on disk")
        if not present:
            return 0
        try:
            outcome = send(destination, [row.path for row in present], self.calling_ae, self.timeout_s,
                           self.ssl_context, tls_for_all=self.tls_for_all, verify=self.verify)
        except DestinationUnreachable as exc:
            self._failed(present, str(exc))
            return 0
        except Exception as exc:  # a bug or an unexpected peer must not stop the outbox; the row keeps the reason
            log.exception("delivery to %s failed unexpectedly", destination_text)
            self._failed(present, f"internal error ({type(exc).__name__}: {exc})")
            return 0
        delivered = 0
        for row in present:
            reason = outcome.get(row.path, "no outcome")
            if reason is None:
                self._call(self.store.mark_delivered, row.id)
                log.info("delivered %s %s to %s (job %d)", row.kind, row.sop_instance_uid, destination_text, row.job_id)
                delivered += 1
            else:
                self._failed([row], reason)
        return delivered

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failures: 5, 10, 20 ... s, capped by the configuration."""
        return backoff_delay(attempts, cap_s=self.retry_max_s, base_s=min(5.0, self.retry_max_s))

    def _failed(self, rows: Iterable[DeliveryRow], reason: str) -> None:
        for row in rows:
            delay = self.retry_max_s if isinstance(reason, Refused) else self.delay(row.attempts + 1)
            log.warning("delivery of %s %s to %s failed (attempt %d, next in %.0f s): %s", row.kind,
                        row.sop_instance_uid, row.destination, row.attempts + 1, delay, reason)
            self._call(self.store.mark_delivery_failed, row.id, reason[:500], delay)

    def _call(self, method, *args) -> None:
        try:
            method(*args)
        except StorageError as exc:
            log.error("could not record a delivery outcome: %s", exc)
