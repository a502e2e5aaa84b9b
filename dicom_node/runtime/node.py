"""The running node: the SCP, and three background loops (completion, dispatch, delivery) on one store.

``Node(config).start()`` opens the database (migrating it), completes or removes the
writes a crash interrupted and records instance files whose row was lost (``reconcile``),
queues again the jobs a previous process left running, starts the DICOM SCP and the loops;
``stop()`` stops accepting associations, lets those in progress finish (a few seconds),
stops the loops and the workers. A job whose worker is stopped stays
'running' in SQL and is resumed at the next start, so SIGKILL and SIGTERM lose nothing
that was acknowledged: an instance is answered Success only once it is on disk and in SQL.

``serve(config)`` runs a node until SIGTERM or SIGINT.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pipelines.options import PipelineOptions
from storage import InstanceFiles, Store, StorageError, open_database
from storage.models import utcnow

from dicom_node.runtime.completion import complete_series
from dicom_node.config.settings import NodeConfig
from dicom_node.runtime.delivery import Deliverer
from dicom_node.runtime.disk import DiskGuard, GuardedReceiver
from dicom_node.runtime.dispatch import DaskExecutor, Dispatcher, LocalExecutor
from dicom_node.errors import NodeError
from dicom_node.runtime.reconcile import reconcile_instances
from dicom_node.dimse.scp import Receiver, ScpSettings, make_ssl_context, start_scp
from dicom_node.dimse.scu import client_ssl_context

log = logging.getLogger(__name__)

PATIENT_SECRET_FILE = "patient-key.secret"

LOOP_INTERVAL_S = 1.0      # how often each loop looks for work when nobody wakes it
ASSOCIATION_GRACE_S = 10.0  # how long stop() lets associations in progress finish


class Loop:
    """A daemon thread calling ``step`` every ``interval`` seconds, or at once when woken."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float = LOOP_INTERVAL_S):
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failing_since: float | None = None  # one log line per outage, not a traceback per second
        while not self._stop.is_set():
            self.wake.clear()
            try:
                self.step()
            except StorageError as exc:  # the database or the disk away: said once, and once when it is back
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error("%s loop: storage unavailable, retrying every %.0f s until it answers: %s",
                              self.name, self.interval_s, str(exc).splitlines()[0] if str(exc) else exc)
            except Exception:  # a bug must not end the loop; its traceback once per outage
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.exception("%s loop: step failed; retrying every %.0f s (logged once until it works)",
                                  self.name, self.interval_s)
            else:
                if failing_since is not None:
                    log.info("%s loop: working again after %.0f s", self.name, time.monotonic() - failing_since)
                    failing_since = None
            self.wake.wait(self.interval_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def check_model(options: PipelineOptions) -> None:
    """Refuse to start with a model bundle that is missing or broken (weights are loaded by the workers)."""
    from pipelines.model.bundles import verify_bundle

    name = options.model
    candidate = Path(name)
    roots = options.models_dirs()
    folders = [candidate] if candidate.is_dir() else [root / name for root in roots if (root / name).is_dir()]
    if not folders:
        raise NodeError(f"SPINE_NODE_MODEL: model {name!r} not found "
                        f"(searched {', '.join(str(p) for p in roots)})")
    verify_bundle(folders[0], load_weights=False)


def model_disclaimer(options: PipelineOptions) -> str | None:
    """The "not for clinical use" line for the notices when the configured model's manifest says it is not for
    clinical use (the demo model); None for any other model, or one whose manifest cannot be read here."""
    from pipelines.errors import PipelineError
    from pipelines.model.bundles import read_manifest
    from pipelines.outputs.secondary_capture import NOT_CLINICAL

    candidate = Path(options.model)
    folders = [candidate] if candidate.is_dir() else [root / options.model for root in options.models_dirs()]
    for folder in folders:
        if folder.is_dir():
            try:
                intended_use = str(read_manifest(folder).get("intended_use", ""))
            except PipelineError:
                return None
            return NOT_CLINICAL if "not for clinical use" in intended_use.lower() else None
    return None


def patient_secret(data_dir: Path) -> str:
    """The node's secret for pseudonymous patient keys (hex), made once in the data folder, readable by the node only.

    Prior studies are matched by an HMAC of PatientID and issuer under it, so that SQL and
    the summaries never hold the identifier; a node given another secret matches no prior.
    """
    path = data_dir / PATIENT_SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
    return path.read_text().strip()


def check_device(device: str) -> None:
    """Refuse to start on a device this machine does not have (every job would fail on it)."""
    from pipelines.errors import PipelineError
    from pipelines.model.segmenter import pick_device

    try:
        pick_device(device)
    except PipelineError as exc:
        raise NodeError(f"SPINE_NODE_DEVICE: {exc}") from None


def lock_data_dir(data_dir: Path):
    """Hold an exclusive lock on ``data_dir/node.lock`` for the life of this process.

    Two nodes on one data folder would both resume the other's running jobs at start and
    write the same files; the second one is refused instead. The OS drops the lock when
    the process ends, however it ends.
    """
    handle = open(data_dir / "node.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise NodeError(f"another spine-node is running on the data folder {data_dir} "
                        "(node.lock is held); stop it or give this one its own SPINE_NODE_DATA_DIR") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Node:
    """One node process: SCP + completion + dispatch + delivery on the configured store."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.name = f"{config.ae_title}@{socket.gethostname()}:{os.getpid()}"
        self.store: Store | None = None
        self._lock = None  # the data folder's lock file, held while the node runs
        self.files = InstanceFiles(config.data_dir)
        self.server = None
        self.executor = None
        self.dispatcher: Dispatcher | None = None
        self.loops: list[Loop] = []
        self.receiver: Receiver | None = None

    def start(self) -> "Node":
        config = self.config
        for line in config.describe():
            log.info("%s", line)
        for warning in config.warnings:
            log.warning("configuration: %s", warning)
        if not config.dask_scheduler:
            check_model(config.pipeline_options())
            check_device(config.device)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_data_dir(config.data_dir)  # before anything touches the jobs of this folder
        self.store = Store(open_database(config.database_url))
        reconcile_instances(self.store, self.files)  # interrupted writes, files whose row a power cut took
        resumed = self.store.requeue_interrupted_jobs()
        if resumed:
            log.info("resuming %d job(s) interrupted when the node stopped: %s", len(resumed), resumed)
        if config.dask_scheduler:
            self.executor = DaskExecutor(config.dask_scheduler)
        else:
            self.executor = LocalExecutor(config.workers)
            self.executor.warm_up(config.pipeline_options())
        started_at = utcnow()  # the quiet clock starts now: downtime is not quiet time (completion, D4)
        completion = Loop("completion", lambda: self._completion_step(started_at))
        dispatch = Loop("dispatch", self._dispatch_step)
        delivery_loop = Loop("delivery", self._deliverer().run_once)
        options = replace(config.pipeline_options(), patient_key_secret=patient_secret(config.data_dir))
        self.dispatcher = Dispatcher(self.store, self.files, self.executor, options,
                                     lambda job: config.destinations_for(job.calling_ae), self.name,
                                     parallel=self._parallel(), on_outputs=delivery_loop.wake.set,
                                     on_finished=dispatch.wake.set, profile_of=config.profile_of,
                                     disclaimer=model_disclaimer(options))
        self.loops = [completion, dispatch, delivery_loop]
        self.receiver = receiver = GuardedReceiver(DiskGuard.of(config), self.store, self.files,  # watermark first
                                                   on_released=lambda keys: completion.wake.set())
        ssl_context = (make_ssl_context(str(config.tls_cert), str(config.tls_key),
                                        str(config.tls_ca) if config.tls_ca else None)
                       if config.tls_enabled else None)
        try:
            self.server = start_scp(scp_settings(config, ssl_context), receiver)
        except OSError as exc:
            raise NodeError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc
        for loop in self.loops:
            loop.start()
        self._completion_wakes_dispatch(completion, dispatch)
        self.operations_parts = _start_operations(self)  # dashboard and retention (dicom_node.web, runtime.retention)
        log.info("node %s started", self.name)
        return self

    def _completion_step(self, started_at) -> list[int]:
        """Write the SCP's pending incomplete marks, then complete series (holding those the SQL lacks yet)."""
        marks = {}
        if self.receiver is not None:
            self.receiver.flush_marks()
            marks = self.receiver.unwritten_marks()
        return complete_series(self.store, self.config.stable_age, since=started_at, extra_marks=marks)

    def _deliverer(self) -> Deliverer:
        """The outbox, with the client side of the node's TLS settings (D10)."""
        config = self.config
        context = None
        if config.outgoing_tls or any(getattr(d, "tls", False) for d in config.destinations):
            context = client_ssl_context(str(config.tls_cert) if config.tls_cert else None,
                                         str(config.tls_key) if config.tls_key else None,
                                         str(config.tls_ca) if config.tls_ca else None)
        return Deliverer(self.store, config.ae_title, config.retry_max_s, ssl_context=context,
                         tls_for_all=config.outgoing_tls, verify=str(config.tls_ca) if config.tls_ca else True)

    def _parallel(self) -> int:
        """How many jobs run at once: the embedded workers, or the Dask cluster's worker threads."""
        if isinstance(self.executor, DaskExecutor):
            try:
                return max(1, sum(self.executor.client.nthreads().values()), self.config.workers)
            except Exception:  # the cluster's size is a hint; the configured number is a safe fallback
                return self.config.workers
        return self.config.workers

    def _dispatch_step(self) -> None:
        self.dispatcher.run_once()

    @staticmethod
    def _completion_wakes_dispatch(completion: Loop, dispatch: Loop) -> None:
        """A completion step that created jobs wakes the dispatcher at once."""
        step = completion.step

        def step_and_wake() -> None:
            if step():
                dispatch.wake.set()

        completion.step = step_and_wake

    def stop(self) -> None:
        """Stop accepting, let associations in progress finish, stop loops and workers."""
        log.info("node %s stopping", self.name)
        for part in getattr(self, "operations_parts", []):
            part.stop()
        if self.server is not None:
            self.server.shutdown()
            deadline = time.monotonic() + ASSOCIATION_GRACE_S
            while self.server.ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.1)
            for assoc in self.server.ae.active_associations:
                assoc.abort()
        if self.receiver is not None:
            self.receiver.close()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        for loop in self.loops:
            loop.stop()
        if self.executor is not None:
            self.executor.close()
        if self.store is not None:
            self.store.db.close()
        if self._lock is not None:
            self._lock.close()  # releases the data folder's lock
            self._lock = None
        log.info("node %s stopped", self.name)


def _start_operations(node: "Node") -> list:
    """Start the dashboard server, the retention and notification loops; what is started, stopped first in ``stop``."""
    from dicom_node.runtime.notify import start_notifier
    from dicom_node.runtime.retention import start_retention
    from dicom_node.web.server import start_web

    return [part for part in (start_web(node), start_retention(node), start_notifier(node)) if part is not None]


def scp_settings(config: NodeConfig, ssl_context=None) -> ScpSettings:
    """The SCP's settings (admission limits included) from the node's configuration."""
    return ScpSettings(config.ae_title, config.host, config.port, tuple(config.allowed_aes), ssl_context,
                       max_associations=config.max_associations, max_peer_connections=config.max_peer_connections,
                       max_pending=config.max_pending, associate_timeout_s=config.associate_timeout,
                       called_aes=tuple(config.called_aes))


def serve(config: NodeConfig) -> int:
    """Run a node until SIGTERM or SIGINT; return the exit status."""
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    node = Node(config)
    try:
        node.start()
        stop.wait()
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
