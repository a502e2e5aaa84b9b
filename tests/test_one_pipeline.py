"""``spine-node process`` and the node run one orchestration (``pipelines.run``) and give the same results.

Both get the same CT list, the same grouping rule, the same summary schema and timings
keys. The fast tests give both the same stub worker task (the orchestration is their
subject); the slow one runs the real model through both.
"""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import LegacyConvertedEnhancedCTImageStorage

from pipelines.batch import process_inputs
from pipelines.options import PipelineOptions
from support.dimse import send_c_store
from support.inprocess_node import InProcessNode, StubExecutor, ct_series, stub_analysis
from support.synthetic_ct import enhanced_ct, save

VARYING = {"seg_sop_instance_uid", "sr_sop_instance_uid", "timings_s", "software", "device"}
OPTIONS = PipelineOptions(min_slices=5, device="cpu")


def comparable(summary: dict) -> dict:
    """A summary without what differs between two runs of the same series (UIDs of new objects, times)."""
    return {k: v for k, v in summary.items() if k not in VARYING}


@pytest.fixture
def node(tmp_path):
    running = InProcessNode(tmp_path / "node", OPTIONS)
    yield running
    running.close()


def run_both(node: InProcessNode, paths: list[Path], out: Path, analyser=stub_analysis) -> tuple[dict, dict]:
    """The summaries (by SeriesInstanceUID) of ``process`` and of the node on the same files."""
    results = process_inputs(paths, out, OPTIONS, analyser=analyser)
    offline = {}
    for r in results:
        name = "summary.json" if r.status == "done" else "rejected.json"
        offline[r.key] = {"status": r.status, **json.loads((r.folder / name).read_text())}
    assert send_c_store(node.port, paths) == [0] * len(paths)
    served = {}
    for job in node.run_completed_jobs(stable_age=0.01):
        served[job["series_instance_uid"]] = {"status": job["state"], **(job["summary"] or {"error": job["error"]})}
    return offline, served


def test_process_and_serve_give_the_same_summary_and_timings_keys(node, tmp_path):
    paths = save(ct_series("same", 8), tmp_path / "series")
    offline, served = run_both(node, paths, tmp_path / "out")
    assert offline.keys() == served.keys() and len(offline) == 1
    (uid,) = offline
    assert offline[uid]["status"] == served[uid]["status"] == "done"
    assert comparable(offline[uid]) == comparable(served[uid])
    keys = ["load", "network", "seg", "sr", "analyse_wall", "write"]  # the stub task times only "network"
    assert list(offline[uid]["timings_s"]) == list(served[uid]["timings_s"]) == keys


def test_a_legacy_converted_enhanced_ct_is_processed_by_both(node, tmp_path):
    legacy = enhanced_ct(ct_series("legacy", 8))
    legacy.SOPClassUID = legacy.file_meta.MediaStorageSOPClassUID = LegacyConvertedEnhancedCTImageStorage
    paths = save([legacy], tmp_path / "legacy")
    offline, served = run_both(node, paths, tmp_path / "out")
    (uid,) = offline
    assert offline[uid]["status"] == served[uid]["status"] == "done", (offline, served)
    assert comparable(offline[uid]) == comparable(served[uid])


def test_two_ct_series_stored_together_each_get_their_outcome_in_both(node, tmp_path):
    good = save(ct_series("first", 8), tmp_path / "set" / "a")
    short = save(ct_series("second", 3), tmp_path / "set" / "b")
    offline, served = run_both(node, good + short, tmp_path / "out")
    assert offline.keys() == served.keys() and len(offline) == 2
    by_status = {v["status"]: k for k, v in offline.items()}
    assert {v["status"] for v in served.values()} == set(by_status) == {"done", "rejected"}
    assert comparable(offline[by_status["done"]]) == comparable(served[by_status["done"]])
    assert offline[by_status["rejected"]]["code"] == "too_few_slices"
    assert served[by_status["rejected"]]["error"].startswith("too_few_slices")


@pytest.mark.slow
def test_process_and_serve_give_the_same_summary_with_the_real_model(tmp_path):
    from pipelines.process import analyse
    from research.phantoms.dicom import write_dicom_series
    from research.phantoms.generator import make_phantom

    options = PipelineOptions(device="cpu")
    phantom = make_phantom(100003, fov="lumbar", spacing=(3.0, 1.5, 1.5), matrix=256)
    paths = write_dicom_series(phantom, tmp_path / "phantom")
    running = InProcessNode(tmp_path / "node", options, executor=StubExecutor(analyse))
    try:
        results = process_inputs(paths, tmp_path / "out", options)
        (result,) = results
        assert result.status == "done", result.reason
        offline = json.loads((result.folder / "summary.json").read_text())
        assert send_c_store(running.port, paths) == [0] * len(paths)
        (job,) = running.run_completed_jobs(stable_age=0.01)
    finally:
        running.close()
    assert job["state"] == "done", job["error"]
    assert offline["vertebrae"] and comparable(offline) == comparable(job["summary"])
    assert list(offline["timings_s"]) == list(job["summary"]["timings_s"])
    assert pydicom.dcmread(next(o["path"] for o in job["outputs"] if o["kind"] == "seg")).Modality == "SEG"
