"""Output profiles per destination, and the "not processed" notice.

* Configuration: ``AE@host:port[seg,sr]`` in the variable, ``[destinations.NAME]`` tables in the
  file; plain forms keep the node-wide outputs; one line per mistake.
* The node builds the union of what its destinations take (each SEG form once) and routes
  each object only where it is wanted; the SCU proposes exactly those SOP classes.
* Must show: three destinations on real associations (pynetdicom SCPs in this process): one
  gets SEG + SR, one RTSTRUCT + SC + PDF, one that supports no SEG still gets the SR, and SQL
  records the refusal of the SEG, with its reason, on that object's delivery only.
* A refused series, or a job that fails, sends a small SR "Not processed" with the reason into
  the sender's study, where notices are on; never about a series of derived objects (no loop).

The analysis is the stub of ``support.inprocess_node`` (no nnU-Net): these tests are fast.
"""
from __future__ import annotations

import logging
import subprocess
from datetime import timedelta
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import (ComprehensiveSRStorage, Comprehensive3DSRStorage, EncapsulatedPDFStorage, ExplicitVRLittleEndian,
                         RLELossless, RTStructureSetStorage, SecondaryCaptureImageStorage, SegmentationStorage)
from pynetdicom.sop_class import CTImageStorage, LabelMapSegmentationStorage

from dicom_node.config.profiles import OutputProfile
from dicom_node.config.settings import load_config
from dicom_node.config.values import DimsePeer, StowDestination
from dicom_node.dimse.scu import Refused, c_store, requested_contexts
from dicom_node.errors import ConfigError
from dicom_node.runtime.delivery import Deliverer
from dicom_node.runtime.node import model_disclaimer
from dicom_node.runtime.routing import NOTICE_KIND, targets
from pipelines.errors import DicomWriteError, PipelineError
from pipelines.options import PipelineOptions
from pipelines.outputs.notice import NOT_PROCESSED, build_notice, wants_notice
from pipelines.outputs.secondary_capture import NOT_CLINICAL
from pipelines.run import encode
from storage.models import utcnow
from storage.operations import Operations
from support.dimse import StoreReceiver, send_c_store
from support.inprocess_node import InProcessNode, StubExecutor, ct_series
from support.programs import dciodvfy_messages, require
from support.waiting import wait_until

PATIENT = "Notice^Patient"
EVERY_OUTPUT = (SegmentationStorage, LabelMapSegmentationStorage, Comprehensive3DSRStorage, ComprehensiveSRStorage, RTStructureSetStorage,
                SecondaryCaptureImageStorage, EncapsulatedPDFStorage)


def _config(tmp_path: Path, **variables: str):
    return load_config(None, {"SPINE_NODE_DATA_DIR": str(tmp_path), **variables})


def _mistakes(tmp_path: Path, path: Path | None = None, **variables: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"SPINE_NODE_DATA_DIR": str(tmp_path), **variables})
    return caught.value.messages


# --- configuration ---------------------------------------------------------------------------------


def test_a_destination_with_kinds_in_brackets_gets_them_and_a_plain_one_keeps_the_node_wide_outputs(tmp_path):
    config = _config(tmp_path, SPINE_NODE_DESTINATIONS="PACS@10.0.0.5:104[seg,sr], RTPLAN@10.0.0.7:104[rtstruct,sc,"
                                                       "pdf,no-notices],VIEW@10.0.0.8:11112[seg,labelmap,all-frames],"
                                                       "OLD@10.0.0.9:104, stow:http://orthanc:8042/dicom-web[sr]",
                     SPINE_NODE_OUTPUTS="seg,sr,pdf")
    assert config.destinations == (DimsePeer("PACS", "10.0.0.5", 104), DimsePeer("RTPLAN", "10.0.0.7", 104),
                                   DimsePeer("VIEW", "10.0.0.8", 11112), DimsePeer("OLD", "10.0.0.9", 104),
                                   StowDestination("http://orthanc:8042/dicom-web"))
    assert config.destinations_for("ANY")[0] == "PACS@10.0.0.5:104"  # the delivery rows name the address only
    assert config.profile_of("PACS@10.0.0.5:104") == OutputProfile(("seg", "sr"), "binary", False, True)
    assert config.profile_of("RTPLAN@10.0.0.7:104") == OutputProfile(("rtstruct", "sc", "pdf"), "binary", False, False)
    assert config.profile_of("VIEW@10.0.0.8:11112") == OutputProfile(("seg",), "labelmap", True, True)
    assert config.profile_of("OLD@10.0.0.9:104") == OutputProfile(("seg", "sr", "pdf"), "binary", False, True)
    assert config.profile_of("stow:http://orthanc:8042/dicom-web").outputs == ("sr",)


