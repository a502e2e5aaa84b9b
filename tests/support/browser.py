"""A real headless browser for the dashboard's tests: Debian's ``chromium`` driven over its DevTools protocol.

``Browser`` starts ``chromium --headless`` with ``--remote-debugging-port`` on a free
loopback port and a throw-away profile, opens one page and talks to it through one
WebSocket (``websocket-client``): ``goto`` (and wait for the load), ``text`` of a CSS
selector, ``click`` (and wait for the next page), ``screenshot`` (PNG, full page). It is
stopped by its own PID. Tests using it carry ``@pytest.mark.peer``; ``chromium()`` skips the
test, saying why, where the program is not installed.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from support.dimse import LOOPBACK, free_port
from support.paths import REPO
from support.waiting import wait_until

ARTIFACTS = REPO / "build" / "test-artifacts" / "web"


def chromium() -> str:
    """The chromium program, or skip the test naming the package to install."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")


class Browser:
    """One headless chromium with one page, driven over the DevTools protocol."""

    def __init__(self, width: int = 1400, height: int = 900):
        import websocket  # websocket-client, a test requirement

        self._profile = Path(tempfile.mkdtemp(prefix="spine-node-chromium-"))
        self.port = free_port()
        self.process = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-dev-shm-usage", f"--window-size={width},{height}",
             f"--remote-debugging-address={LOOPBACK}", f"--remote-debugging-port={self.port}",
             f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        target = wait_until(self._page_target, 30, "chromium's DevTools endpoint")
        self._ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30,
                                               suppress_origin=True)
        self._id = 0
        self._events: list[dict] = []
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def _page_target(self):
        if self.process.poll() is not None:
            pytest.fail(f"chromium exited {self.process.returncode} before its DevTools endpoint answered")
        try:
            targets = httpx.get(f"http://{LOOPBACK}:{self.port}/json/list", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None
        return next((t for t in targets if t.get("type") == "page"), None)

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events seen meanwhile are kept)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def _wait_event(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == name for e in self._events):
                self._events = [e for e in self._events if e.get("method") != name]
                return
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            self._events.append(json.loads(self._ws.recv()))
        pytest.fail(f"chromium: no {name} within {timeout:.0f} s")

    def goto(self, url: str) -> "Browser":
        self._events.clear()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        return self

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def text(self, selector: str = "body") -> str:
        """The visible text of the first element matching ``selector`` ('' when none)."""
        return self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText")

    def status_of_last_navigation(self) -> int | None:
        return self.evaluate("performance.getEntriesByType('navigation')[0].responseStatus")

    def click(self, selector: str) -> "Browser":
        """Click an element that submits a form or follows a link, and wait for the next page to load."""
        self._events.clear()
        found = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                              f"if (!e) return false; e.click(); return true; }})()")
        if not found:
            pytest.fail(f"no element {selector!r} on {self.evaluate('location.href')}")
        self._wait_event("Page.loadEventFired")
        return self

    def screenshot(self, name: str) -> Path:
        """A full-page PNG under build/test-artifacts/web/ (kept after the test for a person to look at)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        height = int(self.evaluate("document.documentElement.scrollHeight") or 900)
        width = int(self.evaluate("document.documentElement.scrollWidth") or 1400)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": min(height, 4000), "scale": 1})["data"]
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
