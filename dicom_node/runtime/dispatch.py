"""Jobs to workers: claim a queued job, load its series, have a worker analyse it, write and queue the outputs.

The worker task is pure compute, ``pipelines.process.analyse(hu, geometry, options)``;
the node keeps every file and DICOM step (``load_series`` before, ``build_outputs`` and
the outbox after). Two kinds of executor run that task:

* embedded (the default): a ``ProcessPoolExecutor`` of spawned processes on this machine.
  No broker, no ports, nothing to configure; the model stays loaded in each worker process
  between jobs; a worker that dies (out of memory, a crash in native code) fails its job
  with a reason and the pool is rebuilt, and the node's receiving threads never compete
  with inference for the GIL. An in-process Dask LocalCluster would do the same with a
  scheduler, a nanny per worker and several TCP ports more, for no gain on one machine.
* Dask (``SPINE_NODE_DASK_SCHEDULER``): ``distributed.Client(address).submit``; when the
  device asks for CUDA, the task needs the worker resource ``GPU=1`` so that it only lands
  on workers started with ``--resources GPU=1``.

Outcomes: 'done' (outputs recorded, one delivery per destination), 'rejected' (the
pipeline refused the series: ``SeriesRejected``'s code and reason; or the series holds no
processable CT image), 'failed' (anything else, with the reason), 'superseded' (an
instance re-opened the series while the job ran: its outputs are not recorded for
delivery, ``Store.record_output(series_version=...)``). A job interrupted by the node
stopping is left 'running' and is queued again at the next start.

Each output goes only to the destinations whose profile takes it (``runtime.routing``); a
job that ends 'rejected' or 'failed' queues a "not processed" SR (``pipelines.outputs.notice``)
for the destinations that take notices.

Jobs never stay stuck (D6): a job whose end cannot be recorded (the database away, the
disk full) keeps its outcome in memory and ``run_once`` records it as soon as storage
answers again, without a restart; and a watchdog in ``run_once`` puts back in the queue
any job this dispatcher claimed that SQL still shows 'running' while no thread of this
process runs it.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError, Future, ProcessPoolExecutor

from pydicom import dcmread
from pydicom.dataset import Dataset

from pipelines.errors import PipelineError, SeriesRejected
from pipelines.options import PipelineOptions
from pipelines.outputs.notice import build_notice, wants_notice
from pipelines.process import analyse, load_segmenter, software_versions
from pipelines.run import Outcome, add_write_time, encode, image_groups, run_series
from storage import InstanceFiles, JobRow, StateError, Store, StorageError, SupersededError
from storage.priors import prior_summary

from dicom_node.runtime.routing import NOTICE_KIND, ProfileOf, everything, targets

log = logging.getLogger(__name__)


class JobInterrupted(Exception):
    """The node is stopping: the job stays 'running' and is resumed at the next start."""


def load_model(options: PipelineOptions) -> None:
    """Worker-side warm-up: load (and cache in this process) the model ``analyse`` will use."""
    load_segmenter(options)


# --- executors -----------------------------------------------------------------------------------------


class LocalExecutor:
    """The embedded worker pool: ``workers`` spawned processes, rebuilt if one dies."""

    name = "embedded"

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(os.getpid(),))

    def submit(self, hu, geometry, options: PipelineOptions) -> Future:
        with self._lock:
            return self._pool.submit(analyse, hu, geometry, options)

    def worker_of(self, future: Future) -> str:
        return f"embedded@{socket.gethostname()}"

    def warm_up(self, options: PipelineOptions) -> None:
        """Load the model in each worker now, so that the first job does not wait for it (fire and forget)."""
        with self._lock:
            for _ in range(self.workers):
                self._pool.submit(load_model, options)

    def recover(self) -> None:
        """Replace a broken pool (a worker process died) with a fresh one."""
        with self._lock:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def close(self) -> None:
        with self._lock:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.kill()  # a worker in the middle of a job: its job is resumed at the next start


PARENT_WATCH_S = 0.5  # how often a worker checks that the node that started it is alive


def init_worker(node_pid: int) -> None:
    """Worker initializer: leave Ctrl-C to the node, and die with the node however it dies (D3).

    Workers leave Ctrl-C to the node, which stops them (no KeyboardInterrupt traceback
    from each). A node killed with SIGKILL cannot stop them, so each worker runs a watchdog
    thread that ends the worker (SIGKILL to itself) once its parent is no longer
    ``node_pid`` (the orphan is re-parented). ``prctl(PR_SET_PDEATHSIG)`` is not used: it
    fires when the *thread* that spawned the worker ends, and a pool rebuilt after a
    worker's death is spawned from a job's thread, which ends with the job. With the
    workers gone, multiprocessing's resource tracker sees its pipe close and ends too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != node_pid:  # the node died before this worker got here
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(node_pid,), name="watch-node", daemon=True).start()


