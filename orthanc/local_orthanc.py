"""Start a local Orthanc (Debian's packages) for tests and the demo, and stop it by its PID.

Orthanc runs as a plain foreground child process with a configuration written from
``orthanc/orthanc.json`` (the template) and ``orthanc/routing.json`` (the routing rules),
with the ports, storage folder, StableAge, modalities and rule overrides filled in:

* HTTP (REST, DICOMweb at ``/dicom-web/``) and DICOM on free ports unless given;
* ``RemoteAccessAllowed: false``: the REST API answers only loopback clients. Orthanc has
  no bind-address option: both ports listen on ALL interfaces. DICOM stores are accepted
  only from the declared modalities at their declared hosts (``DicomAlwaysAllowStore``
  false, ``DicomCheckModalityHost`` true); a firewall is still needed on a shared host;
* a throw-away working folder (configuration, storage, ``orthanc.log``) removed on stop,
  unless a storage folder of one's own is given;
* the spine-node modality (``spine-node`` = SPINENODE@127.0.0.1:11112 by default) that the
  Lua script ``route_to_spine_node.lua`` routes stable CT series to, plus optional extras.

By hand (Ctrl-C stops it)::

    .venv/bin/python orthanc/local_orthanc.py --stable-age 5 --node SPINENODE@127.0.0.1:11112

From Python (tests load this file by path: ``orthanc/`` is not an installed package)::

    with LocalOrthanc(stable_age=2, node=Modality.parse("SPINENODE@127.0.0.1:11112")) as orthanc:
        orthanc.url, orthanc.dicom_port, orthanc.dicomweb_url

Standard library only, so it runs with any Python 3.10+.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "orthanc.json"
ROUTING = HERE / "routing.json"
LUA_SCRIPT = HERE / "route_to_spine_node.lua"
ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get("ORTHANC_DICOMWEB_PLUGIN",
                                 "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
NODE_MODALITY = "spine-node"
LOOPBACK = "127.0.0.1"


class OrthancError(RuntimeError):
    """Orthanc could not be configured, started or stopped; the message says why and where."""


@dataclass(frozen=True)
class Modality:
    """A DICOM peer as Orthanc's DicomModalities declares it: AE title, host, port."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Modality":
        """Parse ``AET@host:port`` (the form SPINE_NODE_DESTINATIONS uses too)."""
        try:
            aet, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            modality = cls(aet, host, int(port))
        except ValueError:
            raise ValueError(f"modality {text!r} is not of the form AET@host:port") from None
        if not aet or len(aet) > 16 or not host:
            raise ValueError(f"modality {text!r}: AE title must be 1-16 characters and host non-empty")
        return modality

    def as_orthanc(self) -> list:
        """The ``[AET, host, port]`` entry of DicomModalities."""
        return [self.aet, self.host, self.port]


