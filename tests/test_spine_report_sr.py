"""The spine report's numbers reach the TID 1500 SR: dciodvfy-valid apart from declared private codes, read back."""
from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from pipelines.outputs.report_items import POSITIONS, SINS_PARTIAL
from pipelines.outputs.seg import build_seg
from pipelines.outputs.sr import build_sr
from research.phantoms.generator import make_phantom
from support.programs import dciodvfy_messages, tool
from support.seg_sr_cases import MODEL, PHANTOM, phantom_case, save_dataset

MEASURED = {"heights_mm": {"anterior": 21.5, "middle": 19.0, "posterior": 24.0}, "height_loss_pct": 20.8,
            "genant_grade": 1, "trabecular_hu": 132.5, "lesion_volume_ml": 1.2,
            "sins": {"partial_score": 7, "components": {}}}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spine-report")
    case = phantom_case(make_phantom(5, **PHANTOM), "HFS", folder)
    for finding in case.findings:
        finding.measurements = dict(MEASURED)
    case.findings[-1].measurements = {"heights_mm": None, "heights_mm_reason": "vertebra cut by the edge of the scan"}
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    save_dataset(seg, folder / "seg.dcm")
    path = save_dataset(build_sr(case.series, seg, case.findings, MODEL), folder / "sr.dcm")
    return case, path


def test_each_vertebra_group_carries_its_heights_grade_density_and_sins(report):
    case, path = report
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    by_name = [{(m.name.meaning, float(m.value)) for m in g.get_measurements()} for g in groups]
    measured = [names for names in by_name if (POSITIONS["anterior"].meaning, 21.5) in names]
    assert len(measured) == len(case.findings) - 1  # the cut vertebra has no height: left out, not zero
    for names in measured:
        assert (POSITIONS["posterior"].meaning, 24.0) in names and (SINS_PARTIAL.meaning, 7.0) in names
        assert ("Attenuation Coefficient", 132.5) in names


@pytest.mark.peer
def test_the_spine_report_sr_is_valid_apart_from_its_declared_private_codes(report):
    _, path = report
    assert tool("dciodvfy")
    errors = [m for m in dciodvfy_messages(path) if m.startswith("Error")]
    assert errors == []
    assert pydicom.dcmread(path).Modality == "SR"


def test_the_reports_private_codes_mean_one_thing_each_in_the_scheme():
    from pipelines.outputs import codes
    from pipelines.outputs.report_items import PRIVATE_CODES

    others = [codes.LESION_TYPE, *codes.LESION_CODES.values()]
    values = [c.value for c in [*PRIVATE_CODES, *others]]
    assert len(values) == len(set(values))
