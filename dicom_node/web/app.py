"""The Starlette application: pages, ``/api/``, ``/healthz``, ``/metrics``, STOW-RS in, and who may use them.

Access (``AccessCheck``): with ``SPINE_NODE_HTTP_TOKEN`` every request needs
``Authorization: Bearer TOKEN``; with ``SPINE_NODE_HTTP_BASIC_AUTH`` it needs the user and
password (the browser asks); with both either is accepted; with neither, the node refuses
to start on anything but a loopback address (``config.settings._check_web_access``). A
wrong or missing credential is 401. Secrets are compared in constant time.

A POST whose ``Origin`` (sent by browsers) names another site is 403: a page elsewhere in
an operator's browser cannot press the dashboard's buttons.
"""
from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_node.web import api, metrics, pages
from dicom_node.web.context import WebContext
from dicom_node.web.health import health
from dicom_node.web.stow import stow_route

REALM = "spine-node"


class AccessCheck:
    """ASGI middleware: token or basic auth when configured, and the same-origin rule for POSTs."""

    def __init__(self, app: ASGIApp, token: str | None, basic_auth: str | None):
        self.app = app
        self.token = token
        self.basic = basic_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (self.token or self.basic) and not self._allowed(headers.get("authorization", ""), scope):
            await self._unauthorised(scope, receive, send)
            return
        if scope["method"] == "POST" and not _same_origin(headers):
            await JSONResponse({"error": "cross-site request refused"}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, authorization: str, scope: Scope) -> bool:
        kind, _, credential = authorization.partition(" ")
        if self.token and kind.lower() == "bearer":
            return hmac.compare_digest(credential.strip().encode(), self.token.encode())
        if self.basic and kind.lower() == "basic":
            try:
                given = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            if hmac.compare_digest(given.encode(), self.basic.encode()):
                scope["spine_node_user"] = given.partition(":")[0]
                return True
        return False

    async def _unauthorised(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {"WWW-Authenticate": f'Basic realm="{REALM}"'} if self.basic else {"WWW-Authenticate": "Bearer"}
        await JSONResponse({"error": "authentication required: a valid token or user and password"},
                           status_code=401, headers=headers)(scope, receive, send)


def _same_origin(headers: dict[str, str]) -> bool:
    """True unless the request names an Origin whose host:port differs from the Host it was sent to."""
    origin = headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


def build_app(context: WebContext) -> Starlette:
    """The whole web side on one node's context."""

    def healthz(request: Request) -> JSONResponse:
        ok, body = health(context)
        return JSONResponse(body, status_code=200 if ok else 503)

    def metrics_page(request: Request) -> Response:
        return Response(metrics.render(context), media_type=metrics.CONTENT_TYPE)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}", status_code=exc.status_code)

    routes = [Route("/healthz", healthz), Route("/metrics", metrics_page),
              Route("/dicom-web/studies", stow_route(context), methods=["POST"])] \
        + api.routes(context) + pages.routes(context)
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    return AccessCheck(app, context.config.http_token, context.config.http_basic_auth)
