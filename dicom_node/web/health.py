"""``/healthz``: the database, the disk and the workers, each with its own answer.

The status is 200 when all three are well and 503 otherwise, so a load balancer or a
monitoring probe needs only the status; the body says which part is not well and why.
"""
from __future__ import annotations

import time

from sqlalchemy import text

from dicom_node.web.context import WebContext


def check_database(context: WebContext) -> dict:
    """One round trip to the database (``SELECT 1``), timed."""
    started = time.perf_counter()
    try:
        with context.store.db.reading() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure of the database is the answer, not an error of the page
        return {"ok": False, "detail": f"database unreachable: {str(exc).splitlines()[0]}"}
    return {"ok": True, "detail": f"answered in {1000 * (time.perf_counter() - started):.1f} ms"}


def check_disk(context: WebContext) -> dict:
    """Free space of the data folder against the watermark (below it, C-STORE is refused)."""
    try:
        space = context.guard.space()
    except OSError as exc:
        return {"ok": False, "detail": f"cannot read the data folder's file system: {exc.strerror or exc}"}
    detail = space.describe() + ("" if space.ok else "; C-STORE refused with 0xA700")
    return {"ok": space.ok, "detail": detail, "free_bytes": space.free_bytes,
            "min_free_bytes": space.min_free_bytes}


def check_workers(context: WebContext) -> dict:
    """The node's own view of its loops and workers (``server.worker_health``)."""
    try:
        return context.workers()
    except Exception as exc:  # a broken view is reported, the probe keeps answering
        return {"ok": False, "detail": f"cannot inspect the workers: {exc}"}


def health(context: WebContext) -> tuple[bool, dict]:
    """(all well, the JSON body)."""
    parts = {"database": check_database(context), "disk": check_disk(context), "workers": check_workers(context)}
    ok = all(part["ok"] for part in parts.values())
    return ok, {"status": "ok" if ok else "unhealthy", **parts}
