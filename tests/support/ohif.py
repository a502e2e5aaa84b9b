"""The prebuilt OHIF viewer (npm ``@ohif/app``, pinned in viewer/) served on loopback in front of an Orthanc.

``OhifServer`` is a small threaded HTTP server (standard library) on 127.0.0.1:

* ``/app-config.js`` is viewer/app-config.js: one DICOMweb data source at ``/dicom-web``;
* ``/dicom-web/...`` is forwarded to the Orthanc's DICOMweb plugin (same origin: no CORS),
  Orthanc's own origin in its DICOM JSON (BulkDataURIs) rewritten to this server's;
* every other path is a file of the viewer's ``dist/``, and a path that is no file (a route
  of the single-page app, such as ``/viewer``) gets ``index.html``.

``viewer_dist()`` says where the installed viewer is, or why it is not (``make viewer``
installs it). ``chromium()`` finds Debian's chromium (``make system-deps``).
"""
from __future__ import annotations

import mimetypes
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

from support.paths import REPO

VIEWER = REPO / "viewer"
DIST = VIEWER / "node_modules" / "@ohif" / "app" / "dist"
CONFIG = VIEWER / "app-config.js"
FORWARDED_REQUEST_HEADERS = ("Accept", "Content-Type", "Range")
FORWARDED_ANSWER_HEADERS = ("Content-Type", "Content-Range", "Accept-Ranges")
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def viewer_dist() -> tuple[Path | None, str]:
    """The viewer's dist folder, or None and the reason it cannot be served."""
    if not (DIST / "index.html").is_file():
        return None, f"the OHIF viewer is not installed in {DIST} (run `make viewer`: npm ci in viewer/)"
    return DIST, ""


def chromium() -> str | None:
    """Debian's chromium, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class OhifServer:
    """The viewer's files and a forward of ``/dicom-web`` to ``dicomweb_url``, on a free loopback port."""

    def __init__(self, dicomweb_url: str, dist: Path = DIST, config: Path = CONFIG) -> None:
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.dist, self.config = dist, config
        self.requests: list[tuple[str, int]] = []  # (path, status) of every request, for failure messages
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "OhifServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def failed_requests(self) -> list[tuple[str, int]]:
        """Requests answered with an HTTP error status."""
        return [(path, status) for path, status in self.requests if status >= 400]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the test reports failures itself
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = urlsplit(self.path).path
                if path.startswith("/dicom-web/") or path == "/dicom-web":
                    self._forward()
                elif path == "/app-config.js":
                    self._file(server.config)
                else:
                    self._static(path)

            def _static(self, path: str) -> None:
                target = (server.dist / path.lstrip("/")).resolve()
                if server.dist.resolve() not in target.parents or not target.is_file():
                    target = server.dist / "index.html"  # a route of the single-page app
                self._file(target)

            def _file(self, target: Path) -> None:
                body = target.read_bytes()
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                self._answer(HTTPStatus.OK, body, {"Content-Type": kind})

            def _forward(self) -> None:
                headers = {k: self.headers[k] for k in FORWARDED_REQUEST_HEADERS if self.headers.get(k)}
                try:
                    answer = requests.get(server.dicomweb_url + self.path[len("/dicom-web"):], headers=headers,
                                          timeout=120)
                except requests.RequestException as exc:
                    self._answer(HTTPStatus.BAD_GATEWAY, f"Orthanc did not answer: {exc}".encode(),
                                 {"Content-Type": "text/plain"})
                    return
                kept = {k: answer.headers[k] for k in FORWARDED_ANSWER_HEADERS if k in answer.headers}
                body = answer.content
                if "json" in answer.headers.get("Content-Type", ""):
                    # Orthanc writes BulkDataURIs with its own origin; the viewer must fetch them from ours
                    # (as a reverse proxy's rewrite does), or the browser refuses them (CORS).
                    body = body.replace(server.dicomweb_url.encode(), f"{server.url}/dicom-web".encode())
                self._answer(answer.status_code, body, kept)

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                server.requests.append((self.path, int(status)))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the browser gave up on it
                    pass

        return Handler
