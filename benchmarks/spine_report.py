"""What the spine report (heights, Genant, trabecular HU, SINS) adds to a 512x512x300 CT, against inference.

Both are measured in this run, on one phantom volume at 0.8x0.8x1 mm: the report
(``pipelines.measure.report.measure_spine``) on the phantom's own labels, and CPU inference
of the bundled model (``Segmenter.segment``) on the same volume. Target (issue 16): the
report adds <= 2 s, and its ratio to inference is printed because machines are noisy.

    .venv/bin/python benchmarks/spine_report.py [--repeats 3] [--skip-inference]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import verdict
from inference_cpu import SHAPE, SPACING

TARGET_S = 2.0


def phantom(seed: int = 200000):
    """HU, labels (paper ids) and the grid's geometry of a thoraco-lumbar phantom on the benchmark grid."""
    from pipelines.records import Geometry
    from research.phantoms.anatomy import sample_anatomy
    from research.phantoms.generator import Grid, render

    rng = np.random.default_rng(seed)
    anat = sample_anatomy(rng)
    top = anat.vertebra("T6").centre[2]
    origin = (anat.trunk_centre[0] - 255.5 * SPACING[2], anat.trunk_centre[1] + 20 - 255.5 * SPACING[1],
              top - (SHAPE[0] - 1) * SPACING[0])
    hu, labels, *_ = render(anat, Grid(SHAPE, SPACING, origin), rng, blur_mm=0.7, noise_hu=20.0)
    # the generator's grid is (z, y, x) with z growing to the head: as a series, frame 0 is the lowest slice
    geometry = Geometry(np.array([origin[0], origin[1], origin[2]], float), np.eye(3), SPACING)
    return hu, labels, geometry


def time_report(hu, labels, geometry, repeats: int) -> tuple[float, int]:
    from pipelines.levels import PAPER
    from pipelines.measure.report import measure_spine
    from pipelines.process import vertebra_findings

    best = float("inf")
    for _ in range(repeats):
        findings = vertebra_findings(hu, labels, geometry.spacing, PAPER)
        start = time.perf_counter()
        measure_spine(hu.astype(np.float32), labels, geometry, findings)
        best = min(best, time.perf_counter() - start)
    return best, len(findings)


def time_inference(hu) -> float:
    import torch

    from pipelines.model.bundles import find_bundle
    from pipelines.model.segmenter import Segmenter

    torch.set_num_threads(2)
    segmenter = Segmenter(find_bundle("spine-phantom-demo"), device="cpu")
    start = time.perf_counter()
    segmenter.segment(hu.astype(np.float32), SPACING)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args()
    hu, labels, geometry = phantom()
    report_s, vertebrae = time_report(hu, labels, geometry, args.repeats)
    print(f"spine report: {report_s:.2f} s for {vertebrae} vertebrae on {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} "
          f"(target <= {TARGET_S:g} s: {verdict(report_s <= TARGET_S)})")
    if not args.skip_inference:
        inference_s = time_inference(hu)
        print(f"inference: {inference_s:.1f} s; ratio report / inference: {report_s / inference_s:.3f}x")


if __name__ == "__main__":
    main()