DEFAULT_NODE = Modality("SPINENODE", LOOPBACK, 11112)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the OS picks it; a race is possible, start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (Orthanc binds every interface, so check them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def routing_rules(overrides: dict | None = None, rules_file: Path = ROUTING) -> dict:
    """The SpineNodeRouting section: ``rules_file``'s rules with ``overrides`` on top."""
    rules = dict(json.loads(Path(rules_file).read_text())["SpineNodeRouting"])
    unknown = set(overrides or {}) - set(rules)
    if unknown:
        raise ValueError(f"unknown routing rule(s) {sorted(unknown)}; known: {sorted(rules)}")
    rules.update(overrides or {})
    return rules


def build_configuration(*, http_port: int, dicom_port: int, storage: Path, stable_age: int,
                        node: Modality, modalities: dict[str, Modality] | None = None,
                        aet: str = "ORTHANC") -> dict:
    """Orthanc's configuration: the template with ports, storage, StableAge and modalities filled in."""
    if not Path(DICOMWEB_PLUGIN).is_file():
        raise OrthancError(f"DICOMweb plugin not found at {DICOMWEB_PLUGIN} "
                           "(install the Debian package orthanc-dicomweb)")
    config = json.loads(TEMPLATE.read_text())
    declared = {NODE_MODALITY: node.as_orthanc()}
    declared.update({name: m.as_orthanc() for name, m in (modalities or {}).items()})
    config.update({
        "DicomAet": aet,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StableAge": int(stable_age),
        "DicomModalities": declared,
        "LuaScripts": [str(LUA_SCRIPT)],
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "RemoteAccessAllowed": False,
    })
    return config


def write_configuration(folder: Path, config: dict, rules: dict) -> Path:
    """Write ``orthanc.json`` and ``routing.json`` into ``folder``; Orthanc reads the whole folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    (folder / "routing.json").write_text(json.dumps({"SpineNodeRouting": rules}, indent=2))
    return folder


class LocalOrthanc:
    """One Orthanc child process on loopback ports with a throw-away (or given) storage folder."""

    def __init__(self, *, stable_age: int = 60, node: Modality = DEFAULT_NODE,
                 modalities: dict[str, Modality] | None = None, routing: dict | None = None,
                 http_port: int | None = None, dicom_port: int | None = None,
                 storage: Path | None = None, aet: str = "ORTHANC"):
        self.stable_age = stable_age
        self.node = node
        self.modalities = dict(modalities or {})
        self.rules = routing_rules(routing)
        self.aet = aet
        self._fixed_ports = (http_port, dicom_port)
        self.http_port = http_port or 0
        self.dicom_port = dicom_port or 0
        self.workdir = Path(tempfile.mkdtemp(prefix="spine-node-orthanc-"))
        self.storage = Path(storage) if storage else self.workdir / "storage"
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Root of the REST API, e.g. ``http://127.0.0.1:8042``."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (the node's ``stow:`` destination)."""
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int | None:
        """PID of the running Orthanc, None when stopped."""
        return self._process.pid if self._process and self._process.poll() is None else None

    def log_text(self) -> str:
        """Everything Orthanc has logged so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> "LocalOrthanc":
        """Start Orthanc and wait until ``/system`` answers; retry with new ports if one was taken."""
        if not Path(ORTHANC_BINARY).is_file():
            raise OrthancError(f"Orthanc not found at {ORTHANC_BINARY} (install the Debian package orthanc)")
        taken = [port for port in self._fixed_ports if port and not port_is_free(port)]
        if taken:  # another Orthanc (Debian's service, say) would answer /system in our place
            raise OrthancError(f"port(s) {', '.join(map(str, taken))} already in use: stop what listens there "
                               "(Debian's Orthanc service: sudo systemctl stop orthanc) or choose other ports")
        attempts = 1 if all(self._fixed_ports) else 3
        for attempt in range(1, attempts + 1):
            self.http_port = self._fixed_ports[0] or free_port()
            self.dicom_port = self._fixed_ports[1] or free_port()
            self._launch()
            if self._wait_ready(timeout):
                return self
            self.stop()
            if attempt == attempts:
                tail = self.log_text()[-2000:]
                raise OrthancError(f"Orthanc on HTTP port {self.http_port} did not answer /system "
                                   f"within {timeout:.0f} s; log {self.log_path}:\n{tail}")
        return self

    def _launch(self) -> None:
        config = build_configuration(http_port=self.http_port, dicom_port=self.dicom_port,
                                     storage=self.storage, stable_age=self.stable_age,
                                     node=self.node, modalities=self.modalities, aet=self.aet)
        folder = write_configuration(self.workdir / "config", config, self.rules)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen([ORTHANC_BINARY, str(folder)], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             cwd=self.workdir)

    def _wait_ready(self, timeout: float) -> bool:
        """True once /system answers; False if Orthanc exited (port taken, bad configuration)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        return False

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc by its own PID (SIGTERM, then SIGKILL) and remove the throw-away folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def cleanup(self) -> None:
        """Stop, then delete the working folder (configuration, log, and storage unless given)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalOrthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _parse_named_modality(text: str) -> tuple[str, Modality]:
    name, _, spec = text.partition("=")
    if not name or not spec:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NAME=AET@host:port")
    try:
        return name, Modality.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _modality_arg(text: str) -> Modality:
    try:
        return Modality.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="local_orthanc.py", description=__doc__.split("\n")[0])
    p.add_argument("--http-port", type=int, help="HTTP port (default: a free one)")
    p.add_argument("--dicom-port", type=int, help="DICOM port (default: a free one)")
    p.add_argument("--stable-age", type=int, default=5, help="seconds without a new instance before "
                   "a series is stable and routed (default 5; Orthanc's own default is 60)")
    p.add_argument("--node", type=_modality_arg, default=DEFAULT_NODE, metavar="AET@HOST:PORT",
                   help="the spine-node modality (default SPINENODE@127.0.0.1:11112)")
    p.add_argument("--modality", type=_parse_named_modality, action="append", default=[],
                   metavar="NAME=AET@HOST:PORT", help="an extra modality to declare (repeatable)")
    p.add_argument("--rule", action="append", default=[], metavar="KEY=JSON",
                   help='override a routing rule, e.g. --rule MinInstances=10 --rule \'Modalities=["CT"]\'')
    p.add_argument("--storage", type=Path, help="keep the storage in this folder (default: throw-away)")
    p.add_argument("--aet", default="ORTHANC", help="Orthanc's own AE title (default ORTHANC)")
    return p


def _rule_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"--rule {item!r}: the value must be JSON (a number, a string in quotes, a list)")
    return overrides


def _interrupt(signum, frame) -> None:
    """SIGTERM stops the CLI the way Ctrl-C does, so Orthanc is stopped and the folder removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Start Orthanc, print where it listens, and run until Ctrl-C or SIGTERM."""
    args = build_parser().parse_args(argv)
    try:
        orthanc = LocalOrthanc(stable_age=args.stable_age, node=args.node, modalities=dict(args.modality),
                               routing=_rule_overrides(args.rule), http_port=args.http_port,
                               dicom_port=args.dicom_port, storage=args.storage, aet=args.aet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # From here on, Ctrl-C or SIGTERM at any moment ends in the finally: Orthanc stopped, folder removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        orthanc.start()
        print(f"Orthanc pid {orthanc.pid}\n  HTTP     {orthanc.url}\n  DICOM    {orthanc.aet}@{LOOPBACK}:"
              f"{orthanc.dicom_port}\n  DICOMweb {orthanc.dicomweb_url}/\n  node     {NODE_MODALITY} = "
              f"{orthanc.node.aet}@{orthanc.node.host}:{orthanc.node.port}\n  storage  {orthanc.storage}\n"
              f"  log      {orthanc.log_path}\nCtrl-C stops it.", flush=True)
        while orthanc.pid is not None:
            time.sleep(1)
        print(f"error: Orthanc exited; its log:\n{orthanc.log_text()[-3000:]}", file=sys.stderr)
        return 1
    except OrthancError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        orthanc.cleanup()  # a --storage folder is outside the working folder and is kept


if __name__ == "__main__":
    sys.exit(main())
