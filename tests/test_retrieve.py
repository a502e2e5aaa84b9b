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


# --- a real Orthanc and a real node -----------------------------------------------------------------------

def _accessioned_copies(files: list[Path], folder: Path, accession: str, study_uid: str, series_uid: str) -> list[Path]:
    """Copies of ``files`` as one new study/series with ``accession`` (and new SOP Instance UIDs)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.AccessionNumber, ds.StudyInstanceUID, ds.SeriesInstanceUID = accession, study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(n)])
        out.append(folder / path.name)
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def _results_in_orthanc(orthanc, study_uid: str) -> set[str] | None:
    from support.orthanc import json_value, qido

    modalities = {json_value(s, "00080060") for s in qido(orthanc.dicomweb_url, f"studies/{study_uid}/series")}
    return modalities if {"SEG", "SR"} <= modalities else None


@pytest.mark.slow
@pytest.mark.peer
def test_retrieve_from_a_real_orthanc_by_accession_with_c_move_and_dicomweb_results_back_in_orthanc(
        orthanc_factory, tmp_path):
    import subprocess

    import requests
    from pydicom.uid import generate_uid

    from support.node_process import NodeProcess
    from support.orthanc import local_orthanc
    from support.paths import SPINE_NODE
    from support.series_files import phantom_series
    from support.waiting import wait_until

    node_port = free_port()
    orthanc = orthanc_factory(stable_age=2, node=local_orthanc.Modality("SPINENODE", LOOPBACK, node_port),
                              routing={"Modalities": ["MR"]})  # no automatic routing: the node must ask
    phantom = phantom_series(tmp_path / "phantom")
    studies = {}
    for name in ("move", "dicomweb"):
        study, series = generate_uid(), generate_uid()
        for path in _accessioned_copies(phantom, tmp_path / name, f"ACC-{name.upper()}", study, series):
            assert requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60).status_code == 200
        studies[name] = study
    node = NodeProcess(tmp_path / "data", {"SPINE_NODE_DESTINATIONS": f"ORTHANC@{LOOPBACK}:{orthanc.dicom_port}",
                                           "SPINE_NODE_STABLE_AGE": "5", "SPINE_NODE_RETRY_MAX_S": "2",
                                           "SPINE_NODE_HTTP_PORT": "0"}, port=node_port)
    try:
        node.start()
        for name, source in (("move", f"ORTHANC@{LOOPBACK}:{orthanc.dicom_port}"),
                             ("dicomweb", f"dicomweb:{orthanc.dicomweb_url}")):
            done = subprocess.run([str(SPINE_NODE), "retrieve", "--from", source, "--accession", f"ACC-{name.upper()}"],
                                  env=node.env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr + done.stdout
            assert f"{len(phantom)} instance(s) retrieved" in done.stdout
            found = wait_until(lambda: _results_in_orthanc(orthanc, studies[name]), 900,
                               f"the SEG and SR of the {name} retrieve back in Orthanc")
            assert {"CT", "SEG", "SR"} <= found
        nothing = subprocess.run([str(SPINE_NODE), "retrieve", "--from", f"ORTHANC@{LOOPBACK}:{orthanc.dicom_port}",
                                  "--accession", "NO-SUCH"], env=node.env, capture_output=True, text=True, timeout=120)
        assert nothing.returncode == 1 and "no study matches accession number NO-SUCH" in nothing.stderr
    finally:
        node.stop()
