"""The node's configuration: one TOML file plus ``SPINE_NODE_*`` environment variables, checked at start.

Every setting has a key in the file and a variable; the variable wins. ``load_config``
collects every mistake and raises one ``ConfigError`` listing them, one line each, e.g.
``SPINE_NODE_PORT: 'abc' is not a port number (1-65535)``. The file is given by
``--config FILE`` or ``SPINE_NODE_CONFIG``; without one, defaults and variables apply.

=========================  =====================  ========================================================
variable                   file key               meaning (default)
=========================  =====================  ========================================================
SPINE_NODE_DATA_DIR        data_dir               instance files, outputs, SQLite database (./spine-node-data)
SPINE_NODE_DATABASE_URL    database_url           sqlite:///PATH or postgresql://USER@HOST/DB
                                                  (sqlite:///DATA_DIR/spine-node.db)
SPINE_NODE_AE_TITLE        ae_title               the node's AE title, 1-16 characters (SPINENODE)
SPINE_NODE_HOST            host                   address the SCP listens on (0.0.0.0)
SPINE_NODE_PORT            port                   DICOM port (11112)
SPINE_NODE_ALLOWED_AES     allowed_aes            calling AE titles accepted; empty: any (empty)
SPINE_NODE_DESTINATIONS    destinations           where outputs go: AE@host:port (C-STORE) and/or
                                                  stow:http://host:port/dicom-web (STOW-RS);
                                                  empty: back to the calling AE, at its address in peers.
                                                  Each may end with its own profile in [...]: output kinds
                                                  and binary|labelmap, all-frames|slab, notices|no-notices,
                                                  e.g. PACS@10.0.0.5:104[seg,sr],RT@h:104[rtstruct,sc,pdf];
                                                  file: a list of such texts, or [destinations.NAME] tables
                                                  (address, outputs, seg_type, seg_all_frames, notices).
                                                  What a destination does not name comes from the settings
                                                  below; the node builds what any destination takes
SPINE_NODE_PEERS           [peers] table          host and port of calling AEs, for "back to the caller":
                                                  variable AE@host:port,...; file table AE = "host:port"
SPINE_NODE_STABLE_AGE      stable_age             seconds without a new instance before a series counts
                                                  as complete even without a release (30)
SPINE_NODE_MIN_SLICES      min_slices             fewer slices than this: the series is rejected (20)
SPINE_NODE_MODEL           model                  model bundle name or folder (spine-phantom-demo)
SPINE_NODE_DEVICE          device                 auto, cpu, cuda or cuda:N (auto)
SPINE_NODE_STEP_SIZE       step_size              sliding-window step, fraction of the patch, (0, 1] (0.5)
SPINE_NODE_MIRRORING       mirroring              test-time mirroring, slower (false)
SPINE_NODE_SEG_TYPE        seg_type               binary or labelmap DICOM SEG (binary)
SPINE_NODE_SEG_ALL_FRAMES  seg_all_frames         SEG frames for every CT slice, empty ones included, for
                                                  viewers that need every frame (false: the vertebrae's slab)
SPINE_NODE_OUTPUTS         outputs                objects made and sent: seg, sr, rtstruct (RT structure
                                                  set), sc (key images), pdf (encapsulated PDF, DOC);
                                                  variable comma-separated, file a list (seg,sr)
SPINE_NODE_NOTICES         notices                a refused series or a failed job gets a small SR in its
                                                  study, "Not processed" and the reason (true); never for
                                                  a series of derived objects only (SR, SEG...)
SPINE_NODE_BONE_DENSITY_THRESHOLD_HU  bone_density_threshold_hu   L1 (else L2) trabecular HU below which the
                                                  report flags low bone density (104)
SPINE_NODE_BONE_DENSITY_SOURCE  bone_density_source  where that threshold comes from, quoted in every
                                                  report (opportunistic CT screening, 2023)
SPINE_NODE_MATCH_PATIENTS_WITHOUT_ISSUER  match_patients_without_issuer  compare with a prior study of
                                                  the same PatientID when the series has no
                                                  IssuerOfPatientID (false: never matched)
SPINE_NODE_LESION_THRESHOLDS [lesion_thresholds]  overrides of the lesion classifier's numbers: a TOML
                                                  table, or in the variable a JSON object or the path
                                                  of a JSON file (the classifier's defaults)
SPINE_NODE_DASK_SCHEDULER  dask_scheduler         tcp://host:port of a Dask scheduler; empty: embedded (empty)
SPINE_NODE_WORKERS         workers                embedded workers (1)
SPINE_NODE_RETRY_MAX_S     retry_max_s            longest wait between two delivery attempts, seconds (300)
SPINE_NODE_TLS_CERT        tls_cert               PEM certificate: DICOM over TLS (off)
SPINE_NODE_TLS_KEY         tls_key                its PEM private key (with tls_cert)
SPINE_NODE_TLS_CA          tls_ca                 PEM CA bundle: clients must present a certificate it signed;
                                                  also what outgoing TLS (C-STORE, https STOW-RS) trusts
SPINE_NODE_TLS_OUTGOING    tls_outgoing           C-STORE destinations over TLS with the node's certificate
                                                  (true when tls_cert is set); a destination written
                                                  tls:AE@host:port always uses TLS
SPINE_NODE_MAX_ASSOCIATIONS max_associations      associations at once; connections not yet associated do
                                                  not count; above: A-ASSOCIATE-RJ, local limit (32)
SPINE_NODE_MAX_PEER_CONNECTIONS max_peer_connections  connections from one address, associated or not (48)
SPINE_NODE_MAX_PENDING     max_pending            connections not yet associated (TLS handshake or request
                                                  under way), in total; over it or the peer cap, the
                                                  oldest one waiting over 1 s is cut for the new one (64)
SPINE_NODE_ASSOCIATE_TIMEOUT associate_timeout    seconds from connect to an accepted association, TLS
                                                  handshake included; then the connection is cut (10)
SPINE_NODE_CALLED_AES      called_aes             called AE titles answered besides ae_title; "*": any
                                                  (empty: only ae_title; others get A-ASSOCIATE-RJ)
SPINE_NODE_HTTP_PORT       http_port              dashboard, /api/, /healthz, /metrics; 0: off (8011)
SPINE_NODE_HTTP_HOST       http_host              address the dashboard listens on; any other than a
                                                  loopback one needs http_token or http_basic_auth (127.0.0.1)
SPINE_NODE_HTTP_TOKEN      http_token             bearer token the dashboard and API require (none)
SPINE_NODE_HTTP_BASIC_AUTH http_basic_auth        USER:PASSWORD the dashboard and API accept (none)
SPINE_NODE_WEB_SHOW_PATIENT web_show_patient      show patient name and ID on the dashboard, read from
                                                  the instance files (false)
SPINE_NODE_MIN_FREE_MB     min_free_mb            below this many MB free in the data folder, C-STORE is
                                                  answered 0xA700 before anything is written (500)
SPINE_NODE_MIN_FREE_PERCENT min_free_percent      the same as a percentage of the file system; 0: off (0)
SPINE_NODE_RETENTION_DAYS  retention_days         instance files of finished, fully delivered series are
                                                  removed after this many days; 0: kept (0)
SPINE_NODE_OUTPUT_RETENTION_DAYS output_retention_days  output files whose every delivery is confirmed
                                                  are removed after this many days; 0: kept (0)
SPINE_NODE_EMERGENCY_CLEAN emergency_clean        below the free-space watermark, remove the oldest
                                                  finished, fully delivered series' files at once (true)
SPINE_NODE_WEBHOOKS        webhooks               http(s) URLs POSTed a JSON notice when a job's results
                                                  are all delivered or a job fails, retried (empty)
SPINE_NODE_STOW_MAX_MB      stow_max_mb            largest STOW-RS request body taken, MB; a larger one is
                                                  answered 413 before it is held in memory (2048)
=========================  =====================  ========================================================

Installed model bundles are looked up in ``SPINE_NODE_MODELS_DIR`` (not a file key), else
in ``DATA_DIR/models``, then among the bundled ones. Pipeline defaults (model, device, step
size, mirroring, SEG type, min slices) are those of ``pipelines.options``.

Lists are comma-separated in variables and TOML arrays (or comma-separated strings) in the
file. Relative paths in the file are relative to the file's folder; in variables, to the
current folder. An example file::

    data_dir = "/var/lib/spine-node"
    ae_title = "SPINENODE"
    port = 11112
    allowed_aes = ["ORTHANC", "PACS"]
    destinations = []                 # back to the caller
    stable_age = 30
    device = "cuda"

    [peers]
    ORTHANC = "10.0.0.5:4242"
    PACS = "pacs.example.org:104"

Destinations with profiles, in the file (instead of the ``destinations`` list)::

    [destinations.pacs]
    address = "PACS@10.0.0.5:104"
    outputs = ["seg", "sr"]
    seg_type = "binary"

    [destinations.planning]
    address = "RTPLAN@10.0.0.7:104"
    outputs = ["rtstruct", "sc", "pdf"]
    notices = false
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pipelines.errors import PipelineError
from pipelines.options import (DEFAULT_BONE_DENSITY_SOURCE, DEFAULT_BONE_DENSITY_THRESHOLD_HU, DEFAULT_DATA_DIR, DEFAULT_DEVICE, DEFAULT_MIN_SLICES, DEFAULT_MIRRORING, DEFAULT_MODEL,
                               DEFAULT_SEG_TYPE, DEFAULT_STEP_SIZE, SEG_TYPES, PipelineOptions, default_models_dir,
                               DEFAULT_OUTPUTS, DEFAULT_SEG_ALL_FRAMES, OUTPUT_KINDS)

from dicom_node.config import values as v
from dicom_node.config.profiles import OutputProfile, needed_outputs, needed_seg_variants
from dicom_node.config.values import DimsePeer, Invalid, StowDestination
from dicom_node.errors import ConfigError

PREFIX = "SPINE_NODE_"
CONFIG_VARIABLE = "SPINE_NODE_CONFIG"
# Variables read elsewhere (not settings of NodeConfig): never reported as unknown.
MODELS_DIR_VARIABLE = "SPINE_NODE_MODELS_DIR"
OTHER_VARIABLES = frozenset({CONFIG_VARIABLE, MODELS_DIR_VARIABLE, "SPINE_NODE_TEST_PG"})
DATABASE_FILE = "spine-node.db"

Destination = DimsePeer | StowDestination


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node reads from its configuration, checked and typed."""

    data_dir: Path                           # absolute
    database_url: str
    ae_title: str = "SPINENODE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_aes: tuple[str, ...] = ()
    destinations: tuple[Destination, ...] = ()
    peers: Mapping[str, DimsePeer] = field(default_factory=lambda: MappingProxyType({}))
    stable_age: float = 30.0
    min_slices: int = DEFAULT_MIN_SLICES
    model: str = DEFAULT_MODEL
    device: str = DEFAULT_DEVICE
    step_size: float = DEFAULT_STEP_SIZE
    mirroring: bool = DEFAULT_MIRRORING
    seg_type: str = DEFAULT_SEG_TYPE
    seg_all_frames: bool = DEFAULT_SEG_ALL_FRAMES
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    notices: bool = True                     # "not processed" notices, where a destination does not say
    destination_profiles: Mapping[str, OutputProfile] = field(default_factory=lambda: MappingProxyType({}))
    lesion_thresholds: Mapping | None = None
    bone_density_threshold_hu: float = DEFAULT_BONE_DENSITY_THRESHOLD_HU
    bone_density_source: str = DEFAULT_BONE_DENSITY_SOURCE
    match_patients_without_issuer: bool = False
    models_dir: Path | None = None           # installed bundles; None: DATA_DIR/models
    dask_scheduler: str | None = None
    workers: int = 1
    retry_max_s: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_outgoing: bool | None = None         # None: on when tls_cert is set
    max_associations: int = 32
    max_peer_connections: int = 48
    max_pending: int = 64
    associate_timeout: float = 10.0
    called_aes: tuple[str, ...] = ()
    http_port: int = 8011                    # 0: no dashboard
    http_host: str = "127.0.0.1"
    http_token: str | None = None
    http_basic_auth: str | None = None       # "user:password"
    web_show_patient: bool = False
    min_free_mb: float = 500.0
    min_free_percent: float = 0.0
    retention_days: float = 0.0              # 0: instance files kept
    output_retention_days: float = 0.0       # 0: outputs kept
    emergency_clean: bool = True
    webhooks: tuple[str, ...] = ()
    stow_max_mb: float = 2048.0              # STOW-RS request bodies above it: 413
    source: Path | None = None               # the file read, if any
    warnings: tuple[str, ...] = ()           # not mistakes, but worth a log line at start

    def destinations_for(self, calling_ae: str | None) -> list[str]:
        """Where the outputs of a series sent by ``calling_ae`` go, as ``Store.record_output`` takes them.

        The configured destinations; when there are none, the calling AE at its address in
        ``peers``; an empty list when the caller's address is unknown (nothing can be sent).
        """
        if self.destinations:
            return [str(d) for d in self.destinations]
        peer = self.peers.get((calling_ae or "").strip())
        return [str(peer)] if peer else []

    @property
    def default_profile(self) -> OutputProfile:
        """What a destination gets when it names nothing itself (and what the calling AE gets back)."""
        return OutputProfile(self.outputs, self.seg_type, self.seg_all_frames, self.notices)

    def profile_of(self, destination: str) -> OutputProfile:
        """The output profile of a destination as ``destinations_for`` names it (the default for a calling AE)."""
        return self.destination_profiles.get(destination, self.default_profile)

    def profiles(self) -> list[OutputProfile]:
        """The profile of every place outputs can go: each destination's, or the default for the calling AE."""
        return [self.profile_of(str(d)) for d in self.destinations] or [self.default_profile]

    def pipeline_options(self) -> PipelineOptions:
        """The pipeline options the configuration asks for (recorded with every job).

        What is built is the union of the destinations' profiles: every kind some destination
        takes, and each SEG form some destination takes, once (the first one is the primary).
        """
        profiles = self.profiles()
        primary, *variants = needed_seg_variants(profiles, (self.seg_type, self.seg_all_frames))
        return PipelineOptions(model=self.model, device=self.device, step_size=self.step_size,
                               mirroring=self.mirroring, seg_type=primary[0], min_slices=self.min_slices,
                               seg_all_frames=primary[1], outputs=needed_outputs(profiles),
                               seg_variants=tuple(variants),
                               lesion_thresholds=dict(self.lesion_thresholds) if self.lesion_thresholds else None,
                               bone_density_threshold_hu=self.bone_density_threshold_hu,
                               bone_density_source=self.bone_density_source,
                               match_without_issuer=self.match_patients_without_issuer,
                               models_dir=str(self.installed_models_dir))

    @property
    def installed_models_dir(self) -> Path:
        """Where installed model bundles are looked up first."""
        return self.models_dir or default_models_dir(self.data_dir)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def outgoing_tls(self) -> bool:
        """Whether C-STORE destinations are reached over TLS (``tls_outgoing``, by default when TLS is on)."""
        return self.tls_enabled if self.tls_outgoing is None else bool(self.tls_outgoing)

    def describe(self) -> list[str]:
        """One line per setting, for the start-up log (the database password is hidden)."""
        from sqlalchemy.engine import make_url

        shown = make_url(self.database_url).render_as_string(hide_password=True)
        return [f"config file: {self.source or '(none)'}", f"data dir: {self.data_dir}", f"database: {shown}",
                f"AE title {self.ae_title} on {self.host}:{self.port}, TLS {'on' if self.tls_enabled else 'off'}",
                f"allowed calling AEs: {', '.join(self.allowed_aes) or 'any'}",
                "destinations: " + ("; ".join(f"{d} [{self.profile_of(str(d)).describe()}]"
                                              for d in self.destinations)
                                    or f"back to the calling AE [{self.default_profile.describe()}]"),
                f"peers: {', '.join(map(str, self.peers.values())) or 'none'}",
                f"model {self.model} on {self.device}, step {self.step_size:g}, mirroring {self.mirroring}, "
                f"SEG {self.seg_type}, models dir {self.installed_models_dir}",
                f"lesion thresholds: {dict(self.lesion_thresholds) if self.lesion_thresholds else 'defaults'}",
                f"stable age {self.stable_age:g} s, min slices {self.min_slices}, retry cap {self.retry_max_s:g} s",
                f"workers: {self.dask_scheduler or f'embedded x{self.workers}'}",
                f"admission: {self.max_associations} associations, {self.max_peer_connections} connections per "
                f"address, {self.max_pending} waiting, {self.associate_timeout:g} s to associate; called AE titles "
                f"{', '.join((self.ae_title, *self.called_aes))}; outgoing TLS {'on' if self.outgoing_tls else 'off'}",
                f"dashboard: {f'http://{self.http_host}:{self.http_port}' if self.http_port else 'off'}, "
                f"access {self.web_access}, patient identity {'shown' if self.web_show_patient else 'hidden'}",
                f"disk watermark: {self.min_free_mb:g} MB" + (f" or {self.min_free_percent:g} %"
                                                              if self.min_free_percent else "")
                + f" free, emergency clean {'on' if self.emergency_clean else 'off'}; retention: instances "
                f"{_days(self.retention_days)}, outputs {_days(self.output_retention_days)}",
                f"webhooks: {len(self.webhooks) or 'none'}"]

    @property
    def web_access(self) -> str:
        """How the dashboard checks who asks: 'token', 'basic auth', both, or 'open' (loopback only)."""
        ways = [name for name, value in (("token", self.http_token), ("basic auth", self.http_basic_auth)) if value]
        return " or ".join(ways) or "open"