def test_destination_tables_in_the_file_name_address_outputs_seg_form_and_notices(tmp_path):
    file = tmp_path / "node.toml"
    file.write_text('notices = false\n'
                    '[destinations.pacs]\naddress = "PACS@10.0.0.5:104"\noutputs = ["seg", "sr"]\n'
                    'seg_type = "labelmap"\nseg_all_frames = true\nnotices = true\n'
                    '[destinations.planning]\naddress = "RTPLAN@10.0.0.7:104"\noutputs = "rtstruct,sc,pdf"\n')
    config = load_config(file, {"SPINE_NODE_DATA_DIR": str(tmp_path)})
    assert [str(d) for d in config.destinations] == ["PACS@10.0.0.5:104", "RTPLAN@10.0.0.7:104"]
    assert config.profile_of("PACS@10.0.0.5:104") == OutputProfile(("seg", "sr"), "labelmap", True, True)
    assert config.profile_of("RTPLAN@10.0.0.7:104") == OutputProfile(("rtstruct", "sc", "pdf"), "binary", False, False)


def test_back_to_the_caller_the_node_wide_profile_applies(tmp_path):
    config = _config(tmp_path, SPINE_NODE_PEERS="ORTHANC@127.0.0.1:4242", SPINE_NODE_OUTPUTS="sr",
                     SPINE_NODE_NOTICES="off")
    assert config.destinations_for("ORTHANC") == ["ORTHANC@127.0.0.1:4242"]
    assert config.profile_of("ORTHANC@127.0.0.1:4242") == OutputProfile(("sr",), "binary", False, False)
    assert config.pipeline_options().outputs == ("sr",)


@pytest.mark.parametrize("value, expected", [
    ("PACS@h:104[segg]", "'segg' is not an output (seg, sr, rtstruct, sc, pdf)"),
    ("PACS@h:104[]", "the [...] names nothing"),
    ("PACS@h:104[binary,labelmap]", "'labelmap' contradicts an earlier word"),
    ("PACS@h:104[seg],PACS@h:104[sr]", "PACS@h:104 is named twice with different outputs"),
    ("PACS@h[seg]", "is not AE@host:port"),
], ids=["unknown-word", "empty", "contradiction", "twice", "no-port"])
def test_a_mistake_in_a_destination_profile_is_one_line_naming_it(tmp_path, value, expected):
    found = _mistakes(tmp_path, SPINE_NODE_DESTINATIONS=value)
    assert len(found) == 1 and found[0].startswith("SPINE_NODE_DESTINATIONS: ") and expected in found[0], found


def test_a_destination_table_without_address_or_with_an_unknown_key_is_refused(tmp_path):
    file = tmp_path / "node.toml"
    file.write_text('[destinations.pacs]\nadress = "PACS@h:104"\n[destinations.rt]\naddress = "RT@h:104"\n'
                    'outputs = ["rtstruct", "dose"]\n')
    (found,) = _mistakes(tmp_path, file)
    assert "destination 'pacs': unknown key(s) 'adress'" in found
    assert "destination 'rt': 'dose' is not one of seg, sr, rtstruct, sc, pdf" in found


def test_the_node_builds_the_union_of_kinds_and_each_seg_form_once(tmp_path):
    config = _config(tmp_path, SPINE_NODE_DESTINATIONS="A@h:1[seg,sr],B@h:2[rtstruct,sc,pdf],C@h:3[seg,sr],"
                                                       "D@h:4[seg,labelmap,all-frames],E@h:5[sr,labelmap]")
    options = config.pipeline_options()
    assert options.outputs == ("seg", "sr", "rtstruct", "sc", "pdf")
    assert (options.seg_type, options.seg_all_frames, options.seg_variants) == ("binary", False, (("labelmap", True),))
    only_labelmap = _config(tmp_path, SPINE_NODE_DESTINATIONS="D@h:4[seg,sr,labelmap]").pipeline_options()
    assert (only_labelmap.seg_type, only_labelmap.seg_variants, only_labelmap.outputs) == ("labelmap", (), ("seg", "sr"))


