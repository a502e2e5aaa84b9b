"""The SR draws each measured body height and carries the change since the prior study.

Heights: one TID 1410 group per height, a two-point SCOORD3D POLYLINE in the CT's frame of
reference whose length is the reported height. Change: one TID 1501 group per level of
both studies, the prior's Study Instance UID as a UIDREF, the change in lesion volume and
heights, the lesion change and new collapse, a Comment naming both models when they differ.
Pinned with highdicom; dciodvfy, dsrdump and dcmqi's tid1500reader where installed (peer).
"""
from __future__ import annotations

import json
import subprocess

import highdicom as hd
import numpy as np
import pytest

from pipelines.measure.change import compare
from pipelines.measure.report import measure_spine
from pipelines.outputs.report_items import (HEIGHT_CHANGE, LESION_CHANGE, LESION_CHANGE_VALUES, LESION_VOLUME_CHANGE,
                                            NEW_COLLAPSE, POSITIONS)
from pipelines.outputs.seg import build_seg
from pipelines.outputs.sr import build_sr
from pipelines.process import change_inputs
from research.phantoms.generator import make_phantom
from support.programs import dciodvfy_messages, require, tool
from support.seg_sr_cases import MODEL, phantom_case, save_dataset

PRIVATE_WARNING = ("Warning - Unrecognized defined term <99VERTMET> for value 1 of attribute "
                   "<Coding Scheme Designator>")
PRIOR_STUDY = "1.2.826.0.1.3680043.8.498.1234567"
FREE_TEXT_WARNING = "Warning - Unrecognized defined term <CST4> for value 1 of attribute <Coding Scheme Designator>"


class _Analysis:
    """The two fields of ``process.Analysis`` that ``change_inputs`` reads."""

    def __init__(self, findings, model):
        self.findings, self.model = findings, model


def _prior(current: dict) -> dict:
    """A prior of the same patient: every lesion 1 ml smaller (so each lytic one grew), one lesion fewer, taller bodies."""
    vertebrae = []
    for n, v in enumerate(current["vertebrae"]):
        before = dict(v, lesion_volume_ml=max((v.get("lesion_volume_ml") or 0.0) - 1.0, 0.0))
        if n == 0:
            before.update(lesion="none", lesion_volume_ml=0.0)
        if v.get("heights_mm"):
            before["heights_mm"] = {k: h + 2.0 for k, h in v["heights_mm"].items()}
        vertebrae.append(before)
    return {"study_instance_uid": PRIOR_STUDY, "series_instance_uid": PRIOR_STUDY + ".1",
            "model": {"name": "spine-demo", "version": "0.2.0"}, "vertebrae": vertebrae}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drawings")
    case = phantom_case(make_phantom(5, fov="lumbar", spacing=(2.0, 1.2, 1.0), matrix=None), "OBLIQUE", folder)
    measure_spine(case.series.hu, case.labels, case.series.geometry, case.findings)
    for finding in case.findings[:2]:
        finding.lesion = "lytic"
        finding.measurements["lesion_volume_ml"] = 1.5
    change = compare(change_inputs(_Analysis(case.findings, MODEL)), _prior(change_inputs(_Analysis(case.findings,
                                                                                                     MODEL))))
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    save_dataset(seg, folder / "seg.dcm")
    path = save_dataset(build_sr(case.series, seg, case.findings, MODEL, change=change), folder / "sr.dcm")
    return case, change, path


def _groups(path):
    content = hd.sr.srread(path).content
    return content.get_planar_roi_measurement_groups(), content.get_image_measurement_groups()


def _items(group, value_type):
    return [item for item in group[0].ContentSequence if item.ValueType == value_type]


def test_each_measured_height_is_a_two_point_scoord3d_line_as_long_as_its_value(written):
    case, _, path = written
    planar, _ = _groups(path)
    heights = [g for g in planar if any(m.name in POSITIONS.values() for m in g.get_measurements())]
    measured = [(f, name) for f in case.findings for name in POSITIONS if (f.measurements.get("heights_mm") or {})]
    assert measured and len(heights) == len(measured)
    frame_uid = case.series.source_images[0].FrameOfReferenceUID
    for group in heights:
        region, = _items(group, "SCOORD3D")
        assert region.GraphicType == "POLYLINE" and region.ReferencedFrameOfReferenceUID == frame_uid
        points = np.asarray(region.GraphicData, float).reshape(-1, 3)
        length, = group.get_measurements()
        assert len(points) == 2 and length.unit.value == "mm"
        assert np.linalg.norm(points[1] - points[0]) == pytest.approx(length.value, abs=0.06)


