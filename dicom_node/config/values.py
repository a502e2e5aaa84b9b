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

from pipelines.options import OUTPUT_KINDS, SEG_TYPES

from dicom_node.config.profiles import OutputProfile

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
        """``AE@host:port`` as the configuration takes it back: an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls:' if self.tls else ''}{self.ae_title}@{host}:{self.port}"


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


@dataclass(frozen=True)
class DestinationEntry:
    """One destination as configured: its address and the profile settings it names (None: the node's own)."""

    address: DimsePeer | StowDestination
    outputs: tuple[str, ...] | None = None
    seg_type: str | None = None
    seg_all_frames: bool | None = None
    notices: bool | None = None

    def resolve(self, default: OutputProfile) -> OutputProfile:
        """The destination's profile: what it names, the node-wide ``default`` for the rest."""
        return OutputProfile(outputs=self.outputs or default.outputs, seg_type=self.seg_type or default.seg_type,
                             seg_all_frames=default.seg_all_frames if self.seg_all_frames is None
                             else self.seg_all_frames,
                             notices=default.notices if self.notices is None else self.notices)


_PROFILE = re.compile(r"^(?P<address>.*?)\s*\[(?P<profile>[A-Za-z0-9_,\s-]*)\]\s*$")
PROFILE_WORDS = {"binary": ("seg_type", "binary"), "labelmap": ("seg_type", "labelmap"),
                 "all-frames": ("seg_all_frames", True), "slab": ("seg_all_frames", False),
                 "notices": ("notices", True), "no-notices": ("notices", False)}
"""The words besides the output kinds that a destination's ``[...]`` may hold, and what each sets."""
TABLE_KEYS = ("address", "outputs", "seg_type", "seg_all_frames", "notices")


def split_destinations(value: str) -> list[str]:
    """A comma-separated list whose items may hold commas inside ``[...]`` (``PACS@h:104[seg,sr], ...``)."""
    parts, current, depth = [], [], 0
    for char in value:
        depth += (char == "[") - (char == "]")
        if char == "," and depth <= 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def destination_entry(value: str) -> DestinationEntry:
    """``ADDRESS`` or ``ADDRESS[seg,sr,labelmap,all-frames,no-notices]``: an address and its profile words."""
    found = _PROFILE.match(value)
    if found is None:
        return DestinationEntry(destination(value))
    address = destination(found["address"])
    words = [w.strip().lower() for w in found["profile"].split(",") if w.strip()]
    if not words:
        raise Invalid(f"{value!r}: the [...] names nothing (give output kinds such as [seg,sr])")
    settings: dict[str, object] = {}
    outputs = []
    for word in words:
        if word in OUTPUT_KINDS:
            outputs.append(word)
        elif word in PROFILE_WORDS:
            name, setting = PROFILE_WORDS[word]
            if settings.get(name, setting) != setting:
                raise Invalid(f"{value!r}: {word!r} contradicts an earlier word in the [...]")
            settings[name] = setting
        else:
            raise Invalid(f"{value!r}: {word!r} is not an output ({', '.join(OUTPUT_KINDS)}) nor one of "
                          f"{', '.join(PROFILE_WORDS)}")
    return DestinationEntry(address, outputs=tuple(dict.fromkeys(outputs)) or None, **settings)


def destination_table(name: str, table) -> DestinationEntry:
    """A TOML ``[destinations.NAME]`` table: ``address`` and, if wanted, outputs, seg_type, seg_all_frames, notices."""
    if isinstance(table, str):
        return destination_entry(table)
    if not isinstance(table, dict):
        raise Invalid(f"destination {name!r}: {table!r} is not a table with an address")
    unknown = [key for key in table if key not in TABLE_KEYS]
    if unknown:
        raise Invalid(f"destination {name!r}: unknown key(s) {', '.join(map(repr, unknown))} "
                      f"(a destination takes {', '.join(TABLE_KEYS)})")
    if "address" not in table:
        raise Invalid(f"destination {name!r}: no address (AE@host:port or stow:http://host:port/dicom-web)")
    try:
        outputs = each(table["outputs"], lambda kind: choice(kind, OUTPUT_KINDS)) if "outputs" in table else None
        if outputs == ():
            raise Invalid("outputs is empty (give one or more of " + ", ".join(OUTPUT_KINDS) + ")")
        return DestinationEntry(
            destination(text(table["address"], "AE@host:port or stow:http://host:port/dicom-web")),
            outputs=tuple(dict.fromkeys(outputs)) if outputs else None,
            seg_type=choice(table["seg_type"], SEG_TYPES) if "seg_type" in table else None,
            seg_all_frames=boolean(table["seg_all_frames"]) if "seg_all_frames" in table else None,
            notices=boolean(table["notices"]) if "notices" in table else None)
    except Invalid as exc:
        raise Invalid(f"destination {name!r}: {exc}") from None


def destinations(value) -> tuple[DestinationEntry, ...]:
    """The ``destinations`` setting: a comma-separated text, a list of texts, or a table of ``[destinations.NAME]``.

    The same address named twice with the same profile counts once; with two profiles it is a mistake.
    """
    if isinstance(value, dict):
        entries, bad = [], []
        for name, table in value.items():
            try:
                entries.append(destination_table(name, table))
            except Invalid as exc:
                bad.append(str(exc))
        if bad:
            raise Invalid("; ".join(bad))
    elif isinstance(value, str):
        entries = list(each(split_destinations(value), destination_entry))
    else:
        entries = list(each(value, destination_entry))
    by_address: dict[str, DestinationEntry] = {}
    for entry in entries:
        seen = by_address.setdefault(str(entry.address), entry)
        if seen != entry:
            raise Invalid(f"{entry.address} is named twice with different outputs")
    return tuple(by_address.values())


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