def test_pipeline_options_refuse_a_seg_variant_that_repeats_the_main_form():
    with pytest.raises(PipelineError, match="repeat a SEG form"):
        PipelineOptions(seg_variants=(("binary", False),))
    with pytest.raises(PipelineError, match="is not"):
        PipelineOptions(seg_variants=(("bitmap", True),))


# --- routing ---------------------------------------------------------------------------------------


def test_each_destination_gets_its_seg_form_and_the_sr_that_references_it():
    profiles = {"A": OutputProfile(("seg", "sr"), "binary", False, True),
                "V": OutputProfile(("seg", "sr"), "labelmap", True, False),
                "S": OutputProfile(("sr",), "labelmap", False, True),
                "R": OutputProfile(("rtstruct",), "binary", False, False)}
    binary, labelmap = ("binary", False), ("labelmap", True)
    built, route = {binary, labelmap}, lambda kind, variant: targets(kind, variant, profiles, profiles.get,
                                                                       built, binary)
    assert route("seg", binary) == ["A"] and route("seg", labelmap) == ["V"]
    assert route("sr", binary) == ["A", "S"] and route("sr", labelmap) == ["V"]
    assert route("rtstruct", None) == ["R"] and route(NOTICE_KIND, None) == ["A", "S"]


# --- the SCU ---------------------------------------------------------------------------------------


def test_the_scu_offers_a_compressed_file_only_in_its_own_syntax_and_an_uncompressed_one_in_each():
    class Meta:
        def __init__(self, sop_class, syntax):
            self.MediaStorageSOPClassUID, self.TransferSyntaxUID = sop_class, syntax

    contexts = dict(requested_contexts([Meta(SegmentationStorage, RLELossless),
                                        Meta(Comprehensive3DSRStorage, ExplicitVRLittleEndian)]))
    assert contexts[SegmentationStorage] == [RLELossless]
    assert contexts[Comprehensive3DSRStorage] == [ExplicitVRLittleEndian, "1.2.840.10008.1.2"]


def test_a_destination_that_accepts_none_of_the_classes_refuses_each_object_and_is_not_called_unreachable(tmp_path):
    notice = _notice_file(tmp_path)
    with StoreReceiver("CTONLY", [CTImageStorage]) as receiver:
        results = c_store(DimsePeer("CTONLY", "127.0.0.1", receiver.port), [notice], "SPINENODE")
    assert receiver.requested == [[ComprehensiveSRStorage]]
    assert isinstance(results[notice], Refused)
    assert "accepted no presentation context for Comprehensive SR Storage" in results[notice]


# --- must show: three destinations -------------------------------------------------------------------


@pytest.fixture
def three(tmp_path):
    """Destinations SEGSR [seg,sr], RTPLAN [rtstruct,sc,pdf] and NOSEG [seg,sr] whose SCP takes no SEG."""
    receivers = {"SEGSR": StoreReceiver("SEGSR", EVERY_OUTPUT).start(),
                 "RTPLAN": StoreReceiver("RTPLAN", EVERY_OUTPUT).start(),
                 "NOSEG": StoreReceiver("NOSEG", set(EVERY_OUTPUT) - {SegmentationStorage}).start()}
    yield receivers
    for receiver in receivers.values():
        receiver.stop()


def _profiled_node(tmp_path: Path, destinations: str, executor=None) -> tuple[InProcessNode, object]:
    config = _config(tmp_path / "config", SPINE_NODE_DESTINATIONS=destinations)
    node = InProcessNode(tmp_path / "node", config.pipeline_options(), executor=executor or StubExecutor(),
                         destinations=[str(d) for d in config.destinations])
    node.dispatcher.profile_of = config.profile_of
    return node, config


def _deliver(node: InProcessNode, passes: int = 2) -> Deliverer:
    deliverer = Deliverer(node.store, "SPINENODE", retry_max_s=60.0, timeout_s=10.0)
    for _ in range(passes):
        deliverer.run_once()
    return deliverer


