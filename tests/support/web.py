"""The dashboard on a real uvicorn server over a store the test fills itself, for the ``test_web_*`` tests.

``seed_store`` writes a small but complete story with the ``Store`` API the node uses: one
series received from ORTHANC (real instance files carrying a patient name and ID, to prove
the pages do not show them), its job done with stage timings, an output whose delivery
failed once, a second series still receiving, and one refused instance. ``web_server``
serves ``dicom_node.web`` for it on a free loopback port and stops it afterwards.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from storage import Store, open_database

from dicom_node.config.settings import NodeConfig, load_config
from dicom_node.runtime.disk import DiskGuard
from dicom_node.web.app import build_app
from dicom_node.web.context import WebContext
from dicom_node.web.server import WebServer
from support.dimse import LOOPBACK
from support.synthetic_ct import ct_datasets, save, volume

DESTINATION = "PACS@127.0.0.1:4242"
PATIENT_NAME, PATIENT_ID = "Test^Series", "TEST-SERIES"  # what support.synthetic_ct writes
TIMINGS = {"load": 0.42, "preprocess": 1.3, "network": 12.5, "postprocess": 0.8, "seg": 0.6, "sr": 0.2,
           "write": 0.1, "analyse_wall": 15.1}


@dataclass
class Seeded:
    store: Store
    series_key: str
    series_uid: str
    job_id: int
    delivery_id: int
    receiving_key: str


def node_config(data_dir: Path, **variables: str) -> NodeConfig:
    return load_config(None, {"SPINE_NODE_DATA_DIR": str(data_dir), "SPINE_NODE_DESTINATIONS": DESTINATION,
                              "SPINE_NODE_HTTP_PORT": "0", **variables})


def _record(store: Store, paths: list[Path], datasets) -> None:
    for path, ds in zip(paths, datasets):
        store.record_instance(sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                              series_key=ds.SeriesInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                              study_instance_uid=ds.StudyInstanceUID, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                              calling_ae="ORTHANC", path=path, size=path.stat().st_size, modality="CT")


def seed_store(config: NodeConfig) -> Seeded:
    """Fill a fresh database with one finished series (job done, a failed delivery) and one still receiving."""
    store = Store(open_database(config.database_url))
    done = ct_datasets(volume(slices=4), name="done")
    paths = save(done, config.data_dir / "instances" / "done")
    _record(store, paths, done)
    key = str(done[0].SeriesInstanceUID)
    job = store.create_job(key, "association released")
    store.claim_next_job("test-worker")
    store.finish_job(job.id, state="done", timings=TIMINGS)
    seg = config.data_dir / "outputs" / str(job.id) / "seg.dcm"
    seg.parent.mkdir(parents=True, exist_ok=True)
    seg.write_bytes(b"seg")
    store.record_output(job.id, kind="seg", sop_instance_uid="1.2.826.0.1.3680043.10.1.1",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", series_instance_uid="1.2.826.0.1.3680043.10.1.2",
                        path=seg, destinations=[DESTINATION])
    delivery = store.pending_deliveries()[0]
    store.mark_delivery_failed(delivery.id, "cannot associate with PACS@127.0.0.1:4242: connection refused", 3600)
    receiving = ct_datasets(volume(slices=2), name="receiving")
    _record(store, save(receiving, config.data_dir / "instances" / "receiving"), receiving)
    store.record_rejected_instance(calling_ae="ORTHANC", reason="0xA900 SOP class differs from the request",
                                   sop_instance_uid="1.2.3.4")
    return Seeded(store, key, key, job.id, delivery.id, str(receiving[0].SeriesInstanceUID))


@contextlib.contextmanager
def web_server(config: NodeConfig, store: Store, guard: DiskGuard | None = None):
    """``dicom_node.web`` for ``store`` on a free loopback port; yields the ``WebServer`` (``.url``)."""
    context = WebContext(store=store, config=config, guard=guard or DiskGuard.of(config))
    server = WebServer(build_app(context), LOOPBACK, 0).start()
    try:
        yield server
    finally:
        server.stop()