def _watch_parent(node_pid: int) -> None:
    while os.getppid() == node_pid:
        time.sleep(PARENT_WATCH_S)
    os.kill(os.getpid(), signal.SIGKILL)


class DaskExecutor:
    """Workers of a Dask cluster reached through its scheduler's address."""

    name = "dask"

    def __init__(self, address: str, timeout_s: float = 30.0):
        from distributed import Client

        self.client = Client(address, timeout=timeout_s, set_as_default=False)

    def submit(self, hu, geometry, options: PipelineOptions):
        """The volume goes to a worker as data (scatter), not inside the task graph through the scheduler."""
        resources = {"GPU": 1} if str(options.device).startswith("cuda") else None
        volume = self.client.scatter(hu, hash=False)
        return self.client.submit(analyse, volume, geometry, options, resources=resources, pure=False)

    def worker_of(self, future) -> str:
        try:
            holders = self.client.who_has([future]).get(future.key, ())
        except Exception:  # the scheduler's answer is provenance only, never a reason to fail the job
            holders = ()
        return "dask:" + (",".join(holders) or "unknown worker")

    def recover(self) -> None:
        pass  # the scheduler reassigns tasks of lost workers itself

    def close(self) -> None:
        self.client.close()


# --- running one job -----------------------------------------------------------------------------------


