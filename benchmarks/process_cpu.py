"""Wall time and peak memory of ``spine-node process`` on a 512x512x300 CT, stage by stage, against nnUNetv2_predict.

The CT is a thoraco-lumbar phantom written as a DICOM series (300 slices of 512x512 at
0.8x0.8x1 mm). Two contenders, each a fresh subprocess, same model, same volume, CPU:

* ``spine-node process DICOM_FOLDER --out OUT``: load + validate, inference, levels,
  lesion classes, SEG, SR, files; the stage timings come from its summary.json;
* ``nnUNetv2_predict_from_modelfolder`` on the same volume as NIfTI (what a research team
  would run by hand, without DICOM in or out, no mirroring).

Targets (issue 3): everything but inference <= 25 % of inference time, peak memory <= 3 GB.
These machines are noisy: compare the ratio against the peer measured in the same run.

    .venv/bin/python benchmarks/process_cpu.py [--model spine-phantom-demo] [--skip-nnunet]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BIN, ratio_line, thoracolumbar_phantom, verdict

SLICES = 300
SPACING = (1.0, 0.8, 0.8)
INFERENCE_STAGES = ("preprocess", "network", "postprocess", "resample_back")


def make_series(folder: Path, nifti: Path, seed: int = 200000) -> None:
    """A thoraco-lumbar phantom cut to 300 slices, as a DICOM series and as NIfTI."""
    from research.phantoms.dicom import write_dicom_series
    from research.phantoms.nifti import to_sitk
    import SimpleITK as sitk

    phantom = thoracolumbar_phantom(seed, SLICES, SPACING, matrix=512)
    write_dicom_series(phantom, folder)
    sitk.WriteImage(to_sitk(phantom.image, phantom.grid), str(nifti))


def timed(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a command as a child of a fresh Python process; wall seconds, peak RSS (GB) of its process tree."""
    probe = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps({'rc': r.returncode, 's': time.perf_counter() - t, "
             "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'err': r.stderr[-3000:]}))")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{command[0]} failed:\n{result['err']}")
    return result["s"], result["rss"] / 1024 ** 2, result["err"]


def run_spine_node(dicom: Path, out: Path, model: str) -> dict:
    wall, rss, _ = timed([str(BIN / "spine-node"), "process", str(dicom), "--out", str(out), "--model", model,
                          "--device", "cpu", "--no-progress"])
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    t = summary["timings_s"]
    inference = sum(t.get(k, 0.0) for k in INFERENCE_STAGES)
    stages = {"load": t.get("load", 0.0), "inference": inference, "levels": t.get("measure", 0.0),
              "lesions": t.get("lesions", 0.0), "seg": t.get("seg", 0.0), "sr": t.get("sr", 0.0),
              "write": t.get("write", 0.0)}
    stages["startup+model"] = max(wall - sum(stages.values()), 0.0)
    return {"wall_s": wall, "peak_gb": rss, "stages": stages, "inference_s": inference,
            "network_s": t.get("network", 0.0), "vertebrae": len(summary["vertebrae"])}


def run_nnunet(nifti: Path, out: Path, model: str) -> dict:
    from pipelines.model.bundles import find_bundle

    bundle = find_bundle(model)
    inputs = nifti.parent / "nnunet_in"
    inputs.mkdir()
    os.link(nifti, inputs / "ct_0000.nii.gz")
    command = [str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(out),
               "-m", str(bundle.nnunet_dir), "-f", *bundle.folds, "-chk", bundle.checkpoint_name,
               "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    wall, rss, _ = timed(command, {"nnUNet_raw": str(out), "nnUNet_preprocessed": str(out),
                                   "nnUNet_results": str(out)})
    return {"wall_s": wall, "peak_gb": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="spine-phantom-demo")
    parser.add_argument("--skip-nnunet", action="store_true", help="time spine-node only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_series(tmp / "dicom", tmp / "ct.nii.gz")
        print(f"CT: {SLICES} slices of 512x512 at {SPACING[2]}x{SPACING[1]}x{SPACING[0]} mm, DICOM; CPU, "
              f"{os.cpu_count()} cores")
        ours = run_spine_node(tmp / "dicom", tmp / "out", args.model)
        print(f"spine-node process: {ours['wall_s']:6.1f} s wall, peak {ours['peak_gb']:.2f} GB, "
              f"{ours['vertebrae']} vertebrae")
        for stage, seconds in ours["stages"].items():
            print(f"  {stage:14s} {seconds:6.2f} s")
        startup = ours["stages"]["startup+model"]
        per_series = ours["wall_s"] - ours["inference_s"] - startup
        print(f"overhead per series (load, levels, lesions, SEG, SR, files): {per_series:.1f} s = "
              f"{per_series / ours['inference_s']:.0%} of inference (target <= 25 %: "
              f"{verdict(per_series <= 0.25 * ours['inference_s'])})")
        print(f"with the process's start-up (Python imports, model load; once per process, the node pays it once): "
              f"{per_series + startup:.1f} s = {(per_series + startup) / ours['inference_s']:.0%} of inference")
        print(f"peak memory target <= 3 GB: {verdict(ours['peak_gb'] <= 3)}")
        if not args.skip_nnunet:
            peer = run_nnunet(tmp / "ct.nii.gz", tmp / "nnunet_out", args.model)
            print(f"nnUNetv2_predict  : {peer['wall_s']:6.1f} s wall, peak {peer['peak_gb']:.2f} GB")
            print(ratio_line("spine-node process", "nnUNetv2_predict", (ours["wall_s"], peer["wall_s"]),
                             (ours["peak_gb"], peer["peak_gb"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