def _send_series(node: InProcessNode, tmp_path: Path, slices: int, size: int = 48) -> list[pydicom.Dataset]:
    folder = tmp_path / f"series-{slices}"
    folder.mkdir()
    datasets = ct_series("Profiles", slices, size=size)
    paths = []
    for n, ds in enumerate(datasets):
        ds.PatientName, ds.PatientID = PATIENT, "NOTICE-4711"
        paths.append(folder / f"{n:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert set(send_c_store(node.port, paths)) == {0}
    return datasets


def test_three_destinations_get_what_their_profiles_name_and_a_refused_seg_is_recorded_with_its_reason(tmp_path,
                                                                                                       three):
    node, config = _profiled_node(tmp_path, f"{three['SEGSR'].address}[seg,sr], "
                                            f"{three['RTPLAN'].address}[rtstruct,sc,pdf], {three['NOSEG'].address}")
    try:
        _send_series(node, tmp_path, slices=40)
        (detail,) = node.run_completed_jobs(stable_age=0.1)
        assert detail["state"] == "done", detail
        assert not detail["summary"]["outputs"]["not_built"], detail["summary"]["outputs"]
        _deliver(node)
        segsr, rtplan, noseg = three["SEGSR"], three["RTPLAN"], three["NOSEG"]
        assert segsr.stored_classes() == sorted([SegmentationStorage, Comprehensive3DSRStorage])
        assert sorted(set(rtplan.stored_classes())) == sorted([RTStructureSetStorage, SecondaryCaptureImageStorage,
                                                               EncapsulatedPDFStorage])
        assert noseg.stored_classes() == [Comprehensive3DSRStorage]
        # the SCU proposed exactly what each destination is sent
        assert segsr.requested == [sorted([SegmentationStorage, Comprehensive3DSRStorage])]
        assert set(rtplan.requested[0]) == {RTStructureSetStorage, SecondaryCaptureImageStorage, EncapsulatedPDFStorage}
        assert noseg.requested[0] == sorted([SegmentationStorage, Comprehensive3DSRStorage])
        # SQL: one row per object and destination; only NOSEG's SEG is pending, with the refusal as its reason
        rows = {(d["destination"].split("@")[0], d["kind"]): d for d in _deliveries(node, detail["id"])}
        pending = {key: row for key, row in rows.items() if row["state"] != "delivered"}
        assert list(pending) == [("NOSEG", "seg")]
        refusal = pending[("NOSEG", "seg")]["last_error"]
        assert "NOSEG" in refusal and "accepted no presentation context for Segmentation Storage" in refusal
        assert {key[0] for key in rows} == {"SEGSR", "RTPLAN", "NOSEG"}
        assert {kind for (who, kind) in rows if who == "RTPLAN"} == {"rtstruct", "sc", "pdf"}
    finally:
        node.close()


def test_a_refused_object_is_tried_again_at_the_longest_interval_and_nothing_delivered_is_sent_twice(tmp_path, three):
    node, _ = _profiled_node(tmp_path, f"{three['SEGSR'].address}[seg,sr], {three['NOSEG'].address}[seg,sr]")
    try:
        _send_series(node, tmp_path, slices=24, size=24)
        (detail,) = node.run_completed_jobs(stable_age=0.1)
        deliverer = _deliver(node, passes=1)
        (refused,) = node.store.pending_deliveries()
        assert refused.attempts == 1 and refused.kind == "seg"
        assert refused.next_attempt_at - utcnow() > timedelta(seconds=50)  # retry_max_s (60 s), not 5 s
        Operations(node.store).retry_delivery(refused.id)
        deliverer.run_once()
        (again,) = node.store.pending_deliveries()
        assert again.id == refused.id and again.attempts == 2 and "Segmentation Storage" in again.last_error
        assert len(three["SEGSR"].stored) == 2 and len(three["NOSEG"].stored) == 1
        assert three["NOSEG"].requested[-1] == [SegmentationStorage]  # the retry proposes the SEG alone
    finally:
        node.close()


def test_a_failure_status_for_one_object_is_recorded_on_its_row_and_the_others_are_delivered(tmp_path):
    with StoreReceiver("PICKY", EVERY_OUTPUT, statuses={SegmentationStorage: 0x0122}) as picky:
        node, _ = _profiled_node(tmp_path, picky.address)
        try:
            _send_series(node, tmp_path, slices=24, size=24)
            (detail,) = node.run_completed_jobs(stable_age=0.1)
            _deliver(node, passes=1)
            (refused,) = node.store.pending_deliveries()
        finally:
            node.close()
    assert picky.stored_classes() == [Comprehensive3DSRStorage]
    assert refused.kind == "seg" and "0x0122" in refused.last_error
    assert refused.next_attempt_at - utcnow() > timedelta(seconds=50)  # SOP class not supported: a refusal


def test_destinations_that_want_other_seg_forms_each_get_theirs_with_an_sr_that_references_it(tmp_path):
    with StoreReceiver("BIN", EVERY_OUTPUT) as binary, StoreReceiver("LMAP", EVERY_OUTPUT) as labelmap:
        node, _ = _profiled_node(tmp_path, f"{binary.address}[seg,sr],{labelmap.address}[seg,sr,labelmap,all-frames]")
        try:
            datasets = _send_series(node, tmp_path, slices=24, size=24)
            (detail,) = node.run_completed_jobs(stable_age=0.1)
            kinds = sorted(o["kind"] for o in detail["outputs"])
            assert kinds == ["seg", "seg", "sr", "sr"]  # each form once, each with its SR
            _deliver(node)
        finally:
            node.close()
        for receiver, seg_type, frames in ((binary, "BINARY", None), (labelmap, "LABELMAP", len(datasets))):
            (seg,) = [ds for ds in receiver.stored if ds.Modality == "SEG"]
            (sr,) = [ds for ds in receiver.stored if ds.SOPClassUID == Comprehensive3DSRStorage]
            assert seg.SegmentationType == seg_type
            if frames:
                assert int(seg.NumberOfFrames) == frames
            referenced = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                          for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
            assert seg.SOPInstanceUID in referenced


def _deliveries(node: InProcessNode, job_id: int) -> list[dict]:
    return node.store.job_detail(job_id)["deliveries"]


# --- the "not processed" notice ----------------------------------------------------------------------


def _notice_file(tmp_path: Path, disclaimer: str | None = NOT_CLINICAL) -> Path:
    datasets = ct_series("Notice", 3)
    sr = build_notice(datasets[0], [(ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets],
                      datasets[0].SeriesInstanceUID, state="rejected",
                      reason="too_few_slices: series 1.2.3: only 3 distinct slices", disclaimer=disclaimer)
    path = tmp_path / "notice.dcm"
    path.write_bytes(encode(sr))
    return path


def _texts(ds: pydicom.Dataset) -> list[str]:
    """The Finding and Comment texts of a notice, in order (the observer's TEXT items left out)."""
    return [str(item.TextValue) for item in ds.ContentSequence if item.ValueType == "TEXT"
            and item.ConceptNameCodeSequence[0].CodeValue in ("121071", "121106")]


def test_a_refused_series_gets_a_not_processed_sr_in_its_study_except_where_notices_are_off(tmp_path, caplog):
    with StoreReceiver("PACS", EVERY_OUTPUT) as pacs, StoreReceiver("QUIET", EVERY_OUTPUT) as quiet:
        node, _ = _profiled_node(tmp_path, f"{pacs.address}, {quiet.address}[seg,sr,no-notices]")
        try:
            with caplog.at_level(logging.DEBUG):
                datasets = _send_series(node, tmp_path, slices=3, size=16)
                (detail,) = node.run_completed_jobs(stable_age=0.1)
                _deliver(node)
            assert detail["state"] == "rejected" and "too_few_slices" in detail["error"]
            (output,) = detail["outputs"]
            assert output["kind"] == NOTICE_KIND
            assert [d["destination"] for d in _deliveries(node, detail["id"])] == [pacs.address]
        finally:
            node.close()
    assert quiet.stored == []
    (notice,) = pacs.stored
    assert notice.SOPClassUID == ComprehensiveSRStorage
    assert notice.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert notice.SeriesInstanceUID != datasets[0].SeriesInstanceUID and notice.PatientName == PATIENT
    texts = _texts(notice)
    assert texts[0] == NOT_PROCESSED and "the series was refused: too_few_slices" in texts[1]
    (uid_item,) = [item for item in notice.ContentSequence if item.ValueType == "UIDREF"
                   and item.ConceptNameCodeSequence[0].CodeValue == "112002"]
    assert uid_item.UID == datasets[0].SeriesInstanceUID
    evidence = {item.ReferencedSOPInstanceUID for study in notice.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {ds.SOPInstanceUID for ds in datasets}
    assert PATIENT not in caplog.text and "NOTICE-4711" not in caplog.text


def test_a_job_that_fails_sends_a_notice_with_the_failure_and_the_demo_line(tmp_path):
    def broken(hu, geometry, options):
        raise PipelineError("the worker process died while analysing (BrokenProcessPool)")

    with StoreReceiver("PACS", EVERY_OUTPUT) as pacs:
        node, _ = _profiled_node(tmp_path, pacs.address, executor=StubExecutor(broken))
        node.dispatcher.disclaimer = NOT_CLINICAL
        try:
            _send_series(node, tmp_path, slices=24, size=16)
            (detail,) = node.run_completed_jobs(stable_age=0.1)
            _deliver(node)
        finally:
            node.close()
    assert detail["state"] == "failed"
    (notice,) = pacs.stored
    texts = _texts(notice)
    assert "processing failed: " in texts[1] and "worker process died" in texts[1] and texts[-1] == NOT_CLINICAL


def test_a_notice_sent_back_to_the_node_gets_no_notice_of_its_own(tmp_path):
    with StoreReceiver("PACS", EVERY_OUTPUT) as pacs:
        node, _ = _profiled_node(tmp_path, pacs.address)
        try:
            assert send_c_store(node.port, [_notice_file(tmp_path)]) == [0]
            details: list[dict] = []  # the series row can lag the C-STORE response by a moment under load
            wait_until(lambda: details.extend(node.run_completed_jobs(stable_age=0.1)) or details, 10,
                       "the returned notice's series to complete")
            (detail,) = details
            _deliver(node)
        finally:
            node.close()
    assert detail["state"] == "rejected" and detail["outputs"] == [] and pacs.stored == []


def test_only_series_of_something_else_than_derived_objects_or_ours_deserve_a_notice():
    assert wants_notice(["CT", "CT"], "ACME")
    assert wants_notice(["MR"], None)
    assert not wants_notice(["SR", "SEG"], "ACME")
    assert not wants_notice(["OT"], "spine-node")  # our own key images, sent back


def test_the_demo_model_gives_the_not_for_clinical_use_line_and_another_model_none(tmp_path):
    assert model_disclaimer(PipelineOptions()) == NOT_CLINICAL
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "manifest.json").write_text('{"format": "spine-node-model-bundle/1", "name": "real", '
                                                     '"version": "1", "intended_use": "research", "nnunet": {}}')
    assert model_disclaimer(PipelineOptions(model=str(tmp_path / "real"))) is None


def test_the_notice_reads_back_with_highdicom_and_pydicom(tmp_path):
    path = _notice_file(tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.CompletionFlag == "COMPLETE" and ds.SeriesDescription.startswith("NOT PROCESSED")
    report = hd.sr.srread(path)
    assert _texts(report)[-1] == NOT_CLINICAL
    without = pydicom.dcmread(_notice_file(tmp_path, disclaimer=None))
    assert NOT_CLINICAL not in _texts(without)


def test_a_notice_that_cannot_be_built_is_a_dicom_write_error_without_the_header_values():
    (source,) = ct_series("Notice", 1)
    source.PatientName, source.StudyInstanceUID = PATIENT, ""
    with pytest.raises(DicomWriteError, match="no StudyInstanceUID"):
        build_notice(source, [], "1.2.3", state="rejected", reason="not_ct: x")
    source.StudyInstanceUID, source.SpecificCharacterSet = "1.2.3.4", "NOT A CHARSET"
    with pytest.raises(DicomWriteError) as caught:
        build_notice(source, [], "1.2.3", state="failed", reason="x")
    assert PATIENT not in str(caught.value)
    with pytest.raises(DicomWriteError, match="rejected or failed"):
        build_notice(source, [], "1.2.3", state="done", reason="x")


@pytest.mark.peer
def test_the_notice_passes_dciodvfy_without_any_message(tmp_path):
    assert dciodvfy_messages(_notice_file(tmp_path)) == []


@pytest.mark.peer
def test_dsrdump_reads_the_notice_and_shows_the_reason(tmp_path):
    run = subprocess.run([require("dsrdump"), "+Pl", str(_notice_file(tmp_path))], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    assert "Not processed" in run.stdout and "too_few_slices" in run.stdout
