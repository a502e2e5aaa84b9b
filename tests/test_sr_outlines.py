"""The SR's TID 1410 outlines and name markers, per vertebra, for viewers that draw only image coordinates (OHIF).

Pinned: dciodvfy gives only the declared private-scheme warnings; highdicom and DCMTK's
dsrdump read the groups back; each outline is a closed SCOORD POLYLINE on the CT image (or
the Enhanced CT frame) of the slice through the vertebra's centre, with the SEG segment's
Tracking UID, its level as finding site and its lesion class; filled, it is the vertebra's
label on that slice; a resampled volume gets SCOORD3D in the frame of reference.
"""
from __future__ import annotations

import re
import subprocess

import highdicom as hd
import numpy as np
import pytest

from pipelines.outputs.codes import LESION_TYPE, LESION_WORDS, vertebra_code
from pipelines.outputs.contours import Outline, centre_outline, fill, label_boxes
from pipelines.outputs.seg import build_seg
from pipelines.outputs.sr import build_sr
from research.phantoms.generator import make_phantom
from support.programs import dciodvfy_messages, require
from support.seg_sr_cases import MODEL, PHANTOM, named_case, save_dataset

PRIVATE_WARNING = ("Warning - Unrecognized defined term <99VERTMET> for value 1 of attribute "
                   "<Coding Scheme Designator>")
CASES = ("HFS", "FFS", "OBLIQUE", "enhanced", "resampled")
FREE_TEXT_WARNING = "Warning - Unrecognized defined term <CST4> for value 1 of attribute <Coding Scheme Designator>"


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, **PHANTOM)


@pytest.fixture(scope="module", params=CASES)
def written(request, phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    case = named_case(phantom, request.param, folder)
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    boxes = label_boxes(case.labels)
    outlines = {f.label: centre_outline(case.labels, f.label, boxes[f.label]) for f in case.findings}
    sr = build_sr(case.series, seg, case.findings, MODEL, outlines=outlines)
    return case, seg, outlines, save_dataset(sr, folder / "sr.dcm")


def planar_groups(path):
    return hd.sr.srread(path).content.get_planar_roi_measurement_groups()


@pytest.mark.peer
def test_dciodvfy_gives_only_the_declared_private_code_warnings(written):
    case, _, _, path = written
    # the lesion class (concept name and value) in the TID 1411, outline and name groups, and the declaration
    # 99VERTMET: its declaration and six codes per vertebra; CST4 (OHIF's free-text label): its declaration and one
    assert sorted(dciodvfy_messages(path)) == sorted([PRIVATE_WARNING] * (6 * len(case.findings) + 1)
                                                     + [FREE_TEXT_WARNING] * (len(case.findings) + 1))


@pytest.mark.peer
def test_dsrdump_renders_each_outline(written):
    case, _, _, path = written
    run = subprocess.run([require("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    kind = "SCOORD3D" if case.series.resampled else "SCOORD"
    drawn = re.findall(rf'{kind}:\([^)]*"Image Region"\)=\(POLYLINE', run.stdout)
    assert len(drawn) == len(case.findings), run.stdout[-3000:]


def _uid(group) -> str:
    return next(item.UID for item in group[0].ContentSequence if item.ValueType == "UIDREF")


def _sites(group) -> list[str]:
    """Code values of the group's Finding Sites (a value over 16 characters is a LongCodeValue)."""
    return [item.ConceptCodeSequence[0].get("CodeValue") or item.ConceptCodeSequence[0].LongCodeValue
            for item in group[0].ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "363698007"]


def test_an_outline_and_a_name_group_per_vertebra_with_level_and_lesion(written):
    """Outlines carry the segment's Tracking UID (one tracked finding with the TID 1411 group);
    name markers are tracked findings of their own, named by level."""
    case, seg, _, path = written
    groups = planar_groups(path)
    tracking = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    ordered = sorted(case.findings, key=lambda f: f.segment_number)
    assert len(groups) == 2 * len(ordered)
    outlines, names = groups[:len(ordered)], groups[len(ordered):]
    for outline, name, finding in zip(outlines, names, ordered):
        assert _uid(outline) == tracking[finding.segment_number]
        assert _uid(name) not in tracking.values()
        identifier = next(item.TextValue for item in name[0].ContentSequence if item.ValueType == "TEXT"
                          and item.ConceptNameCodeSequence[0].CodeValue == "112039")
        assert identifier == f"{finding.level} vertebra"
        assert _sites(outline) == [vertebra_code(finding.level).value]
        assert _sites(name) == ["CORNERSTONEFREETEXT", vertebra_code(finding.level).value]  # the label OHIF shows first
        label = next(item.ConceptCodeSequence[0].CodeMeaning for item in name[0].ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == "363698007")
        assert label == f"{finding.level} vertebra: {LESION_WORDS[finding.lesion]}"
        for group in (outline, name):
            lesion = [e.value.meaning for e in group.get_qualitative_evaluations(name=LESION_TYPE)]
            assert len(lesion) == 1
        region = _region(name)
        assert region.GraphicType == ("POINT" if case.series.resampled else "CIRCLE")


def _region(group):
    return next(item for item in group[0].ContentSequence if item.ValueType in ("SCOORD", "SCOORD3D"))


def test_each_outline_is_closed_and_on_the_ct_slice_through_the_vertebra_centre(written):
    case, _, outlines, path = written
    ordered = sorted(case.findings, key=lambda f: f.segment_number)
    for group, finding in zip(planar_groups(path)[:len(ordered)], ordered):
        region = _region(group)
        points = np.asarray(region.GraphicData, float)
        outline = outlines[finding.label]
        if case.series.resampled:
            assert region.ValueType == "SCOORD3D"
            assert region.ReferencedFrameOfReferenceUID == case.series.source_images[0].FrameOfReferenceUID
            points = points.reshape(-1, 3)
            np.testing.assert_allclose(points, outline.patient(case.series.geometry), atol=1e-3)
        else:
            assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
            points = points.reshape(-1, 2)
            reference = region.ContentSequence[0].ReferencedSOPSequence[0]
            if len(case.series.source_images) == 1:
                header = case.series.source_images[0]
                frame = int(reference.ReferencedFrameNumber)
                position = header.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0]
                np.testing.assert_allclose(position.ImagePositionPatient,
                                           case.series.geometry.frame_position(outline.k), atol=1e-3)
            else:
                assert reference.ReferencedSOPInstanceUID == case.series.source_images[outline.k].SOPInstanceUID
        np.testing.assert_allclose(points[0], points[-1])
        mask = case.labels[outline.k] == finding.label
        filled = fill([Outline(outline.k, outline.rc)], mask.shape)
        assert (filled & mask).sum() / mask.sum() > 0.8  # the largest piece of the vertebra on that slice
        assert not (filled & ~mask & (case.labels[outline.k] != 0)).any()  # no other vertebra inside

