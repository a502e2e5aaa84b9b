"""Does it show in a viewer: the node's outputs in the real, prebuilt OHIF viewer, in a real headless chromium.

A lumbar phantom is processed by the one orchestration (``pipelines.run``, the demo model
on the CPU, every output: SEG, SR, RTSTRUCT, key image, PDF report); the CT and every output
are uploaded to a real Orthanc (Debian, DICOMweb plugin). The prebuilt OHIF viewer (npm ``@ohif/app``, pinned in viewer/, installed by
``make viewer``) is served on loopback in front of that Orthanc's DICOMweb
(``support.ohif.OhifServer``), and Debian's chromium, driven by Playwright, opens the study:

* the study browser lists the CT and every output (SEG, SR, RTSTRUCT, OT key image, DOC);
* the SEG opens on the CT, and the segmentation panel lists one segment per vertebra, named
  with its level ("L1 vertebra", ...), in the SEG's order;
* the SR opens in OHIF's SR viewport: each vertebra's outline (TID 1410, SCOORD on the CT
  slice through its centre) is drawn and named with its level, and a marker at its centre
  carries the numbers of its TID 1411 group (volume, mean HU, the spine report's body
  heights, ...); stepping through the SR's measurements shows every vertebra's name and
  volume, and the anterior, middle and posterior heights of every vertebra they were measured on;
* no error reaches the browser's console and no page error is thrown (the old SR threw
  "Cannot read properties of undefined (reading 'ReferencedSOPSequence')"), and every request
  the viewer made was answered.

Screenshots are kept for a person to look at: ``build/test-artifacts/ohif/ohif-seg.png``
(CT with the SEG overlay and the segment list), ``ohif-sr.png`` and ``ohif-sr-next.png`` (the
SR's first and second outlines).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.options import OUTPUT_KINDS, PipelineOptions
from pipelines.outputs.codes import LESION_WORDS
from pipelines.run import encode, image_groups, run_series
from research.phantoms.dicom import write_dicom_series
from research.phantoms.generator import make_phantom
from support.ohif import OhifServer, chromium, viewer_dist
from support.orthanc import json_value, qido
from support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.peer]

ARTIFACTS = REPO / "build" / "test-artifacts" / "ohif"
PHANTOM = dict(seed=100000, fov="lumbar", spacing=(3.0, 1.5, 1.5), matrix=192)  # 72 slices of 192x192
LOAD_TIMEOUT_MS = 300_000  # generous: on a shared 2-core machine software WebGL and OHIF's loading crawl
BROWSER_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist"]  # no GPU here: WebGL on the CPU, as Cornerstone3D needs it
TOUR_SHOWN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"


@dataclass
class Processed:
    """The phantom's CT files, the outputs written beside them and what the pipeline found."""

    ct: list[Path]
    outputs: dict[str, Path]
    study_uid: str
    levels: list[str]
    volumes: dict[str, float]  # ml, per level
    lesions: dict[str, str]  # lesion class, per level
    heights: dict[str, dict[str, float]]  # anterior / middle / posterior body heights (mm), per level measured


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Processed:
    folder = tmp_path_factory.mktemp("ohif-case")
    phantom = make_phantom(**PHANTOM)
    ct = write_dicom_series(phantom, folder / "ct")
    (group,) = image_groups(ct)
    outcome = run_series(group, PipelineOptions(device="cpu", outputs=OUTPUT_KINDS))
    assert outcome.status == "done", f"the phantom was not processed: {outcome.code}: {outcome.reason}"
    outputs = {}
    for kind, name, ds in outcome.datasets():
        outputs[kind] = folder / "out" / name
        outputs[kind].parent.mkdir(parents=True, exist_ok=True)
        outputs[kind].write_bytes(encode(ds))
    vertebrae = outcome.outputs.summary["vertebrae"]
    levels = [v["level"] for v in vertebrae]
    assert levels, "the demo model found no vertebra in the phantom: nothing to show"
    return Processed(ct, outputs, outcome.outputs.summary["study_instance_uid"], levels,
                     {v["level"]: float(v["volume_ml"]) for v in vertebrae},
                     {v["level"]: v["lesion"] for v in vertebrae},
                     {v["level"]: v["heights_mm"] for v in vertebrae if v.get("heights_mm")})


@pytest.fixture(scope="module")
def orthanc(orthanc_factory, processed):
    """An Orthanc holding the CT and every output (stable age far off: nothing is routed anywhere)."""
    from orthanc_api_client import OrthancApiClient

    orthanc = orthanc_factory(stable_age=3600)
    client = OrthancApiClient(orthanc.url)
    for path in [*processed.ct, *processed.outputs.values()]:
        client.upload_file(str(path))
    return orthanc


@pytest.fixture(scope="module")
def viewer(orthanc):
    dist, reason = viewer_dist()
    if dist is None:
        pytest.skip(reason)
    with OhifServer(orthanc.dicomweb_url, dist=dist) as server:
        yield server


