"""Container healthcheck: C-ECHO the node inside this container; exit 0 when it answers Success.

Reads the node's own variables: SPINE_NODE_PORT (11112), SPINE_NODE_AE_TITLE (SPINENODE,
the called AE), SPINE_NODE_ALLOWED_AES (the first one is used as the calling AE, so that a
node that only accepts e.g. ORTHANC still answers; HEALTHCHECK when the list is empty) and,
when DICOM over TLS is on, SPINE_NODE_TLS_CERT/KEY/CA (the node's certificate is presented as
the client certificate). pynetdicom only, so that it stays a few lines and independent of
the node's internals.
"""
from __future__ import annotations

import os
import ssl
import sys

from pynetdicom import AE
from pynetdicom.sop_class import Verification

TIMEOUT_S = 10.0


def calling_ae(environ) -> str:
    """The first allowed calling AE, or HEALTHCHECK when the node accepts any."""
    allowed = [ae.strip() for ae in environ.get("SPINE_NODE_ALLOWED_AES", "").split(",") if ae.strip()]
    return allowed[0] if allowed else "HEALTHCHECK"


def tls_context(environ) -> ssl.SSLContext | None:
    """A client TLS context when the node serves DICOM over TLS, else None."""
    cert = environ.get("SPINE_NODE_TLS_CERT", "").strip()
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=environ.get("SPINE_NODE_TLS_CA", "").strip() or cert)
    context.check_hostname = False  # localhost, not the name in the node's certificate
    context.load_cert_chain(cert, environ.get("SPINE_NODE_TLS_KEY", "").strip() or None)
    return context


def echo_status(called_ae: str, port: int, calling: str, context: ssl.SSLContext | None) -> int | None:
    """Status of a C-ECHO to the node on 127.0.0.1:``port`` (0 = Success), None without an answer."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae,
                         tls_args=(context, "localhost") if context else None)
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_echo()
        return int(response.Status) if response and "Status" in response else None
    finally:
        assoc.release()


def main(environ=os.environ) -> int:
    called = environ.get("SPINE_NODE_AE_TITLE", "").strip() or "SPINENODE"
    port = int(environ.get("SPINE_NODE_PORT", "").strip() or 11112)
    try:
        status = echo_status(called, port, calling_ae(environ), tls_context(environ))
    except (OSError, ssl.SSLError) as exc:
        status, reason = None, str(exc)
    else:
        reason = "no association or no answer"
    if status is None:
        print(f"unhealthy: C-ECHO to {called}@127.0.0.1:{port}: {reason}", file=sys.stderr)
        return 1
    print(f"{called}@127.0.0.1:{port}: C-ECHO status 0x{status:04X}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