def _days(days: float) -> str:
    return f"{days:g} days" if days else "kept"


@dataclass(frozen=True)
class _Setting:
    name: str                                     # file key; the variable is SPINE_NODE_<NAME>
    parse: Callable[[object, Path], object]       # (raw value, folder for relative paths) -> value
    empty_means_default: bool = False             # an empty variable means "not set"

    @property
    def variable(self) -> str:
        return PREFIX + self.name.upper()


def _path(raw, base: Path) -> Path:
    path = Path(v.text(raw, "a path")).expanduser()
    return Path(os.path.normpath(base / path))


def _existing_file(raw, base: Path) -> Path:
    path = _path(raw, base)
    if not path.is_file():
        raise Invalid(f"{str(path)!r} is not a file")
    return path


def _positive(what: str, maximum: float | None = None) -> Callable:
    return lambda raw, _: v.number(raw, minimum=0.0, maximum=maximum, inclusive_min=False, what=what)


SETTINGS = (
    _Setting("data_dir", _path),
    _Setting("database_url", lambda raw, _: v.database_url(raw), empty_means_default=True),
    _Setting("ae_title", lambda raw, _: v.ae_title(raw)),
    _Setting("host", lambda raw, _: v.text(raw, "a host name or address")),
    _Setting("port", lambda raw, _: v.port(raw)),
    _Setting("allowed_aes", lambda raw, _: v.each(raw, v.ae_title)),
    _Setting("destinations", lambda raw, _: v.destinations(raw)),
    _Setting("peers", lambda raw, _: v.peers(raw)),
    _Setting("stable_age", _positive("a number of seconds above 0")),
    _Setting("min_slices", lambda raw, _: v.integer(raw, 1, None, "a number of slices (1 or more)")),
    _Setting("model", lambda raw, _: v.text(raw, "a model bundle name or folder")),
    _Setting("device", lambda raw, _: v.device(raw)),
    _Setting("step_size", _positive("a step size in (0, 1]", maximum=1.0)),
    _Setting("mirroring", lambda raw, _: v.boolean(raw)),
    _Setting("seg_type", lambda raw, _: v.choice(raw, SEG_TYPES)),
    _Setting("seg_all_frames", lambda raw, _: v.boolean(raw)),
    _Setting("outputs", lambda raw, _: tuple(dict.fromkeys(v.each(raw, lambda kind: v.choice(kind, OUTPUT_KINDS))))),
    _Setting("notices", lambda raw, _: v.boolean(raw)),
    _Setting("bone_density_threshold_hu", lambda raw, _: v.number(raw, minimum=-200.0, maximum=500.0, inclusive_min=True,
                                                                  what="a number of HU in -200..500")),
    _Setting("bone_density_source", lambda raw, _: v.text(raw, "the source of the bone-density threshold")),
    _Setting("match_patients_without_issuer", lambda raw, _: v.boolean(raw)),
    _Setting("lesion_thresholds", lambda raw, base: v.lesion_thresholds(raw, base), empty_means_default=True),
    _Setting("dask_scheduler", lambda raw, _: v.dask_scheduler(raw)),
    _Setting("workers", lambda raw, _: v.integer(raw, 1, 64, "a number of workers (1-64)")),
    _Setting("retry_max_s", _positive("a number of seconds above 0")),
    _Setting("tls_cert", _existing_file, empty_means_default=True),
    _Setting("tls_key", _existing_file, empty_means_default=True),
    _Setting("tls_ca", _existing_file, empty_means_default=True),
    _Setting("tls_outgoing", lambda raw, _: v.boolean(raw), empty_means_default=True),
    _Setting("max_associations", lambda raw, _: v.integer(raw, 1, 1024, "a number of associations (1-1024)")),
    _Setting("max_peer_connections", lambda raw, _: v.integer(raw, 1, 4096, "a number of connections (1-4096)")),
    _Setting("max_pending", lambda raw, _: v.integer(raw, 1, 4096, "a number of connections (1-4096)")),
    _Setting("associate_timeout", _positive("a number of seconds above 0")),
    _Setting("called_aes", lambda raw, _: tuple(a if a == "*" else v.ae_title(a) for a in v.each(raw, str.strip))),
    _Setting("http_port", lambda raw, _: v.integer(raw, 0, 65535, "a port number (1-65535), or 0 for off")),
    _Setting("http_host", lambda raw, _: v.text(raw, "a host name or address")),
    _Setting("http_token", lambda raw, _: _secret(raw, "a token of 16 or more characters", 16),
             empty_means_default=True),
    _Setting("http_basic_auth", lambda raw, _: _basic_auth(raw), empty_means_default=True),
    _Setting("web_show_patient", lambda raw, _: v.boolean(raw)),
    _Setting("min_free_mb", lambda raw, _: v.number(raw, minimum=0.0, inclusive_min=True,
                                                    what="a number of megabytes (0 or more)")),
    _Setting("min_free_percent", lambda raw, _: v.number(raw, minimum=0.0, maximum=99.0, inclusive_min=True,
                                                         what="a percentage in [0, 99]")),
    _Setting("retention_days", lambda raw, _: v.number(raw, minimum=0.0, inclusive_min=True,
                                                       what="a number of days (0: keep)")),
    _Setting("output_retention_days", lambda raw, _: v.number(raw, minimum=0.0, inclusive_min=True,
                                                              what="a number of days (0: keep)")),
    _Setting("emergency_clean", lambda raw, _: v.boolean(raw)),
    _Setting("webhooks", lambda raw, _: tuple(dict.fromkeys(v.each(raw, _webhook_url)))),
    _Setting("stow_max_mb", _positive("a number of megabytes above 0")),
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _secret(raw, what: str, minimum: int) -> str:
    value = v.text(raw, what)
    if len(value) < minimum:
        raise Invalid(f"a {len(value)}-character value is not {what}")
    return value


def _webhook_url(raw) -> str:
    value = v.text(raw, "an http:// or https:// URL")
    if not re.match(r"https?://[^/\s]+", value):
        raise Invalid(f"{value!r} is not an http:// or https:// URL")
    return value


def _basic_auth(raw) -> str:
    value = v.text(raw, "USER:PASSWORD")
    user, _, password = value.partition(":")
    if not user or len(password) < 8:
        raise Invalid("the value is not USER:PASSWORD with a password of 8 or more characters")
    return value
_BY_NAME = {s.name: s for s in SETTINGS}


def load_config(path: Path | None, environ: Mapping[str, str]) -> NodeConfig:
    """Read the file (``path``, else ``$SPINE_NODE_CONFIG``, else none), apply the variables, check everything.

    Raises ``ConfigError`` with one line per mistake; returns a ``NodeConfig`` otherwise.
    """
    mistakes: list[str] = []
    warnings: list[str] = []
    if path is None and environ.get(CONFIG_VARIABLE, "").strip():
        path = Path(environ[CONFIG_VARIABLE].strip())
    file_values = _read_file(path, mistakes) if path is not None else {}
    _check_variable_names(environ, mistakes, warnings)
    values: dict[str, object] = {}
    for setting in SETTINGS:
        raw, where, base = _raw_value(setting, path, file_values, environ)
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw, base)
        except Invalid as exc:
            mistakes.append(f"{where}: {exc}")
    _check_together(values, mistakes, warnings)
    if mistakes:
        raise ConfigError(mistakes)
    data_dir = values.setdefault("data_dir", Path.cwd() / DEFAULT_DATA_DIR)
    values.setdefault("database_url", f"sqlite:///{data_dir / DATABASE_FILE}")
    if environ.get(MODELS_DIR_VARIABLE, "").strip():
        values["models_dir"] = Path(os.path.abspath(Path(environ[MODELS_DIR_VARIABLE].strip()).expanduser()))
    values["peers"] = MappingProxyType(dict(values.get("peers", {})))
    _resolve_destinations(values)
    return NodeConfig(**values, source=path, warnings=tuple(warnings))