@pytest.fixture(scope="module")
def page(viewer, processed):
    """chromium on the study in OHIF, with the console's errors and the page's exceptions recorded."""
    from playwright.sync_api import sync_playwright

    program = chromium()
    if program is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=program, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(LOAD_TIMEOUT_MS)  # every click and wait, not only the loads
            page.errors = []  # console errors and uncaught exceptions, as the test reports them
            page.on("console", lambda m: page.errors.append(f"console.{m.type}: {m.text}")
                    if m.type == "error" or "skipping annotation" in m.text else None)
            page.on("pageerror", lambda e: page.errors.append(f"page error: {e}"))
            page.add_init_script(TOUR_SHOWN)  # OHIF's first-visit tour would cover the page
            page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={processed.study_uid}", timeout=LOAD_TIMEOUT_MS)
            page.locator('[data-cy="study-browser-thumbnail"]').first.wait_for(timeout=LOAD_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def thumbnail(page, modality: str):
    """The study browser's entry of the series of ``modality`` (SEG and SR have no image thumbnail)."""
    return page.locator('[data-cy^="study-browser-thumbnail"]').filter(
        has=page.locator('[data-cy="series-modality-label"]', has_text=re.compile(f"^{modality}$")))


def test_orthanc_serves_the_study_with_every_output_over_dicomweb(orthanc, processed):
    series = qido(orthanc.dicomweb_url, f"studies/{processed.study_uid}/series")
    modalities = sorted(json_value(item, "00080060") for item in series)
    assert sorted(processed.outputs) == sorted(OUTPUT_KINDS), processed.outputs
    assert modalities == sorted(["CT", "SEG", "SR", "RTSTRUCT", "OT", "DOC"]), modalities


def test_the_study_browser_lists_every_series(page):
    from playwright.sync_api import expect

    # the browser fills in as the series load: the first entry (the fixture waits for it) can come before the CT's
    for modality in ("CT", "SEG", "SR", "RTSTRUCT", "OT", "DOC"):
        expect(thumbnail(page, modality), f"no {modality} series in OHIF's study browser").to_have_count(
            1, timeout=LOAD_TIMEOUT_MS)


def test_the_seg_opens_on_the_ct_with_one_segment_per_level(page, processed):
    thumbnail(page, "SEG").dblclick()
    page.get_by_role("button", name="Yes").click(timeout=LOAD_TIMEOUT_MS)  # "Do you want to open this Segmentation?"
    page.locator('[data-cy="panelSegmentation-btn"]').click()
    for level in processed.levels:
        page.get_by_text(f"{level} vertebra", exact=True).first.wait_for(timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(2000)  # the overlay is drawn after the list
    page.screenshot(path=str(ARTIFACTS / "ohif-seg.png"))
    text = page.inner_text("body")
    listed = re.findall(r"\b([TL]\d{1,2}) vertebra\b", text)
    assert listed == processed.levels, f"segments listed {listed}, expected {processed.levels}"
    assert not page.errors, "\n".join(page.errors)


def test_the_sr_draws_every_vertebra_named_by_level_and_lesion_class_with_its_numbers(page, processed):
    """Stepping through the SR's measurements with OHIF's arrows shows, for every vertebra, its
    outline labelled with its level ("Finding Site: L1 vertebra", OHIF writes the code 363698007),
    its name marker labelled with its level and lesion class ("L1 vertebra: osteolytic lesion"),
    and its volume (and the other numbers of its TID 1411 group)."""
    thumbnail(page, "SR").dblclick()
    viewport = page.locator('[data-cy="viewport-pane"]').first
    page.get_by_text(re.compile(r"(Volume: \d+\.\d\d ml)|(363698007|Finding Site): [TL]\d{1,2} vertebra")).first.wait_for(
        timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(ARTIFACTS / "ohif-sr.png"))
    volumes = {f"Volume: {volume:.2f} ml": level for level, volume in processed.volumes.items()}
    named, measured, classes, heights_shown = set(), set(), {}, set()
    heights = {level: [f"{position.capitalize()} vertebral body height: {value:.2f} mm"
                       for position, value in measured_heights.items()]
               for level, measured_heights in processed.heights.items()}
    for step in range(2 * len(processed.levels) + 1):  # an outline and a marker per vertebra
        text = viewport.inner_text()
        named.update(re.findall(r"(?:363698007|Finding Site): ([TL]\d{1,2}) vertebra", text))
        classes.update(re.findall(r"(?:363698007|Finding Site): ([TL]\d{1,2}) vertebra: ([a-z ,-]+[a-z])", text))
        measured.update(level for label, level in volumes.items() if label in text)
        heights_shown.update(level for level, labels in heights.items() if all(label in text for label in labels))
        if step == 1:
            page.screenshot(path=str(ARTIFACTS / "ohif-sr-next.png"))
        page.locator('[data-cy="viewport-action-arrows-right"]').click()
        page.wait_for_timeout(1500)
    assert named == set(processed.levels), f"outlines named {sorted(named)}, expected {processed.levels}"
    assert measured == set(processed.levels), f"volumes shown for {sorted(measured)}"
    assert heights and heights_shown == set(heights), f"heights shown for {sorted(heights_shown)} of {sorted(heights)}"
    expected = {level: LESION_WORDS[lesion] for level, lesion in processed.lesions.items()}
    assert classes == expected, f"lesion classes shown {classes}, expected {expected}"  # the marker's label
    assert not page.errors, "\n".join(page.errors)


def test_every_request_of_the_viewer_was_answered(page, viewer):
    assert viewer.failed_requests() == [], viewer.failed_requests()
    assert any(path.startswith("/dicom-web/") for path, _ in viewer.requests)


def test_the_screenshots_are_kept():
    for name in ("ohif-seg.png", "ohif-sr.png", "ohif-sr-next.png"):
        path = ARTIFACTS / name
        assert path.is_file() and path.stat().st_size > 10_000, f"no screenshot {path}"
