"""Orthanc's routing to spine-node, with real peers: Orthanc 1.10 (Debian) runs the Lua script
orthanc/route_to_spine_node.lua, and a DCMTK storescp stands in for the node (AE SPINENODE).

What is pinned: a stable CT series that passes the rules reaches the node, whole and unchanged;
a series that fails a rule (too few slices, MR, the node's own SEG/SR, a series the node sent,
excluded body part or description, slices too thick) is not routed and Orthanc's log says why
by series UID; Orthanc refuses the real JPEG 2000 series whose Study/Series/SOP Instance UIDs
are empty, and routes it unchanged once the UIDs are filled in; the DICOMweb plugin stores
(STOW-RS) and finds (QIDO-RS) what the node will deliver.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pydicom
import pytest
import requests
from orthanc_api_client import OrthancApiClient
from orthanc_api_client.exceptions import HttpError
from pydicom.uid import JPEG2000Lossless, MRImageStorage, generate_uid

from research.phantoms.generator import make_phantom
from research.phantoms.dicom import write_dicom_series
from support.dimse import storescu_command
from support.orthanc import local_orthanc, log_lines
from support.paths import REAL_CT, REPO, SHARED_DATA
from support.programs import require
from support.series_files import real_series_with_uids
from support.waiting import wait_until

pytestmark = pytest.mark.peer
REFERENCE_SEG = SHARED_DATA / "reference-objects" / "highdicom" / "seg_image_ct_binary.dcm"
REFERENCE_SR = SHARED_DATA / "reference-objects" / "dcmqi-tid1500" / "sr.dcm"

STABLE_AGE = 2  # seconds; Orthanc's default is 60
# Small enough for a small phantom, strict enough that each negative case fails one rule.
RULES = {"MinInstances": 10, "MaxSliceThickness": 6}
SMALL = dict(fov="lumbar", spacing=(5.0, 4.0, 4.0), matrix=64)  # about 40 slices of 64x64
DECISION_TIMEOUT = 90  # s: StableAge plus Orthanc's stability scan, on a loaded 2-core machine


@pytest.fixture(scope="module")
def node(storescp_factory):
    """storescp as the spine-node modality."""
    return storescp_factory(aet="SPINENODE")


@pytest.fixture(scope="module")
def orthanc(orthanc_factory, node):
    return orthanc_factory(stable_age=STABLE_AGE, node=node.modality, routing=RULES)


@pytest.fixture(scope="module")
def client(orthanc) -> OrthancApiClient:
    return OrthancApiClient(orthanc.url)


def decision(orthanc, series_uid: str) -> str:
    """Wait for the routing script's one-line decision on ``series_uid`` and return it."""
    needle = f"spine-node routing: series {series_uid} "
    return wait_until(lambda: log_lines(orthanc, needle), DECISION_TIMEOUT,
                      f"the routing decision on series {series_uid}")[0]


def upload(client: OrthancApiClient, paths) -> None:
    for path in paths:
        client.upload_file(str(path))