def _resolve_destinations(values: dict) -> None:
    """Destinations as addresses (``destinations``) and their profiles, what they do not name taken from the
    node-wide outputs, seg_type, seg_all_frames and notices (``destination_profiles``)."""
    default = OutputProfile(values.get("outputs", DEFAULT_OUTPUTS), values.get("seg_type", DEFAULT_SEG_TYPE),
                            values.get("seg_all_frames", DEFAULT_SEG_ALL_FRAMES), values.get("notices", True))
    entries = values.pop("destinations", ())
    values["destinations"] = tuple(entry.address for entry in entries)
    values["destination_profiles"] = MappingProxyType({str(e.address): e.resolve(default) for e in entries})


def _read_file(path: Path, mistakes: list[str]) -> dict:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        mistakes.append(f"{path}: the configuration file does not exist")
        return {}
    except OSError as exc:
        mistakes.append(f"{path}: cannot read the configuration file ({exc.strerror})")
        return {}
    except tomllib.TOMLDecodeError as exc:
        mistakes.append(f"{path}: not valid TOML ({exc})")
        return {}
    for key in data:
        if key not in _BY_NAME:
            mistakes.append(f"{path}: unknown key {key!r}" + _did_you_mean(key, list(_BY_NAME)))
    return {k: val for k, val in data.items() if k in _BY_NAME}


