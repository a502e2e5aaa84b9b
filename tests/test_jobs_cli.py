"""``spine-node jobs list|show``: the provenance printed from the database the configuration names.

The database is populated through the Store, as the node does, then the CLI runs in-process.
"""
from __future__ import annotations

import json
import os

import pytest

from dicom_node.cli.main import main
from storage import Store, open_database

CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def node_env(monkeypatch, tmp_path):
    """A clean SPINE_NODE_* environment with the data folder in tmp_path."""
    for name in list(os.environ):
        if name.startswith("SPINE_NODE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SPINE_NODE_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


@pytest.fixture
def history(node_env, database_url):
    """Two jobs: one done with a SEG and an SR (one delivery failed once), one failed."""
    node_env.setenv("SPINE_NODE_DATABASE_URL", database_url)
    db = open_database(database_url)
    store = Store(db)
    for sop, series in (("1.2.3.1", "1.2.3"), ("1.2.3.2", "1.2.3"), ("4.5.6.1", "4.5.6")):
        store.record_instance(sop_instance_uid=sop, sop_class_uid=CT, series_key=series, series_instance_uid=series,
                              study_instance_uid="1.2", transfer_syntax_uid="1.2.840.10008.1.2.4.90",
                              calling_ae="ORTHANC", path=f"/data/{sop}.dcm", size=100, modality="CT", geometry=None)
    done = store.create_job("1.2.3", "association released, geometry contiguous").id
    store.claim_next_job("node-1")
    store.set_job_running(done, worker="node-1", device="cpu", model_name="spine-phantom-demo", model_version="0.2",
                          model_sha256="f" * 64, parameters={"step_size": 0.5, "mirroring": False},
                          software={"spine-node": "0.1.0", "nnunetv2": "2.8.1"})
    for kind, uid, sop_class in (("seg", "2.25.10", SEG), ("sr", "2.25.11", SR)):
        store.record_output(done, kind=kind, sop_instance_uid=uid, sop_class_uid=sop_class,
                            series_instance_uid=f"{uid}.1", path=f"/out/{kind}.dcm", destinations=["ORTHANC@127.0.0.1:4242"])
    first, second = store.due_deliveries()
    store.mark_delivery_failed(first.id, "connection refused", retry_in_s=0)
    store.mark_delivered(first.id)
    store.mark_delivered(second.id)
    store.finish_job(done, state="done", timings={"load_s": 1.5, "inference_s": 20.25})
    failed = store.create_job("4.5.6", "quiet for 30 s").id
    store.claim_next_job("node-1")
    store.finish_job(failed, state="failed", error="model bundle spine-x not found")
    db.close()
    return {"done": done, "failed": failed}


def test_jobs_list_json_gives_state_series_timings_and_output_uids(history, capsys):
    assert main(["jobs", "list", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in jobs] == [history["failed"], history["done"]]
    done = jobs[1]
    assert (done["state"], done["series_instance_uid"], done["study_instance_uid"]) == ("done", "1.2.3", "1.2")
    assert done["output_uids"] == ["2.25.10", "2.25.11"]
    assert done["timings"] == {"load_s": 1.5, "inference_s": 20.25} and done["run_s"] >= 0
    assert jobs[0]["state"] == "failed" and jobs[0]["error"] == "model bundle spine-x not found"


def test_jobs_list_prints_a_table(history, capsys):
    assert main(["jobs", "list"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "V"]
    assert len(lines) == 2 and lines[1].split()[1] == "done" and lines[1].endswith("2.25.10,2.25.11")
    assert "4.5.6" in lines[0] and lines[0].endswith("-")


def test_jobs_show_json_tells_the_whole_story(history, capsys):
    assert main(["jobs", "show", str(history["done"]), "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert [e["state"] for e in detail["events"]] == [
        "queued", "running", "started", "output", "output", "delivery-failed", "delivered", "delivered", "done"]
    assert detail["model"] == {"name": "spine-phantom-demo", "version": "0.2", "sha256": "f" * 64}
    assert detail["parameters"] == {"step_size": 0.5, "mirroring": False}
    assert detail["software"]["nnunetv2"] == "2.8.1" and detail["device"] == "cpu"
    assert [(d["kind"], d["state"], d["attempts"]) for d in detail["deliveries"]] == [
        ("seg", "delivered", 2), ("sr", "delivered", 1)]
    assert detail["deliveries"][0]["last_error"] == "connection refused"
    assert detail["calling_ae"] == "ORTHANC" and detail["instances"] == 2


def test_jobs_show_prints_events_model_deliveries_and_errors(history, capsys):
    assert main(["jobs", "show", str(history["done"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"job {history['done']}: done")
    assert "spine-phantom-demo 0.2 sha256 " + "f" * 64 in out
    assert "delivery-failed" in out and "last error: connection refused" in out
    assert "stages: load_s=1.5 s, inference_s=20.25 s" in out
    assert main(["jobs", "show", str(history["failed"])]) == 0
    assert "error:       model bundle spine-x not found" in capsys.readouterr().out


def test_jobs_show_of_an_unknown_job_is_a_one_line_error(history, capsys):
    assert main(["jobs", "show", "999"]) == 2
    assert capsys.readouterr().err == "spine-node: error: no job 999\n"


def test_jobs_read_the_database_named_by_the_config_file(node_env, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    open_database(url).close()
    config = tmp_path / "node.toml"
    config.write_text(f'database_url = "{url}"\n')
    assert main(["jobs", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "no jobs\n"


def test_jobs_list_without_a_database_says_so_and_creates_none(node_env, tmp_path, capsys):
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spine-node: error: no database at") and err.count("\n") == 1
    assert not (tmp_path / "data").exists()
