"""STOW-RS receive (``POST /dicom-web/studies``): stored only after the fsync and the SQL row, per-part failures.

Against the real uvicorn server of ``dicom_node.web`` (``support.web.web_server``) over a
fresh store, and once against ``spine-node serve`` killed with SIGKILL in the middle of a
request: every instance of an earlier, acknowledged request is still there after restart.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import select

from dicom_node.runtime.disk import DiskGuard
from storage import Store, open_database
from storage.models import RejectedInstance, SeriesEvent
from support.dimse import free_port
from support.node_process import NodeProcess
from support.synthetic_ct import ct_datasets, save, volume
from support.waiting import wait_until
from support.web import node_config, web_server

BOUNDARY = "spine-node-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes], content_type: str = "application/dicom") -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def _dashboard_up(port: int) -> bool:
    """The node's web server answers (it starts just after the SCP, which is what NodeProcess waits for)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _uids(answer: dict, tag: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.get(tag, {}).get("Value", []) if "00081155" in item]


@pytest.fixture
def files(tmp_path):
    datasets = ct_datasets(volume(slices=3), name="stow")
    return save(datasets, tmp_path / "send"), datasets


@pytest.fixture
def served(tmp_path):
    config = node_config(tmp_path / "data")
    store = Store(open_database(config.database_url))
    with web_server(config, store) as server:
        yield server, store, config