class Dispatcher:
    """Claims queued jobs and runs up to ``parallel`` of them at once (each in its own thread)."""

    def __init__(self, store: Store, files: InstanceFiles, executor, options: PipelineOptions,
                 destinations_for: Callable[[JobRow], list[str]], node_name: str, parallel: int = 1,
                 on_outputs: Callable[[], None] | None = None, on_finished: Callable[[], None] | None = None,
                 profile_of: ProfileOf | None = None, disclaimer: str | None = None):
        """``profile_of``: each destination's output profile (``NodeConfig.profile_of``); without it every
        destination gets every object and no notice. ``disclaimer``: the configured model's "not for
        clinical use" line, for the "not processed" notices (None: not a demonstration model)."""
        self.store = store
        self.files = files
        self.executor = executor
        self.options = options
        self.destinations_for = destinations_for
        self.profile_of = profile_of or everything(options.outputs, options.seg_type, options.seg_all_frames)
        self.disclaimer = disclaimer
        self.node_name = node_name
        self.parallel = parallel
        self.on_outputs = on_outputs
        self.on_finished = on_finished  # a slot is free: the node looks for the next job at once
        self.stopping = threading.Event()
        self._running: dict[int, threading.Thread] = {}
        self._claimed: set[int] = set()                 # jobs this dispatcher claimed and has not ended in SQL
        self._unrecorded: dict[int, tuple] = {}         # job id -> (state, timings, summary, error) not yet in SQL
        self._lock = threading.Lock()
        self._next_watch = 0.0

    def run_once(self) -> list[int]:
        """Record ends that could not be recorded, watch for orphaned jobs, then claim jobs for the free slots."""
        self.record_unrecorded_ends()
        self.watch()
        started = []
        while not self.stopping.is_set() and self.busy() < self.parallel:
            job = self.store.claim_next_job(self.node_name)
            if job is None:
                break
            thread = threading.Thread(target=self._run_job, args=(job,), name=f"job-{job.id}", daemon=True)
            with self._lock:
                self._running[job.id] = thread
                self._claimed.add(job.id)
            thread.start()
            started.append(job.id)
        return started

    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def record_unrecorded_ends(self) -> int:
        """Record the ends of jobs that storage could not take when they ended; return how many were recorded."""
        with self._lock:
            pending = dict(self._unrecorded)
        recorded = 0
        for job_id, (state, timings, summary, error) in pending.items():
            try:
                self.store.finish_job(job_id, state=state, timings=timings, error=error, summary=summary)
            except StateError:
                pass  # already ended (an earlier attempt did commit): nothing left to record
            except StorageError as exc:
                log.debug("job %d: its end still cannot be recorded: %s", job_id, exc)
                continue
            with self._lock:
                self._unrecorded.pop(job_id, None)
                self._claimed.discard(job_id)
            recorded += 1
            log.info("job %d: its end (%s) recorded now that storage answers again", job_id, state)
        return recorded

    def watch(self, every_s: float = 10.0) -> list[int]:
        """Requeue jobs this dispatcher claimed that SQL shows 'running' but no thread here runs; return their ids."""
        now = time.monotonic()
        if now < self._next_watch:
            return []
        self._next_watch = now + every_s
        with self._lock:
            orphans = self._claimed - set(self._running) - set(self._unrecorded)
        requeued = []
        for job_id in sorted(orphans):
            try:
                state = self.store.get_job(job_id).state
                if state == "running" and self.store.requeue_job(
                        job_id, "watchdog: running, but no worker thread of this node runs it; queued again"):
                    log.warning("job %d was running with no live worker: queued again", job_id)
                    requeued.append(job_id)
            except StorageError as exc:
                log.debug("watchdog: job %d not checked: %s", job_id, exc)
                continue
            with self._lock:
                self._claimed.discard(job_id)
        return requeued

    def _run_job(self, job: JobRow) -> None:
        try:
            self.run_job(job)
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            if self.on_finished:
                self.on_finished()

    def run_job(self, job: JobRow) -> str:
        """Run one claimed job to its final state; return that state ('' if the node is stopping)."""
        log.info("job %d: series %s version %d", job.id, job.series_key, job.series_version)
        try:
            state, timings, summary, error = self._process(job)
        except JobInterrupted:
            log.info("job %d interrupted by the node stopping; it resumes at the next start", job.id)
            return ""
        except SupersededError as exc:
            state, timings, summary, error = "superseded", None, None, f"outputs not delivered: {exc}"
        except SeriesRejected as exc:
            state, timings, summary, error = "rejected", None, None, f"{exc.code}: {exc}"
        except (PipelineError, StorageError) as exc:
            state, timings, summary, error = "failed", None, None, str(exc)
        except Exception as exc:  # a bug must fail one job with its reason, never the dispatcher
            if self.stopping.is_set():
                return ""
            log.exception("job %d: internal error", job.id)
            state, timings, summary, error = "failed", None, None, f"internal error ({type(exc).__name__}: {exc})"
        if state in ("rejected", "failed"):
            self._notice(job, state, error or "")
        try:
            self.store.finish_job(job.id, state=state, timings=timings, error=error, summary=summary)
        except StorageError as exc:
            with self._lock:
                self._unrecorded[job.id] = (state, timings, summary, error)
            log.error("job %d: could not record its end (%s) now; retried until storage answers: %s",
                      job.id, state, exc)
        else:
            with self._lock:
                self._claimed.discard(job.id)
        log.info("job %d %s%s", job.id, state, f": {error}" if error else "")
        return state

    def _process(self, job: JobRow) -> tuple[str, dict | None, dict | None, str | None]:
        """Run every image series group stored under the job's series (``pipelines.run``) and record each."""
        groups = self._groups(job)
        predecessor = self._predecessor_sr(job)
        outcomes = []
        for index, files in enumerate(groups):
            outcome = run_series(files, self.options, analyser=lambda hu, geometry, _: self._analyse(job, hu, geometry),
                                 predecessor_sr=predecessor, on_loaded=lambda series: self._loaded(job, series),
                                 passthrough=(JobInterrupted, StorageError),
                                 prior_lookup=lambda key, study: prior_summary(self.store, key, study))
            if len(groups) > 1:
                self.store.add_event(job.id, "series-group", f"{files.key}: {outcome.status}"
                                     + (f" ({outcome.reason})" if outcome.reason else ""))
            if outcome.status == "done":
                self._write_outputs(job, outcome, suffix=f"-{index}" if index else "")
            outcomes.append(outcome)
        return _job_result(outcomes)

    def _groups(self, job: JobRow) -> list:
        """The image series groups of the stored instances; none at all is a refusal of the whole series."""
        instances = self.store.series_instances(job.series_key)
        groups = image_groups([i.path for i in instances])
        if not groups:
            classes = sorted({i.sop_class_uid for i in instances})
            raise SeriesRejected("not_ct", job.series_instance_uid,
                                 f"no CT image in the series (SOP classes {', '.join(classes)}): stored, not processed")
        if len(groups) > 1:
            log.warning("job %d: the instances form %d series by their headers; each is processed", job.id, len(groups))
        return sorted(groups, key=lambda g: len(g.paths), reverse=True)

    def _loaded(self, job: JobRow, series) -> None:
        self.store.add_event(job.id, "loaded", f"{len(series.source_images)} source image(s), "
                                               f"{series.hu.shape[0]} slices" +
                             (f"; repairs: {'; '.join(series.repairs)}" if series.repairs else ""))

    def _analyse(self, job: JobRow, hu, geometry):
        """Run the pure-compute task on a worker; wait for it, or stop waiting when the node stops."""
        self.store.add_event(job.id, "submitted", f"to the {self.executor.name} executor")
        future = self.executor.submit(hu, geometry, self.options)
        analysis = self._wait(future)
        self.store.set_job_running(job.id, worker=self.executor.worker_of(future), device=analysis.device,
                                   model_name=analysis.model.name, model_version=analysis.model.version,
                                   model_sha256=analysis.model.sha256, parameters=analysis.parameters,
                                   software=software_versions())
        return analysis

    def _wait(self, future):
        while True:
            if self.stopping.is_set():
                raise JobInterrupted()
            try:
                return future.result(timeout=0.5)
            except (TimeoutError, _DaskTimeout):
                continue
            except (BrokenExecutor, CancelledError) as exc:
                if self.stopping.is_set():
                    raise JobInterrupted() from exc
                self.executor.recover()
                raise PipelineError(f"the worker process died while analysing ({type(exc).__name__})") from exc

    def _predecessor_sr(self, job: JobRow) -> Dataset | None:
        """The SR of the latest earlier 'done' job of this series (a re-opened series references it)."""
        if job.series_version <= 1:
            return None
        for output in self.store.earlier_outputs(job.id, kind="sr"):
            try:
                return dcmread(output.path)
            except (OSError, ValueError) as exc:
                log.warning("job %d: predecessor SR %s unreadable: %s", job.id, output.sop_instance_uid, exc)
        return None

    def _notice(self, job: JobRow, state: str, reason: str) -> None:
        """Queue the "not processed" SR for the destinations that take notices; a notice never fails the job.

        None when no destination wants one, when the series holds only derived objects or the
        node's own (``notice.wants_notice``), or when this job already queued one (it ran again
        after an interruption).
        """
        destinations = self.destinations_for(job)
        wanted = targets(NOTICE_KIND, None, destinations, self.profile_of, (), None)
        if not wanted:
            return
        try:
            if any(o.kind == NOTICE_KIND for o in self.store.job_outputs(job.id)):
                return
            instances = self.store.series_instances(job.series_key)
            header = _first_header(instances)
            if header is None or not wants_notice([i.modality for i in instances], header.get("Manufacturer")):
                return
            ds = build_notice(header, [(i.sop_class_uid, i.sop_instance_uid) for i in instances],
                              job.series_instance_uid, state=state, reason=reason, disclaimer=self.disclaimer)
            path = self.files.write_output(job.id, "notice.dcm", encode(ds))
            self.store.record_output(job.id, kind=NOTICE_KIND, sop_instance_uid=str(ds.SOPInstanceUID),
                                     sop_class_uid=str(ds.SOPClassUID), series_instance_uid=str(ds.SeriesInstanceUID),
                                     path=path, destinations=wanted, series_version=job.series_version)
        except SupersededError:
            return  # the series was re-opened: its next job speaks for it
        except (PipelineError, StorageError, OSError) as exc:
            log.warning("job %d: no 'not processed' notice: %s", job.id, exc)
            self._try_event(job.id, "notice-not-made", str(exc))
            return
        except Exception as exc:  # a bug must not stop the job's end; its message could quote the header: not logged
            log.error("job %d: no 'not processed' notice: internal error (%s)", job.id, type(exc).__name__)
            self._try_event(job.id, "notice-not-made", f"internal error ({type(exc).__name__})")
            return
        if self.on_outputs:
            self.on_outputs()

    def _try_event(self, job_id: int, state: str, detail: str) -> None:
        try:
            self.store.add_event(job_id, state, detail)
        except StorageError as exc:
            log.debug("job %d: event %s not recorded: %s", job_id, state, exc)

    def _write_outputs(self, job: JobRow, outcome: Outcome, suffix: str = "") -> None:
        destinations = self.destinations_for(job)
        if not destinations and not suffix:
            self.store.add_event(job.id, "no-destination",
                                 f"no destination configured and calling AE {job.calling_ae} has no known address; "
                                 "outputs kept on disk")
        t0 = time.perf_counter()
        written = [(kind, ds, self.files.write_output(job.id, _named(name, suffix), encode(ds)))
                   for kind, name, ds in outcome.datasets()]
        add_write_time(outcome, time.perf_counter() - t0)
        name, data = outcome.summary_document()
        self.files.write_output(job.id, _named(name, suffix), data)
        variants = outcome.outputs.variants
        built = {variants[str(ds.SOPInstanceUID)] for kind, ds, _ in written
                 if kind == "seg" and str(ds.SOPInstanceUID) in variants}
        primary = (self.options.seg_type, self.options.seg_all_frames) if outcome.outputs.seg is not None else None
        for kind, ds, path in written:
            uid = str(ds.SOPInstanceUID)
            self.store.record_output(job.id, kind=kind, sop_instance_uid=uid, sop_class_uid=str(ds.SOPClassUID),
                                     series_instance_uid=str(ds.SeriesInstanceUID), path=path,
                                     destinations=targets(kind, variants.get(uid), destinations, self.profile_of,
                                                          built, primary),
                                     series_version=job.series_version)
        if self.on_outputs:
            self.on_outputs()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop claiming; running jobs stop waiting for their worker and stay 'running' for the next start."""
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _first_header(instances: list) -> Dataset | None:
    """The header (no pixels) of the first stored instance that reads; None when none does."""
    for instance in instances:
        try:
            return dcmread(instance.path, stop_before_pixels=True)
        except (OSError, ValueError, EOFError) as exc:
            log.debug("instance %s unreadable for the notice: %s", instance.sop_instance_uid, exc)
    return None


def _named(name: str, suffix: str) -> str:
    """``seg.dcm`` for a job's first series group, ``seg-1.dcm`` for the second, and so on."""
    stem, dot, extension = name.partition(".")
    return f"{stem}{suffix}{dot}{extension}"


def _job_result(outcomes: list[Outcome]) -> tuple[str, dict | None, dict | None, str | None]:
    """The job's state, timings, summary and error from its groups' outcomes (largest group first).

    'done' when any group was processed: the summary is the first processed group's, with
    ``series_groups`` listing every group when there were several; otherwise the largest
    group's refusal or failure.
    """
    done = [o for o in outcomes if o.status == "done"]
    if not done:
        first = outcomes[0]
        if first.status == "rejected":
            return "rejected", None, None, f"{first.code}: {first.reason}"
        return "failed", None, None, first.reason
    summary = done[0].outputs.summary
    if len(outcomes) > 1:
        summary["series_groups"] = [{"key": o.key, "files": len(o.files.paths), "status": o.status,
                                     "code": o.code, "reason": o.reason} for o in outcomes]
    return "done", summary["timings_s"], summary, None


try:  # distributed raises its own TimeoutError subclass on Future.result(timeout)
    from distributed import TimeoutError as _DaskTimeout
except ImportError:  # pragma: no cover - distributed is a dependency; keep the embedded path importable
    class _DaskTimeout(Exception):
        pass