def _check_variable_names(environ: Mapping[str, str], mistakes: list[str], warnings: list[str]) -> None:
    """A misspelt setting is a mistake; an unknown variable unlike any setting is only worth a warning."""
    known = {s.variable for s in SETTINGS}
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in known and name not in OTHER_VARIABLES:
            hint = _did_you_mean(name[len(PREFIX):], [s.name.upper() for s in SETTINGS])
            hint = hint.replace("mean ", f"mean {PREFIX}")
            (mistakes if hint else warnings).append(f"{name}: not a setting of the node" + hint)


def _raw_value(setting: _Setting, path: Path | None, file_values: dict,
               environ: Mapping[str, str]) -> tuple[object, str, Path]:
    """The value that applies (variable over file), where it came from, and the folder for relative paths."""
    if setting.variable in environ:
        raw = environ[setting.variable]
        if setting.empty_means_default and not raw.strip():
            return None, setting.variable, Path.cwd()
        return raw, setting.variable, Path.cwd()
    if setting.name in file_values:
        raw = file_values[setting.name]
        if setting.empty_means_default and raw == "":
            return None, "", Path.cwd()
        return raw, f"{path}: {setting.name}", path.parent.absolute()
    return None, "", Path.cwd()


def _check_together(values: dict, mistakes: list[str], warnings: list[str]) -> None:
    """Rules that involve more than one setting."""
    data_dir = values.get("data_dir")
    if data_dir is not None and data_dir.exists() and not data_dir.is_dir():
        mistakes.append(f"{_BY_NAME['data_dir'].variable}: {str(data_dir)!r} exists and is not a folder")
    elif data_dir is not None and data_dir.is_dir() and not os.access(data_dir, os.W_OK | os.X_OK):
        mistakes.append(f"{_BY_NAME['data_dir'].variable}: {str(data_dir)!r} is not writable")
    _check_pipeline(values, mistakes)
    _check_web_access(values, mistakes)
    if ("tls_cert" in values) != ("tls_key" in values):
        mistakes.append("SPINE_NODE_TLS_CERT and SPINE_NODE_TLS_KEY go together: give both or neither")
    if "tls_ca" in values and "tls_cert" not in values:
        mistakes.append("SPINE_NODE_TLS_CA needs SPINE_NODE_TLS_CERT and SPINE_NODE_TLS_KEY (the node's own identity)")
    if values.get("destinations"):
        return
    peers = values.get("peers", {})
    allowed = values.get("allowed_aes", ())
    missing = [ae for ae in allowed if ae not in peers]
    if missing:
        mistakes.append(f"SPINE_NODE_PEERS: no host:port for calling AE(s) {', '.join(missing)}; results go back "
                        "to the caller when SPINE_NODE_DESTINATIONS is empty (add AE@host:port to the peers, "
                        "or set destinations)")
    elif not allowed and not peers:
        warnings.append("no SPINE_NODE_DESTINATIONS and no SPINE_NODE_PEERS: results can go back to no one "
                        "and will wait in the outbox")


