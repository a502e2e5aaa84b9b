"""CPU inference time and peak memory for a 512x512x300 CT at 0.8x0.8x1 mm, against nnU-Net's own path.

Both contenders run the same bundled model on the same phantom volume, each in a fresh
subprocess so that its peak RSS is its own:

* ``spine-node``: pipelines.model.segmenter.Segmenter.segment (body crop, resampling to the
  model spacing, sliding window, slab-wise logit upsampling, fragment removal);
* ``nnunet``: nnUNetPredictor.predict_single_npy_array, nnU-Net's in-memory route
  (its own preprocessing, resampling and export).

Targets (issue 2): spine-node <= 30 s and <= 3 GB on 2 CPU cores. Machines are noisy, so
the ratio against the peer measured in the same run is the figure to compare.

    .venv/bin/python benchmarks/inference_cpu.py [--model spine-phantom-demo] [--skip-nnunet]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ratio_line, verdict

SHAPE = (300, 512, 512)
SPACING = (1.0, 0.8, 0.8)


def make_volume(path: Path, seed: int = 200000) -> None:
    """A thoraco-lumbar phantom on exactly the benchmark grid, saved as .npy (HU, int16)."""
    from research.phantoms.anatomy import sample_anatomy
    from research.phantoms.generator import Grid, render

    rng = np.random.default_rng(seed)
    anat = sample_anatomy(rng)
    top = anat.vertebra("T6").centre[2]
    origin = (anat.trunk_centre[0] - 255.5 * SPACING[2], anat.trunk_centre[1] + 20 - 255.5 * SPACING[1],
              top - (SHAPE[0] - 1) * SPACING[0])
    hu, *_ = render(anat, Grid(SHAPE, SPACING, origin), rng, blur_mm=0.7, noise_hu=20.0)
    np.save(path, hu)


def worker(kind: str, volume: Path, model: str) -> dict:
    """Run one contender in this process; return its wall time and peak RSS."""
    import torch

    from pipelines.model.bundles import find_bundle

    torch.set_num_threads(2)
    hu = np.load(volume)
    bundle = find_bundle(model)
    start = time.perf_counter()
    if kind == "spine-node":
        from pipelines.model.segmenter import Segmenter

        segmenter = Segmenter(bundle, device="cpu", step_size=0.5)
        loaded = time.perf_counter()
        result = segmenter.segment(hu, SPACING)
        labels, timings = result.labels, result.timings_s
    else:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(bundle.nnunet_dir), bundle.folds, bundle.checkpoint_name)
        loaded = time.perf_counter()
        labels = predictor.predict_single_npy_array(hu[None].astype(np.float32), {"spacing": list(SPACING)})
        timings = {}
    end = time.perf_counter()
    return {"kind": kind, "load_s": round(loaded - start, 2), "segment_s": round(end - loaded, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
            "labels_found": int(len(np.unique(labels)) - 1), "timings_s": {k: round(v, 2) for k, v in timings.items()}}


def run_worker(kind: str, volume: Path, model: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--volume", str(volume), "--model", model],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="spine-phantom-demo")
    parser.add_argument("--skip-nnunet", action="store_true", help="time spine-node only")
    parser.add_argument("--worker", choices=("spine-node", "nnunet"), help=argparse.SUPPRESS)
    parser.add_argument("--volume", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.volume, args.model)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "ct.npy"
        make_volume(volume)
        print(f"volume {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} at {SPACING[2]}x{SPACING[1]}x{SPACING[0]} mm, 2 threads")
        ours = run_worker("spine-node", volume, args.model)
        print(f"spine-node : {ours['segment_s']:7.1f} s  peak {ours['peak_rss_gb']:.2f} GB  "
              f"({ours['labels_found']} levels; {ours['timings_s']})")
        print(f"targets    : <= 30 s, <= 3 GB -> {verdict(ours['segment_s'] <= 30 and ours['peak_rss_gb'] <= 3)}")
        if not args.skip_nnunet:
            peer = run_worker("nnunet", volume, args.model)
            print(f"nnU-Net    : {peer['segment_s']:7.1f} s  peak {peer['peak_rss_gb']:.2f} GB  ({peer['labels_found']} levels)")
            print(ratio_line("spine-node", "nnU-Net", (ours["segment_s"], peer["segment_s"]),
                             (ours["peak_rss_gb"], peer["peak_rss_gb"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
