"""A node in-process for tests about what the node does around the pipeline, and a stub worker task.

``RunningScp`` is the real SCP on a SQLite store and instance files under a folder (a node
without its loops); ``InProcessNode`` adds the real dispatcher. ``stub_analysis`` stands in for
``pipelines.process.analyse`` (one vertebra, L1, wherever the volume is bright), so that a
test of the orchestration does not wait for nnU-Net; ``StubExecutor`` runs it as the
node's executors do. ``test_node_e2e`` and ``test_one_pipeline`` run the real model.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from dicom_node.dimse.scp import Receiver, ScpSettings, start_scp
from dicom_node.runtime.completion import complete_series
from dicom_node.runtime.dispatch import Dispatcher
from pipelines.options import PipelineOptions
from pipelines.process import Analysis, vertebra_findings
from pipelines.records import ModelIdentity
from storage import InstanceFiles, Store, open_database
from support.dimse import LOOPBACK, free_port
from support.synthetic_ct import ct_datasets, volume
from support.waiting import wait_until

STUB_MODEL = ModelIdentity("stub-model", "0.0", "0" * 64)


def stub_analysis(hu: np.ndarray, geometry, options: PipelineOptions) -> Analysis:
    """'Finds' one vertebra (L1) in the brightest 30 % of the volume."""
    labels = np.where(hu > np.percentile(hu, 70), 13, 0).astype(np.uint8)
    findings = vertebra_findings(hu, labels, geometry.spacing, {13: "L1"})
    return Analysis(labels, findings, STUB_MODEL, "cpu", {"network": 0.0}, options.parameters())


class StubExecutor:
    """Runs ``analysis`` (by default ``stub_analysis``) at once, as the node's executors run ``analyse``."""

    name = "stub"

    def __init__(self, analysis=stub_analysis):
        self.analysis = analysis

    def submit(self, hu, geometry, options) -> Future:
        future: Future = Future()
        future.set_result(self.analysis(hu, geometry, options))
        return future

    def worker_of(self, future) -> str:
        return "stub"

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


class RunningScp:
    """The real SCP (its Receiver) as ``SPINENODE`` on a free loopback port, over a SQLite store and instance
    files under ``root`` (``files``: another folder for them); ``settings`` are more ScpSettings fields."""

    def __init__(self, root: Path, files: Path | None = None, on_released=None, **settings):
        self.root = root
        self.store = Store(open_database(f"sqlite:///{root / 'node.db'}"))
        self.files = InstanceFiles(files or root / "data")
        self.receiver = Receiver(self.store, self.files, on_released=on_released)
        self.port = free_port()
        self.server = start_scp(ScpSettings("SPINENODE", LOOPBACK, self.port, **settings), self.receiver)

    def close(self) -> None:
        self.server.shutdown()
        self.receiver.close()
        self.store.db.close()


@dataclass
class InProcessNode:
    """Store + SCP + dispatcher, driven step by step by the test; ``close`` stops the SCP."""

    root: Path
    options: PipelineOptions
    executor: object = field(default_factory=StubExecutor)
    destinations: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.scp = RunningScp(self.root)
        self.store, self.files, self.port = self.scp.store, self.scp.files, self.scp.port
        self.dispatcher = Dispatcher(self.store, self.files, self.executor, self.options,
                                     lambda job: list(self.destinations), "test-node")

    def run_completed_jobs(self, stable_age: float = 30.0) -> list[dict]:
        """One completion pass, then every queued job run to its end; their details."""
        wait_until(lambda: all(s.released_at for s in self.store.receiving_series()), 10, "the release to be recorded")
        created = complete_series(self.store, stable_age)
        while (job := self.store.claim_next_job("test-node")) is not None:
            self.dispatcher.run_job(job)
        return [self.store.job_detail(job_id) for job_id in created]

    def close(self) -> None:
        self.scp.close()


def ct_series(name: str, slices: int, size: int = 16) -> list[pydicom.Dataset]:
    """A small CT series with the Type 2 patient/study attributes present (empty), as scanners write them."""
    datasets = ct_datasets(volume(slices=slices, rows=size, columns=size), name=name)
    for ds in datasets:
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", ""
    return datasets
