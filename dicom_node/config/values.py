"""Parsers of single configuration values: each returns the value or raises ``Invalid`` with a short reason.

A value comes either from the TOML file (already typed: int, float, bool, list, table) or
from an environment variable (always a string); every parser accepts both. The message
of ``Invalid`` is what follows ``NAME: `` in the one-line error the person reads.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # DICOM default repertoire, no backslash, no control chars
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z._-]+)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Invalid(ValueError):
    """One value is wrong; the message says why (without the name of the setting)."""


@dataclass(frozen=True)
class DimsePeer:
    """An AE title reachable at host:port (a DIMSE destination, or a known calling AE)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False  # ``tls:AE@host:port``: C-STORE to it over TLS

    def __str__(self) -> str:
        return f"{'tls:' if self.tls else ''}{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb service root that takes STOW-RS (``stow:http://host:port/dicom-web``)."""

    url: str

    def __str__(self) -> str:
        return f"stow:{self.url}"


def integer(value, lo: int, hi: int | None, what: str) -> int:
    """An integer within [lo, hi]."""
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < lo or (hi is not None and number > hi):
        raise Invalid(f"{value!r} is not {what}")
    return number


def port(value) -> int:
    return integer(value, 1, 65535, "a port number (1-65535)")


def number(value, *, minimum: float, maximum: float | None = None, inclusive_min: bool, what: str) -> float:
    """A finite number above ``minimum`` (or equal, when ``inclusive_min``) and at most ``maximum``."""
    try:
        result = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        result = None
    if result is None or result != result or result in (float("inf"), float("-inf")) \
            or result < minimum or (result == minimum and not inclusive_min) \
            or (maximum is not None and result > maximum):
        raise Invalid(f"{value!r} is not {what}")
    return result


def boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise Invalid(f"{value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def text(value, what: str = "a non-empty text") -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise Invalid(f"{value!r} is not {what}")
    return value.strip()


def ae_title(value) -> str:
    """An AE title: 1-16 characters of the DICOM default repertoire, no backslash or control character."""
    title = value.strip() if isinstance(value, str) else value
    if not isinstance(title, str) or not title or len(title) > 16 or not _AE_CHARS.match(title):
        raise Invalid(f"{value!r} is not an AE title (1-16 characters, no backslash or control characters)")
    return title


def choice(value, options: tuple[str, ...]) -> str:
    text_value = str(value).strip().lower() if isinstance(value, str) else None
    if text_value not in options:
        raise Invalid(f"{value!r} is not one of {', '.join(options)}")
    return text_value


def device(value) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    text_value = str(value).strip().lower() if isinstance(value, str) else ""
    if text_value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d{1,2}", text_value):
        return text_value
    raise Invalid(f"{value!r} is not a device (auto, cpu, cuda or cuda:N)")


def items(value) -> list[str]:
    """A comma-separated string or a list of strings, as a list of non-empty stripped items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise Invalid(f"{value!r} is not a comma-separated list")


def each(value, parse: Callable[[str], object]) -> tuple:
    """Parse every item of a list; all the bad items are named in one message."""
    parsed, bad = [], []
    for item in items(value):
        try:
            parsed.append(parse(item))
        except Invalid as exc:
            bad.append(str(exc))
    if bad:
        raise Invalid("; ".join(bad))
    return tuple(parsed)


def host_port(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not _HOST.match(host):
        raise Invalid(f"{value!r} is not host:port")
    try:
        return host.strip("[]"), port(port_text)
    except Invalid:
        raise Invalid(f"{value!r} has no valid port number (1-65535)") from None


def dimse_peer(value: str) -> DimsePeer:
    """``AE@host:port``."""
    ae, sep, address = value.partition("@")
    if not sep:
        raise Invalid(f"{value!r} is not AE@host:port")
    try:
        title = ae_title(ae)
    except Invalid:
        raise Invalid(f"{value!r}: {ae!r} is not an AE title (1-16 characters, no backslash)") from None
    try:
        host, port_number = host_port(address)
    except Invalid:
        raise Invalid(f"{value!r} is not AE@host:port (host:port part {address!r})") from None
    return DimsePeer(title, host, port_number)


def destination(value: str) -> DimsePeer | StowDestination:
    """``AE@host:port`` (C-STORE), ``tls:AE@host:port`` (C-STORE over TLS) or ``stow:http(s)://host[:port]/path``."""
    if value.lower().startswith("tls:"):
        peer = dimse_peer(value[4:].strip())
        return DimsePeer(peer.ae_title, peer.host, peer.port, tls=True)
    if value.lower().startswith("stow:"):
        url = value[5:].strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"{value!r} is not stow:http(s)://host:port/path")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise Invalid(f"{value!r} has no valid port number") from None
        return StowDestination(url.rstrip("/"))
    return dimse_peer(value)


