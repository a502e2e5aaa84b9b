"""Association admission that cannot be starved: pynetdicom's server, wrapped at the socket level.

pynetdicom's ``ThreadedAssociationServer`` does the TLS handshake in its one accept thread,
counts connections that have not yet sent an A-ASSOCIATE-RQ against
``maximum_associations``, and waits for ever on a peer that drips its request a byte at a
time (the DUL thread is inside ``recv`` of that PDU, so neither the ARTIM timer nor the
ACSE timeout can end it). ``AdmissionServer`` subclasses it (no fork) so that:

* the accept thread only accepts: the TLS handshake runs in the connection's own thread;
* every connection has a **deadline** (``associate_timeout_s``) from its TCP connect to a
  accepted association, TLS handshake included. The reaper thread shuts the socket of a
  connection past it down (``shutdown(2)`` wakes the blocked ``recv``), so a silent, a
  dripping or a TLS-silent peer holds a thread for at most that long;
* the **association limit** (``max_associations``) counts associations only: a slot is
  taken when the A-ASSOCIATE-RQ has arrived (``EVT_REQUESTED``) and is given back when the
  connection ends. Above it the peer gets A-ASSOCIATE-RJ transient, local limit exceeded;
* connections not yet associated are capped in total (``max_pending``) and **per peer
  address** (``max_peer_connections`` counts that address's associated connections too).
  A new connection over a cap cuts the oldest un-associated connection under that cap
  when it has waited more than ``EVICT_AFTER_S`` (a real requestor sends its request at
  once), otherwise the new connection is closed. Threads are bounded by the caps: about
  three per connection (request, association, DUL);
* the **listen backlog** is ``LISTEN_BACKLOG``, not socketserver's 5;
* each refusal is logged once with its **true reason** (the A-ASSOCIATE-RJ reason for
  pynetdicom's own refusals, read from the primitive it sent).

The called AE title and the calling AE allow-list are checked here too (pynetdicom's checks
are off), so that one log line and one ``on_refused`` call carry the reason.
"""
from __future__ import annotations