def test_a_height_line_runs_along_the_vertebra_through_its_body(written):
    """Its middle lies inside the vertebra's label (read on the series' grid), its ends outside the body."""
    case, _, _ = written
    g = case.series.geometry
    steps = g.direction * np.array([g.spacing[2], g.spacing[1], g.spacing[0]])
    for finding in case.findings:
        for points in (finding.measurements.get("height_lines_mm") or {}).values():
            middle = np.mean(points, axis=0)
            i, j, k = np.rint(np.linalg.solve(steps, middle - g.origin)).astype(int)
            assert case.labels[k, j, i] == finding.label


def test_the_change_since_the_prior_study_is_one_group_per_level_with_the_prior_referenced(written):
    case, change, path = written
    _, groups = _groups(path)
    changes = [g for g in groups if g.tracking_identifier.endswith("change since prior study")]
    assert len(changes) == len(change["vertebrae"]) == len(case.findings)
    for group in changes:
        uid, = _items(group, "UIDREF")[1:]  # the first UIDREF is the group's Tracking Unique Identifier
        assert uid.UID == PRIOR_STUDY and uid.ConceptNameCodeSequence[0].CodeValue == "110180"
    by_level = {g.tracking_identifier.split()[0]: g for g in changes}
    first = {q.name.value: q.value for q in by_level[case.findings[0].level].get_qualitative_evaluations()}
    assert first[LESION_CHANGE.value] == LESION_CHANGE_VALUES["new"]
    second = {m.name.value: m.value for m in by_level[case.findings[1].level].get_measurements()}
    assert second[LESION_VOLUME_CHANGE.value] == pytest.approx(1.0)
    measured = next(f for f in case.findings if f.measurements.get("heights_mm"))
    group = by_level[measured.level]
    values = {m.name.value: m.value for m in group.get_measurements()}
    assert values[HEIGHT_CHANGE["anterior"].value] == pytest.approx(-2.0)
    assert NEW_COLLAPSE.value in {q.name.value for q in group.get_qualitative_evaluations()}


def test_a_prior_of_another_model_version_is_named_with_this_one_in_a_comment(written):
    _, _, path = written
    _, groups = _groups(path)
    first = next(g for g in groups if g.tracking_identifier.endswith("change since prior study"))
    comment = " ".join(item.TextValue for item in _items(first, "TEXT") if
                       item.ConceptNameCodeSequence[0].CodeValue == "121106")
    assert PRIOR_STUDY in comment and "spine-demo 0.2.0" in comment and f"spine-demo {MODEL.version}" in comment


def test_a_level_the_segmentations_disagree_on_says_so_and_carries_no_numbers(written, tmp_path):
    case, _, _ = written
    current = change_inputs(_Analysis(case.findings, MODEL))
    prior = _prior(current)
    prior["vertebrae"][0]["volume_ml"] = 3 * prior["vertebrae"][0]["volume_ml"]
    change = compare(current, prior)
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    path = save_dataset(build_sr(case.series, seg, case.findings, MODEL, change=change), tmp_path / "sr.dcm")
    _, groups = _groups(path)
    group = next(g for g in groups if g.tracking_identifier == f"{case.findings[0].level} change since prior study")
    assert group.get_measurements() == [] and group.get_qualitative_evaluations() == []
    assert any("disagree" in item.TextValue for item in _items(group, "TEXT"))


@pytest.mark.peer
def test_dciodvfy_gives_only_the_declared_private_code_warnings(written):
    _, _, path = written
    assert set(dciodvfy_messages(path)) <= {PRIVATE_WARNING, FREE_TEXT_WARNING}  # 99VERTMET, CST4 (OHIF labels)


@pytest.mark.peer
def test_dsrdump_renders_the_height_lines_and_the_prior_reference(written):
    case, _, path = written
    run = subprocess.run([require("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    lines = sum(len(f.measurements.get("height_lines_mm") or {}) for f in case.findings)
    outlines = run.stdout.count("SCOORD:")  # the vertebra outlines, none in this report
    assert run.stdout.count("SCOORD3D:") == lines and outlines == 0
    assert run.stdout.count(PRIOR_STUDY) >= len(case.findings)


@pytest.mark.peer
def test_dcmqi_tid1500reader_still_reads_the_report(written, tmp_path):
    case, _, path = written
    run = subprocess.run([tool("tid1500reader"), "--inputDICOM", str(path), "--outputMetadata",
                          str(tmp_path / "sr.json")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    items = json.loads((tmp_path / "sr.json").read_text())["Measurements"]
    assert {int(i["ReferencedSegment"]) for i in items if "ReferencedSegment" in i} == \
        {f.segment_number for f in case.findings}