def rewrite_series(paths, folder: Path, label: str, **attributes) -> tuple[str, list[Path]]:
    """Copies of ``paths`` as a new series (new Series and SOP Instance UIDs) with ``attributes`` set."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=["orthanc routing test", label])
    out = []
    for number, path in enumerate(paths, start=1):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(number)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        if "SOPClassUID" in attributes:
            ds.file_meta.MediaStorageSOPClassUID = attributes["SOPClassUID"]
        target = folder / f"{number:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return series_uid, out


def phantom_series(seed: int, folder: Path, **grid) -> tuple[str, list[Path]]:
    """A small phantom CT series written as DICOM: (SeriesInstanceUID, files)."""
    paths = write_dicom_series(make_phantom(seed, **(grid or SMALL)), folder)
    return pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID, paths


def test_stable_ct_series_is_routed_whole_to_the_node(orthanc, client, node, tmp_path):
    series_uid, paths = phantom_series(11, tmp_path / "ct")
    assert len(paths) >= RULES["MinInstances"]
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    upload(client, paths)

    line = decision(orthanc, series_uid)
    assert "routed to spine-node (job " in line and "not routed" not in line
    received = wait_until(lambda: len(node.received(series_uid)) >= len(sent) and node.received(series_uid),
                          DECISION_TIMEOUT, f"{len(sent)} instances at the node")
    assert {ds.SOPInstanceUID for ds in received} == sent
    job = client.jobs.get(line.rsplit("(job ", 1)[1].rstrip(")"))
    assert job.wait_completed(timeout=DECISION_TIMEOUT)
    assert job.info.status == "Success"


def _too_few(tmp: Path):
    series_uid, paths = phantom_series(12, tmp)
    return series_uid, paths[:6], "6 instances, fewer than MinInstances 10"


def _mr(tmp: Path):
    _, paths = phantom_series(13, tmp / "ct")
    uid, out = rewrite_series(paths, tmp / "mr", "mr", Modality="MR", SOPClassUID=MRImageStorage)
    return uid, out, 'Modality "MR" not in Modalities'


def _reference(path: Path, reason: str):
    """A reference object of the shared data as its own series, None when the data is absent."""
    if not path.exists():
        return None
    return pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID, [path], reason


def _thick(tmp: Path):
    series_uid, paths = phantom_series(14, tmp, fov="lumbar", spacing=(8.0, 4.0, 4.0), matrix=64)
    return series_uid, paths, "SliceThickness 8 mm above MaxSliceThickness 6 mm"


def _scout(tmp: Path):
    _, paths = phantom_series(15, tmp / "ct")
    uid, out = rewrite_series(paths, tmp / "scout", "scout", SeriesDescription="Topogram 0.6 T20f")
    return uid, out, 'matches "topogram" in ExcludeSeriesDescriptions'


def _head(tmp: Path):
    _, paths = phantom_series(16, tmp / "ct")
    uid, out = rewrite_series(paths, tmp / "head", "head", BodyPartExamined="HEAD")
    return uid, out, 'matches "head" in ExcludeBodyParts'


NEGATIVE_CASES = {
    "too_few_slices": _too_few,
    "mr": _mr,
    "seg_from_the_node": lambda tmp: _reference(REFERENCE_SEG, "Modality SEG is a kind spine-node sends back"),
    "sr_from_the_node": lambda tmp: _reference(REFERENCE_SR, "Modality SR is a kind spine-node sends back"),
    "slices_too_thick": _thick,
    "excluded_description": _scout,
    "excluded_body_part": _head,
}
SHARED_CASES = {"seg_from_the_node", "sr_from_the_node"}  # reference objects of the shared data


@pytest.fixture(scope="module")
def negative_uploads(client, tmp_path_factory) -> dict:
    """Every negative case uploaded at once, so that they all become stable in one StableAge."""
    uploads = {}
    for case, build in NEGATIVE_CASES.items():
        built = build(tmp_path_factory.mktemp(case))
        if built is not None:
            upload(client, built[1])
            uploads[case] = (built[0], built[2])
    return uploads


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.real_data) if case in SHARED_CASES else case
                                  for case in sorted(NEGATIVE_CASES)])
def test_series_failing_a_rule_is_not_routed_and_the_log_says_why(case, orthanc, node, negative_uploads):
    if case not in negative_uploads:
        pytest.skip(f"shared data for case {case} not present")
    series_uid, reason = negative_uploads[case]

    line = decision(orthanc, series_uid)
    assert "not routed: " in line and reason in line, line
    assert not log_lines(orthanc, f"series {series_uid} routed to")
    assert node.received(series_uid) == []


def test_ct_sent_by_the_node_itself_is_never_routed_back(orthanc, node, tmp_path):
    series_uid, paths = phantom_series(17, tmp_path)
    subprocess.run(storescu_command(orthanc.dicom_port, paths, calling="SPINENODE", called=orthanc.aet), check=True,
                   capture_output=True, timeout=120)

    line = decision(orthanc, series_uid)
    assert "not routed: sent by SPINENODE, listed in ExcludeSourceAets" in line, line
    assert node.received(series_uid) == []


def test_decision_lines_name_series_by_uid_only(orthanc, client, tmp_path):
    series_uid, paths = phantom_series(18, tmp_path)
    upload(client, paths)
    decision(orthanc, series_uid)
    routing_lines = log_lines(orthanc, "spine-node routing:")
    assert routing_lines
    for forbidden in ("PHANTOM-", "Phantom^"):  # the phantoms' PatientID and PatientName
        assert not [line for line in routing_lines if forbidden in line]


@pytest.mark.real_data
def test_real_series_with_empty_uids_is_refused_by_orthanc(orthanc, client):
    before = set(client.instances.get_all_ids())
    for path in sorted(REAL_CT.iterdir()):
        with pytest.raises(HttpError) as refused:
            client.upload_file(str(path))
        assert refused.value.http_status_code == 400
    assert set(client.instances.get_all_ids()) == before
    assert log_lines(orthanc, "missing StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID")


@pytest.mark.real_data
def test_real_jpeg2000_series_with_uids_filled_in_reaches_the_node_unchanged(orthanc, client, node, tmp_path):
    series_uid = generate_uid(entropy_srcs=["real-ct-dicom-t11-t12 series"])
    paths = real_series_with_uids(tmp_path / "fixed", generate_uid(entropy_srcs=["real-ct-dicom-t11-t12 study"]),
                                  series_uid)
    pixels = {ds.SOPInstanceUID: ds.PixelData for ds in map(pydicom.dcmread, paths)}
    upload(client, paths)

    line = decision(orthanc, series_uid)
    assert "routed to spine-node" in line and "not routed" not in line, line
    wait_until(lambda: len(node.received(series_uid)) >= len(pixels), DECISION_TIMEOUT,
               f"{len(pixels)} JPEG 2000 instances at the node")
    for path in node.folder.iterdir():
        ds = pydicom.dcmread(path)
        if ds.SeriesInstanceUID == series_uid:
            assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
            assert ds.PixelData == pixels[ds.SOPInstanceUID]


def _stow_body(path: Path, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())


def test_dicomweb_stow_rs_stores_an_instance_that_qido_rs_then_finds(orthanc, tmp_path):
    _, paths = phantom_series(19, tmp_path, fov="lumbar", spacing=(20.0, 8.0, 8.0), matrix=32)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    boundary = uuid.uuid4().hex
    stored = requests.post(
        f"{orthanc.dicomweb_url}/studies", data=_stow_body(paths[0], boundary), timeout=60,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"})
    assert stored.status_code == 200, stored.text
    referenced = stored.json()["00081199"]["Value"]  # ReferencedSOPSequence
    assert [item["00081155"]["Value"][0] for item in referenced] == [ds.SOPInstanceUID]
    # FailedSOPSequence: Orthanc's DICOMweb plugin 1.7 sends it empty (no Value) on success.
    assert not stored.json().get("00081198", {}).get("Value")

    found = requests.get(f"{orthanc.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/"
                         f"{ds.SeriesInstanceUID}/instances", timeout=30,
                         headers={"Accept": "application/dicom+json"})
    assert found.status_code == 200, found.text
    assert [item["00080018"]["Value"][0] for item in found.json()] == [ds.SOPInstanceUID]


def test_local_orthanc_by_hand_prints_its_ports_and_stops_on_sigterm():
    require(local_orthanc.ORTHANC_BINARY, "orthanc")
    script = REPO / "orthanc" / "local_orthanc.py"
    process = subprocess.Popen([sys.executable, str(script), "--stable-age", "3", "--rule", "MinInstances=5"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    orthanc_pid = None
    try:
        printed = [process.stdout.readline() for _ in range(8)]
        orthanc_pid = int(printed[0].split()[2])
        fields = dict(line.split(None, 1) for line in printed[1:7])
        http, storage = fields["HTTP"].strip(), Path(fields["storage"].strip())
        system = requests.get(f"{http}/system", timeout=10).json()
        assert system["Version"] == "1.10.1" and system["DicomPort"] == int(fields["DICOM"].rsplit(":", 1)[1])
        config = json.loads((storage.parent / "config" / "routing.json").read_text())
        assert config["SpineNodeRouting"]["MinInstances"] == 5
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
    assert not _alive(orthanc_pid), f"Orthanc (pid {orthanc_pid}) still running after the CLI stopped"
    assert not storage.parent.exists()  # the throw-away folder is gone
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{http}/system", timeout=5)


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a stopped Orthanc is reaped by its parent, the CLI)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_local_orthanc_refuses_fixed_ports_that_something_else_holds():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        orthanc = local_orthanc.LocalOrthanc(http_port=port, dicom_port=local_orthanc.free_port())
        try:
            with pytest.raises(local_orthanc.OrthancError, match=f"{port}.*already in use"):
                orthanc.start(timeout=10)
            assert orthanc.pid is None
        finally:
            orthanc.cleanup()