def peers(value) -> dict[str, DimsePeer]:
    """``AE@host:port,...`` (variable or list) or a TOML table ``AE = "host:port"``."""
    found: dict[str, DimsePeer] = {}
    if isinstance(value, dict):
        for ae, address in value.items():
            if not isinstance(address, str):
                raise Invalid(f"peer {ae!r}: {address!r} is not \"host:port\"")
            peer = dimse_peer(f"{ae}@{address}")
            found[peer.ae_title] = peer
        return found
    for item in items(value):
        peer = dimse_peer(item)
        found[peer.ae_title] = peer
    return found


def database_url(value) -> str:
    """``sqlite:///PATH`` or ``postgresql[+psycopg]://...`` (the message never shows a password)."""
    try:
        url = make_url(text(value, "a database URL"))
    except (ArgumentError, Invalid):
        raise Invalid(f"{_hide(value)!r} is not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB)") \
            from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise Invalid(f"{shown!r}: only sqlite:///PATH and postgresql://USER@HOST/DB are supported")
    if url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"):
        raise Invalid(f"{shown!r}: driver {url.drivername!r} is not installed (use postgresql+psycopg)")
    if url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:"):
        raise Invalid(f"{shown!r}: SQLite needs a file path (sqlite:////absolute/path.db)")
    return str(value).strip()


def dask_scheduler(value) -> str | None:
    """Empty (embedded cluster) or a scheduler address: ``tcp://host:port`` (``host:port`` means tcp)."""
    address = str(value).strip() if isinstance(value, str) else None
    if address is None:
        raise Invalid(f"{value!r} is not a Dask scheduler address (tcp://host:port)")
    if not address:
        return None
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme not in ("tcp", "tls", "ucx", "ws", "wss"):
        raise Invalid(f"{value!r} is not a Dask scheduler address (tcp://host:port)")
    try:
        host, port_number = host_port(rest)
    except Invalid:
        raise Invalid(f"{value!r} is not a Dask scheduler address (tcp://host:port)") from None
    return f"{scheme}://{rest}"


def _hide(value) -> str:
    """A URL with any password replaced, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", str(value))


def lesion_thresholds(value, base) -> dict:
    """A table of lesion thresholds: a TOML table, or a JSON object (text, or the path of a JSON file)."""
    import json
    from pathlib import Path

    from pipelines.errors import LesionConfigError
    from pipelines.lesions import LesionThresholds

    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            path = Path(base) / Path(text).expanduser()
            try:
                text = path.read_text()
            except OSError as exc:
                raise Invalid(f"{str(path)!r} cannot be read ({exc.strerror})") from None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise Invalid(f"not a JSON object of lesion thresholds ({exc})") from None
    if not isinstance(value, dict):
        raise Invalid(f"{value!r} is not a table of lesion thresholds")
    try:
        LesionThresholds.from_dict(value)
    except LesionConfigError as exc:
        raise Invalid(str(exc)) from None
    return dict(value)