import copy
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 512         # a PACS burst of connections waits in the kernel, not refused (capped by somaxconn)
EVICT_AFTER_S = 1.0          # an un-associated connection older than this may be cut for a newer one
REAPER_INTERVAL_S = 0.25
# pynetdicom's DUL thread polls its socket every 1 ms while idle. For a connection that has
# not sent its A-ASSOCIATE-RQ yet, 50 ms is plenty (the request is read within 50 ms of
# arriving), and 22 silent sockets then wake 440 times a second, not 22,000 (each wake-up
# takes the GIL from the accept thread and the associations at work).
PENDING_POLL_S = 0.05
ASSOCIATED_POLL_S = 0.001   # pynetdicom's own value, restored once the association is accepted

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_LIMIT = (0x02, 0x03, 0x02)
_DIAGNOSTICS = {
    (0x01, 0x01): "no reason given", (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised", (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given (ACSE)", (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion", (0x03, 0x02): "local limit exceeded",
}


@dataclass(frozen=True)
class AdmissionLimits:
    """The admission settings (``SPINE_NODE_MAX_ASSOCIATIONS`` and friends, see the config table)."""

    max_associations: int = 32
    max_peer_connections: int = 48
    max_pending: int = 64
    associate_timeout_s: float = 10.0
    allowed_calling: tuple[str, ...] = ()   # empty: any calling AE
    called_aes: tuple[str, ...] = ()        # titles answered; empty: the node's own only; "*": any


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from connect to close."""

    sock: socket.socket
    peer: str
    port: int
    opened: float = field(default_factory=time.monotonic)
    associated: bool = False     # holds an association slot (its A-ASSOCIATE-RQ was admitted)
    accepted: bool = False       # its association was accepted (EVT_ACCEPTED): the deadline is over
    cut_reason: str = ""
    assoc: object = None         # the pynetdicom Association, once created

    def cut(self, reason: str) -> None:
        """Shut the socket down from another thread: a blocked recv (handshake, DUL) returns at once.

        An association thread still waiting for the A-ASSOCIATE-RQ is woken too (an empty
        item in its DUL queue reads as pynetdicom's own ACSE timeout), so that its threads
        end now rather than after ``acse_timeout``.
        """
        if self.cut_reason:
            return
        self.cut_reason = reason
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the plain socket's, also under an SSLSocket
        except OSError:
            pass
        assoc = self.assoc
        if assoc is not None and getattr(assoc.requestor, "primitive", None) is None:
            try:
                assoc.dul.to_user_queue.put(None)
            except Exception:  # noqa: BLE001 - the socket is shut in any case
                pass

    @property
    def age(self) -> float:
        return time.monotonic() - self.opened


RefusalHook = Callable[[object, str], None]  # (association or None, reason) -> None


class AdmissionServer(ThreadedAssociationServer):
    """``ThreadedAssociationServer`` with deadlines, caps and true refusal reasons (module docstring)."""

    daemon_threads = True
    block_on_close = False       # shutdown() must not wait for associations; the node waits with its own grace
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args, limits: AdmissionLimits, on_refused: RefusalHook | None = None, **kwargs):
        self.limits = limits
        self.on_refused = on_refused
        self._connections: set[Connection] = set()
        self._admitted: dict[int, Connection] = {}  # id(accepted socket) -> its Connection, until its thread runs
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__(*args, request_handler=_Handler, **kwargs)
        self.contexts = _Contexts(self.contexts)
        self.bind(evt.EVT_REQUESTED, self._requested)
        self.bind(evt.EVT_ACCEPTED, self._accepted)
        self.bind(evt.EVT_REJECTED, self._rejected_by_pynetdicom)
        self._reaper = threading.Thread(target=self._reap, name="scp-admission-reaper", daemon=True)
        self._reaper.start()

    # --- accepting -------------------------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, tuple]:
        """Accept only: no TLS handshake in the accept thread (it runs in the connection's thread)."""
        client, address = self.socket.accept()
        client.setblocking(True)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small responses leave at once
        except OSError:
            pass
        return client, address

    def verify_request(self, request, client_address) -> bool:
        """Admit the connection under the pending and per-peer caps (may cut an older one instead)."""
        connection = Connection(request, str(client_address[0]), int(client_address[1]))
        with self._lock:
            victims, refusal = self._make_room(connection)
            if not refusal:
                self._connections.add(connection)
        for victim, why in victims:
            log.warning("connection from %s:%d cut after %.1f s without an association: %s", victim.peer,
                        victim.port, victim.age, why)
            victim.cut(why)
        if refusal:
            log.warning("connection from %s:%d refused: %s", connection.peer, connection.port, refusal)
            self._notify_refused(None, refusal)
            return False
        with self._lock:
            self._admitted[id(request)] = connection  # found again by the connection's thread
        return True

    def _make_room(self, new: Connection) -> tuple[list[tuple[Connection, str]], str]:
        """(connections to cut, refusal of ``new`` or ''): under ``self._lock``."""
        limits, victims = self.limits, []
        live = [c for c in self._connections if not c.cut_reason]
        pending = [c for c in live if not c.accepted]
        from_peer = [c for c in live if c.peer == new.peer]
        for over, pool, what in (
                (len(from_peer) >= limits.max_peer_connections, [c for c in from_peer if not c.accepted],
                 f"{len(from_peer)} connections from {new.peer} (SPINE_NODE_MAX_PEER_CONNECTIONS "
                 f"{limits.max_peer_connections})"),
                (len(pending) >= limits.max_pending, pending,
                 f"{len(pending)} connections without an association (SPINE_NODE_MAX_PENDING {limits.max_pending})")):
            if not over:
                continue
            oldest = min((c for c in pool if c not in dict(victims)), key=lambda c: c.opened, default=None)
            if oldest is None or oldest.age < EVICT_AFTER_S:
                return victims, what
            victims.append((oldest, f"{what}; a newer connection needs the room"))
        return victims, ""

    def process_request_thread(self, request, client_address) -> None:
        """The connection's thread: TLS handshake (with the deadline), then the association, then clean up."""
        with self._lock:
            connection = self._admitted.pop(id(request))
        try:
            if self.ssl_context is not None:
                request = self._handshake(request, connection)
                if request is None:  # closed by the handshake's failure
                    return
            _Handler(request, client_address, self, connection)
        except Exception:  # noqa: BLE001 - one connection's failure must never reach the accept loop
            log.exception("connection from %s:%d failed", connection.peer, connection.port)
        finally:
            with self._lock:
                self._connections.discard(connection)
            if request is not None:
                self.shutdown_request(request)

    def _handshake(self, raw: socket.socket, connection: Connection) -> ssl.SSLSocket | None:
        """The TLS handshake within what is left of the deadline; None (socket closed) when it fails."""
        remaining = self.limits.associate_timeout_s - connection.age
        tls = None
        try:
            raw.settimeout(max(0.05, remaining))
            tls = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            connection.sock = tls
            if connection.cut_reason:  # cut while wrapping: the reaper shut the plain socket
                raise OSError(connection.cut_reason)
            tls.do_handshake()
            tls.settimeout(None)
            return tls
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = connection.cut_reason or f"TLS handshake failed: {type(exc).__name__}: {_first_line(exc)}"
            if not connection.cut_reason:
                log.warning("connection from %s:%d closed: %s", connection.peer, connection.port, reason)
                self._notify_refused(None, reason)
            for sock in (tls, raw):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
            return None

    # --- the A-ASSOCIATE-RQ ----------------------------------------------------------------------------

    def _requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: decide the request (AE titles, limits); reject here with the true reason."""
        assoc = event.assoc
        connection: Connection | None = getattr(assoc, "spine_connection", None)
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        refusal, rsd = self._title_refusal(calling, called)
        if not refusal and connection is not None:
            with self._lock:
                held = sum(1 for c in self._connections if c.associated)
                from_peer = sum(1 for c in self._connections if c.associated and c.peer == connection.peer)
                if held >= self.limits.max_associations:
                    refusal, rsd = (f"association limit reached ({held} of SPINE_NODE_MAX_ASSOCIATIONS "
                                    f"{self.limits.max_associations})"), REJECT_LIMIT
                elif from_peer >= self.limits.max_peer_connections:
                    refusal, rsd = (f"{from_peer} associations from {connection.peer} "
                                    f"(SPINE_NODE_MAX_PEER_CONNECTIONS {self.limits.max_peer_connections})"), \
                        REJECT_LIMIT
                else:
                    connection.associated = True
        if called and self._answers_any_title():
            assoc.acceptor.ae_title = called  # answer as the title that was called
        if not refusal:
            return
        log.warning("association from %s (%s:%s) to %s refused: %s", calling or "?", _peer(assoc), _port(assoc),
                    called or "?", refusal)
        assoc.acse.send_reject(*rsd)  # the reactor then skips negotiation (is_rejected)
        self._notify_refused(assoc, refusal)
        assoc.kill()  # as pynetdicom's own refusal: wait until the A-ASSOCIATE-RJ is out and the peer has closed

    def _title_refusal(self, calling: str, called: str) -> tuple[str, tuple]:
        limits = self.limits
        if not self._answers_any_title() and called not in self._called_titles():
            return f"called AE title {called!r} is not this node's ({', '.join(self._called_titles())})", \
                REJECT_CALLED_AE
        if limits.allowed_calling and calling not in limits.allowed_calling:
            return f"calling AE title {calling!r} not in SPINE_NODE_ALLOWED_AES", REJECT_CALLING_AE
        return "", ()

    def _called_titles(self) -> tuple[str, ...]:
        return (str(self.ae_title).strip(), *self.limits.called_aes)

    def _answers_any_title(self) -> bool:
        return "*" in self.limits.called_aes

    def _accepted(self, event: evt.Event) -> None:
        connection = getattr(event.assoc, "spine_connection", None)
        if connection is not None:
            connection.accepted = True
        event.assoc.dul._run_loop_delay = ASSOCIATED_POLL_S

    def _rejected_by_pynetdicom(self, event: evt.Event) -> None:
        """EVT_REJECTED from pynetdicom's own negotiation: log the reason it sent (never 'AE title' by default).

        The connection keeps its deadline: the reaper cuts it if the peer does not close after the reject.
        """
        primitive = event.assoc.acceptor.primitive
        key = (int(getattr(primitive, "result_source", 0) or 0), int(getattr(primitive, "diagnostic", 0) or 0))
        reason = f"A-ASSOCIATE-RJ: {_DIAGNOSTICS.get(key, f'source {key[0]}, diagnostic {key[1]}')}"
        log.warning("association from %s (%s:%s) refused: %s", _calling(event.assoc), _peer(event.assoc),
                    _port(event.assoc), reason)
        self._notify_refused(event.assoc, reason)

    def _notify_refused(self, assoc, reason: str) -> None:
        if self.on_refused is None:
            return
        try:
            self.on_refused(assoc, reason)
        except Exception:  # noqa: BLE001 - recording a refusal must never break admission
            log.exception("could not record a refusal")

    # --- deadlines -------------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Cut every connection whose association is not accepted within the deadline."""
        while not self._stopping.wait(REAPER_INTERVAL_S):
            limit = self.limits.associate_timeout_s
            with self._lock:
                late = [c for c in self._connections if not c.accepted and not c.cut_reason and c.age > limit]
            for connection in late:
                reason = f"no complete A-ASSOCIATE-RQ within {limit:g} s (SPINE_NODE_ASSOCIATE_TIMEOUT)"
                log.warning("connection from %s:%d cut: %s", connection.peer, connection.port, reason)
                connection.cut(reason)
                self._notify_refused(None, reason)

    def connection_counts(self) -> dict[str, int]:
        """How many connections are open, associated and waiting (for tests and the log)."""
        with self._lock:
            live = list(self._connections)
        closing = [c for c in live if c.cut_reason]
        live = [c for c in live if not c.cut_reason]
        return {"open": len(live), "associated": sum(c.associated for c in live),
                "pending": sum(not c.accepted for c in live), "closing": len(closing)}

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()


class _Contexts(list):
    """The server's presentation contexts, copied per connection in microseconds instead of ~0.1-0.7 s.

    pynetdicom gives every connection ``deepcopy(server.contexts)``: for the node's 121
    storage classes x 12 transfer syntaxes that is 0.1 s of CPU with the GIL held, 0.7 s on a
    loaded machine, spent before the peer has sent a byte, so 22 silent sockets cost
    seconds of everyone's time. A context's fields are immutable values (UIDs, ints) but
    its list of transfer syntaxes, so a shallow copy with a fresh list is the same copy.
    """

    def __deepcopy__(self, memo) -> list:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


class _Handler(RequestHandler):
    """pynetdicom's request handler, told its ``Connection``, waiting in its thread for the association to end."""

    def __init__(self, request, client_address, server, connection: Connection | None = None):
        self.connection = connection
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        assoc = self._create_association()
        assoc.spine_connection = self.connection
        if self.connection is not None:
            self.connection.assoc = assoc
        assoc.dul._run_loop_delay = PENDING_POLL_S  # until EVT_ACCEPTED (AdmissionServer._accepted)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()  # the slot is held until the association's thread ends (process_request_thread's finally)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _calling(assoc) -> str:
    primitive = assoc.requestor.primitive
    return str(getattr(primitive, "calling_ae_title", "") or assoc.requestor.ae_title or "").strip() or "?"


def _peer(assoc) -> str:
    return str(assoc.requestor.address or "")


def _port(assoc) -> str:
    return str(assoc.requestor.port or "")
