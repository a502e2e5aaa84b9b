"""Retrieve on request: C-FIND then C-MOVE or C-GET, or QIDO-RS then WADO-RS, into the node's own SCP.

The PACS is a small pynetdicom Query/Retrieve SCP (and, for DICOMweb, a small HTTP server)
started by the test on loopback over a folder of synthetic CT files (``support.pacs``); the
node side is the node's real SCP (``start_scp`` with its ``Receiver`` on a fresh store), so
a retrieved instance is in SQL exactly as a pushed one. The real-Orthanc case is ``peer``.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node.cli.main import main
from dicom_node.dimse.retrieve import NodeAddress, NothingFound, Query, RetrieveError, retrieve
from dicom_node.dimse.scp import Receiver, ScpSettings, start_scp
from storage import InstanceFiles, Store, open_database
from support.dimse import LOOPBACK, free_port
from support.pacs import FakeDicomWeb, FakePacs
from support.synthetic_ct import ct_datasets, save, volume

ACCESSION = "ACC-0042"


@pytest.fixture
def study_files(tmp_path) -> list[Path]:
    datasets = ct_datasets(volume(slices=5), name="retrieve")
    for ds in datasets:
        ds.AccessionNumber = ACCESSION
    return save(datasets, tmp_path / "pacs")


@pytest.fixture
def node_scp(tmp_path):
    """The node's own SCP and store (no model: what matters is that retrieved instances are stored as pushed)."""
    store = Store(open_database(f"sqlite:///{tmp_path / 'node.db'}"))
    receiver = Receiver(store, InstanceFiles(tmp_path / "data"))
    port = free_port()
    server = start_scp(ScpSettings("SPINENODE", LOOPBACK, port), receiver)
    yield store, NodeAddress("SPINENODE", LOOPBACK, port)
    server.shutdown()
    receiver.close()


@pytest.fixture
def pacs(study_files, node_scp):
    _, node = node_scp
    pacs = FakePacs(study_files, {"SPINENODE": (node.host, node.port)})
    yield pacs
    pacs.stop()


def _stored(store: Store, files: list[Path]) -> dict[str, str | None]:
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    return {i.sop_instance_uid: i.calling_ae for i in store.series_instances(series)}


def test_retrieve_by_accession_with_c_move_stores_the_study_in_the_node_as_if_pushed(pacs, node_scp, study_files):
    store, node = node_scp
    result = retrieve(pacs.peer, Query(accession=ACCESSION), node, "SPINENODE", "move")
    assert result.instances == len(study_files) and result.failed == 0
    stored = _stored(store, study_files)
    assert len(stored) == len(study_files) and set(stored.values()) == {"PACS"}
    assert store.receiving_series()[0].instance_count == len(study_files)


def test_retrieve_with_c_get_forwards_the_instances_to_the_node_as_the_pacs(pacs, node_scp, study_files):
    store, node = node_scp
    uid = str(pydicom.dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    result = retrieve(pacs.peer, Query(study_uid=uid), node, "SPINENODE", "get")
    assert result.instances == len(study_files)
    assert set(_stored(store, study_files).values()) == {"PACS"}  # results go back to the PACS, as if it pushed


def test_retrieve_through_qido_and_wado_rs(study_files, node_scp):
    store, node = node_scp
    web = FakeDicomWeb(study_files)
    try:
        result = retrieve(web.url, Query(accession=ACCESSION), node, "SPINENODE")
    finally:
        web.stop()
    assert result.instances == len(study_files)
    assert set(_stored(store, study_files).values()) == {"SPINENODE"}


def test_a_c_find_that_matches_nothing_is_a_clear_message_and_exit_1(pacs, node_scp, capsys, monkeypatch, tmp_path):
    _, node = node_scp
    with pytest.raises(NothingFound, match="no study matches accession number NOPE"):
        retrieve(pacs.peer, Query(accession="NOPE"), node, "SPINENODE")
    for name, value in {"SPINE_NODE_DATA_DIR": str(tmp_path / "cli"), "SPINE_NODE_PORT": str(node.port),
                        "SPINE_NODE_HOST": LOOPBACK, "SPINE_NODE_DESTINATIONS": "PACS@127.0.0.1:104"}.items():
        monkeypatch.setenv(name, value)
    assert main(["retrieve", "--from", str(pacs.peer), "--accession", "NOPE"]) == 1
    assert "no study matches accession number NOPE" in capsys.readouterr().err


def test_a_c_move_the_pacs_refuses_shows_its_status(study_files, node_scp):
    _, node = node_scp
    pacs = FakePacs(study_files, known={})  # does not know SPINENODE
    try:
        with pytest.raises(RetrieveError, match=r"refused the C-MOVE .* status 0xA801"):
            retrieve(pacs.peer, Query(accession=ACCESSION), node, "SPINENODE", "move")
    finally:
        pacs.stop()


def test_a_query_needs_exactly_one_key_and_a_valid_date_range():
    from dicom_node.errors import NodeError

    with pytest.raises(NodeError, match="exactly one"):
        Query()
    with pytest.raises(NodeError, match="exactly one"):
        Query(accession="A", study_uid="1.2")
    with pytest.raises(NodeError, match="is not YYYYMMDD"):
        Query(patient_id="P", date_range="2020")
    assert Query(patient_id="P", date_range="20200101-").qido_params() == {"PatientID": "P", "StudyDate": "20200101-"}
