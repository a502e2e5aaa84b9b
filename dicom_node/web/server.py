"""uvicorn in a thread of the node process, on a socket bound before it starts.

Binding first (``socket.bind`` here, then ``uvicorn.Server.run(sockets=...)``) makes a busy
port an error this code sees and reports in one line, instead of uvicorn's ``sys.exit``
inside a thread. A dashboard that cannot listen is logged as an error and the node goes
on receiving: the DICOM side must not stop because a web port is taken.

``start_web(node)`` is what ``runtime.node.Node.start`` calls; it returns the running
``WebServer`` (``stop()`` in ``Node.stop``) or None when ``SPINE_NODE_HTTP_PORT`` is 0 or
the port cannot be had.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading

import uvicorn

from dicom_node.runtime.disk import DiskGuard
from dicom_node.web.app import build_app
from dicom_node.web.context import WebContext

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0


class WebServer:
    """One uvicorn server on an already-bound socket, served by a daemon thread."""

    def __init__(self, app, host: str, port: int):
        self.host, self.port = host, port
        self.socket = _bind(host, port)
        self.port = self.socket.getsockname()[1]  # the real one when 0 was asked for (tests)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the node owns SIGTERM/SIGINT (older uvicorn)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    def start(self) -> "WebServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]))
        except Exception:  # the dashboard failing must not take the node down; the log says why
            log.exception("dashboard server stopped with an error")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        self.socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def worker_health(node) -> dict:
    """The node's loops alive, and its workers: the embedded pool or the Dask cluster's threads."""
    dead = [loop.name for loop in node.loops if not loop._thread.is_alive()]
    executor = node.executor
    detail = []
    ok = not dead
    if dead:
        detail.append(f"loop(s) stopped: {', '.join(dead)}")
    client = getattr(executor, "client", None)
    if client is not None:
        try:
            threads = sum(client.nthreads().values())
            detail.append(f"Dask cluster: {threads} worker thread(s)")
            ok = ok and threads > 0
        except Exception as exc:  # the scheduler away is the answer
            ok = False
            detail.append(f"Dask scheduler unreachable: {exc}")
    else:
        detail.append(f"embedded workers x{node.config.workers}")
    busy = node.dispatcher.busy() if node.dispatcher is not None else 0
    detail.append(f"{busy} job(s) running")
    return {"ok": ok, "detail": "; ".join(detail), "loops": [loop.name for loop in node.loops], "running": busy}


def start_web(node) -> WebServer | None:
    """Serve the dashboard for a started ``Node``; None when it is off or its port cannot be had."""
    config = node.config
    if not config.http_port:
        return None
    loops = {loop.name: loop for loop in node.loops}
    context = WebContext(store=node.store, config=config,
                         guard=getattr(node.receiver, "guard", None) or DiskGuard.of(config),
                         workers=lambda: worker_health(node),
                         wake_delivery=loops["delivery"].wake.set if "delivery" in loops else (lambda: None),
                         wake_dispatch=loops["dispatch"].wake.set if "dispatch" in loops else (lambda: None),
                         wake_completion=loops["completion"].wake.set if "completion" in loops else (lambda: None))
    try:
        server = WebServer(build_app(context), config.http_host, config.http_port)
    except OSError as exc:
        log.error("dashboard: cannot listen on %s:%s (%s); the node runs without it (set SPINE_NODE_HTTP_PORT)",
                  config.http_host, config.http_port, exc.strerror or exc)
        return None
    server.start()
    log.info("dashboard on %s (access %s)", server.url, config.web_access)
    return server