def _check_web_access(values: dict, mistakes: list[str]) -> None:
    """A dashboard reachable from other machines must ask who is there: a token or basic auth, set explicitly."""
    host = values.get("http_host", "127.0.0.1")
    if values.get("http_port", 8011) and host not in LOOPBACK_HOSTS \
            and not (values.get("http_token") or values.get("http_basic_auth")):
        mistakes.append(f"SPINE_NODE_HTTP_HOST: the dashboard on {host!r} would be open to other machines; set "
                        "SPINE_NODE_HTTP_TOKEN or SPINE_NODE_HTTP_BASIC_AUTH, or keep it on 127.0.0.1")


def _check_pipeline(values: dict, mistakes: list[str]) -> None:
    """The pipeline options checked by their own constructor, so that the node refuses them at start."""
    names = ("model", "device", "step_size", "mirroring", "seg_type", "seg_all_frames", "outputs", "min_slices",
             "lesion_thresholds",
             "bone_density_threshold_hu", "bone_density_source")
    try:
        PipelineOptions(**{name: values[name] for name in names if name in values})
    except PipelineError as exc:
        mistakes.append(f"pipeline options: {exc}")


def models_dir(environ: Mapping[str, str], data_dir: Path | str | None = None) -> Path:
    """The installed-bundles folder for commands that read no configuration file (``models``, ``process``).

    ``SPINE_NODE_MODELS_DIR``, else ``<data_dir>/models`` with ``data_dir`` from the argument,
    ``SPINE_NODE_DATA_DIR`` or the default.
    """
    if environ.get(MODELS_DIR_VARIABLE, "").strip():
        return Path(environ[MODELS_DIR_VARIABLE].strip()).expanduser()
    data = data_dir or environ.get(_BY_NAME["data_dir"].variable, "").strip() or DEFAULT_DATA_DIR
    return default_models_dir(data)


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