def test_stow_stores_every_instance_and_answers_200_with_the_referenced_sops(served, files):
    server, store, config = served
    paths, datasets = files
    answer = httpx.post(server.url + "/dicom-web/studies", content=multipart([p.read_bytes() for p in paths]),
                        headers={"Content-Type": CONTENT_TYPE}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    assert _uids(answer.json(), "00081199") == [str(ds.SOPInstanceUID) for ds in datasets]
    instances = store.series_instances(str(datasets[0].SeriesInstanceUID))
    assert len(instances) == 3 and all(i.path.exists() and i.calling_ae == "DICOMWEB" for i in instances)
    with store.db.reading() as session:
        assert "released" in [e.event for e in session.scalars(select(SeriesEvent))]


def test_bad_parts_get_their_own_failure_and_the_good_ones_are_stored(served, files):
    server, store, _ = served
    paths, datasets = files
    body = multipart([paths[0].read_bytes(), b"this is not DICOM", paths[1].read_bytes()[:400]])
    answer = httpx.post(server.url + "/dicom-web/studies", content=body, headers={"Content-Type": CONTENT_TYPE},
                        timeout=30)
    assert answer.status_code == 202, answer.text
    assert _uids(answer.json(), "00081199") == [str(datasets[0].SOPInstanceUID)]
    reasons = [item["00081197"]["Value"][0] for item in answer.json()["00081198"]["Value"]]
    assert len(reasons) == 2 and all(r & 0xF000 in (0xC000, 0xA000, 0xB000) for r in reasons) and 0xC000 in reasons
    with store.db.reading() as session:
        assert len(list(session.scalars(select(RejectedInstance)))) == 2


def test_a_body_that_is_not_multipart_dicom_is_415_or_400_with_a_reason(served, files):
    server, _, _ = served
    paths, _ = files
    url = server.url + "/dicom-web/studies"
    plain = httpx.post(url, content=paths[0].read_bytes(), headers={"Content-Type": "application/dicom"}, timeout=30)
    assert plain.status_code == 415 and "multipart/related" in plain.json()["error"]
    other = httpx.post(url, content=b"x", headers={"Content-Type": 'multipart/related; type="image/jpeg"; boundary=a'},
                       timeout=30)
    assert other.status_code == 415 and "application/dicom" in other.json()["error"]
    no_boundary = httpx.post(url, content=b"x", headers={"Content-Type": 'multipart/related; type="application/dicom"'},
                             timeout=30)
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["error"]


def test_below_the_watermark_every_part_fails_with_0xa700_and_nothing_is_written(tmp_path, files):
    config = node_config(tmp_path / "data")
    store = Store(open_database(config.database_url))
    paths, datasets = files
    with web_server(config, store, guard=DiskGuard(config.data_dir, min_free_mb=10 ** 12)) as server:
        answer = httpx.post(server.url + "/dicom-web/studies", content=multipart([p.read_bytes() for p in paths]),
                            headers={"Content-Type": CONTENT_TYPE}, timeout=30)
    assert answer.status_code == 409
    assert [i["00081197"]["Value"][0] for i in answer.json()["00081198"]["Value"]] == [0xA700] * 3
    assert not list(config.data_dir.rglob("*.dcm"))
    assert store.receiving_series() == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_stow_cap_is_413_with_its_reason_recorded_and_the_node_takes_the_next_one(tmp_path, files,
                                                                                                  chunked):
    config = node_config(tmp_path / "data", SPINE_NODE_STOW_MAX_MB="0.002")
    store = Store(open_database(config.database_url))
    paths, datasets = files
    body = multipart([p.read_bytes() for p in paths])
    assert len(body) > 0.002 * 1024 * 1024 > len(multipart([paths[0].read_bytes()]))
    content = (body[i:i + 1024] for i in range(0, len(body), 1024)) if chunked else body  # no Content-Length
    with web_server(config, store) as server:
        answer = httpx.post(server.url + "/dicom-web/studies", content=content,
                            headers={"Content-Type": CONTENT_TYPE}, timeout=30)
        assert answer.status_code == 413 and "0.002 MB" in answer.json()["error"]
        assert not list(config.data_dir.rglob("*.dcm"))
        with store.db.reading() as session:
            assert ["stow_max_mb" in r.reason for r in session.scalars(select(RejectedInstance))] == [True]
        small = httpx.post(server.url + "/dicom-web/studies", content=multipart([paths[0].read_bytes()]),
                           headers={"Content-Type": CONTENT_TYPE}, timeout=30)
    assert small.status_code == 200, small.text


def test_stow_survives_sigkill_mid_request_without_losing_an_acknowledged_instance(tmp_path):
    first = ct_datasets(volume(slices=4), name="stow-acknowledged")
    second = ct_datasets(volume(slices=40, rows=64, columns=64), name="stow-killed")
    first_paths, second_paths = save(first, tmp_path / "first"), save(second, tmp_path / "second")
    http_port = free_port()
    node = NodeProcess(tmp_path / "data", {"SPINE_NODE_HTTP_PORT": str(http_port), "SPINE_NODE_MIN_SLICES": "500",
                                           "SPINE_NODE_DESTINATIONS": "PACS@127.0.0.1:4242"})
    url = f"http://127.0.0.1:{http_port}/dicom-web/studies"
    try:
        node.start(timeout=180)  # a loaded machine: the worker's model load is slow
        wait_until(lambda: _dashboard_up(http_port), 180, "the node's dashboard")
        answer = httpx.post(url, content=multipart([p.read_bytes() for p in first_paths]),
                            headers={"Content-Type": CONTENT_TYPE}, timeout=120)
        assert answer.status_code == 200
        acknowledged = _uids(answer.json(), "00081199")
        assert len(acknowledged) == 4

        under_way = threading.Event()

        def slow_body():
            for n, path in enumerate(second_paths):
                yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
                if n == 2:
                    under_way.set()
                time.sleep(0.1)
            yield f"--{BOUNDARY}--\r\n".encode()

        outcome = {}

        def send():
            try:
                outcome["answer"] = httpx.post(url, content=slow_body(), headers={"Content-Type": CONTENT_TYPE},
                                               timeout=60)
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        assert under_way.wait(60), "the second request never started"
        node.kill()  # three parts sent, 37 to go: the node has answered nothing of this request
        sender.join(30)
        assert "answer" not in outcome, "the killed node answered the interrupted request"

        node.start(timeout=180)
        store = Store(open_database(f"sqlite:///{tmp_path / 'data' / 'spine-node.db'}", create=False))
        instances = {i.sop_instance_uid: i for i in store.series_instances(str(first[0].SeriesInstanceUID))}
        for uid in acknowledged:
            assert uid in instances and instances[uid].path.exists()
        wait_until(lambda: _dashboard_up(http_port), 180, "the restarted node's dashboard")
    finally:
        node.stop()
