"""``spine-node process INPUT... --out DIR``: the pipeline offline on DICOM files and folders.

Prints one line per series (done / rejected / failed, with the reason) and exits with
status 1 if any series was not processed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines import options as defaults
from pipelines.options import PipelineOptions

from dicom_node.errors import NodeError


def add_parser(sub) -> None:
    p = sub.add_parser("process", help="segment and classify the CT series in DICOM files or folders")
    p.add_argument("inputs", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="output folder: one sub-folder per series")
    p.add_argument("--model", default=defaults.DEFAULT_MODEL, help="model bundle name or folder")
    p.add_argument("--device", default=defaults.DEFAULT_DEVICE, help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--step-size", type=float, default=defaults.DEFAULT_STEP_SIZE,
                   help="sliding-window step, fraction of the patch")
    p.add_argument("--mirroring", action="store_true", help="test-time mirroring (slower)")
    p.add_argument("--seg-type", choices=defaults.SEG_TYPES, default=defaults.DEFAULT_SEG_TYPE, help="DICOM SEG type")
    p.add_argument("--seg-all-frames", action="store_true",
                   help="SEG frames for every CT slice, empty ones included (viewers that need every frame)")
    p.add_argument("--outputs", default=",".join(defaults.DEFAULT_OUTPUTS),
                   help=f"objects to write, comma-separated among {','.join(defaults.OUTPUT_KINDS)} "
                        f"(default {','.join(defaults.DEFAULT_OUTPUTS)})")
    p.add_argument("--min-slices", type=int, default=defaults.DEFAULT_MIN_SLICES,
                   help="refuse series with fewer slices")
    p.add_argument("--lesion-thresholds", type=Path, help="JSON file of lesion classifier thresholds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.batch import process_inputs

    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        raise NodeError(f"no such file or folder: {', '.join(missing)}")
    thresholds = None
    if args.lesion_thresholds:
        try:
            thresholds = json.loads(args.lesion_thresholds.read_text())
        except (OSError, ValueError) as exc:
            raise NodeError(f"{args.lesion_thresholds}: not a readable JSON file ({exc})") from None
    from dicom_node.cli.main import installed_models_dir

    # PipelineOptions refuses unknown or out-of-range values (thresholds included) before any work
    options = PipelineOptions(model=str(args.model), device=args.device, step_size=args.step_size,
                              mirroring=args.mirroring, seg_type=args.seg_type, seg_all_frames=args.seg_all_frames,
                              outputs=tuple(k.strip() for k in args.outputs.split(",") if k.strip()),
                              min_slices=args.min_slices,
                              lesion_thresholds=thresholds, models_dir=str(installed_models_dir()))
    results = process_inputs(args.inputs, args.out, options, None if args.no_progress else _bar)
    if not results:
        raise NodeError(f"no DICOM series found in {', '.join(map(str, args.inputs))}")
    for r in results:
        line = f"{r.status:8s} {r.key}  {r.folder}"
        print(line + (f"\n         {r.reason}" if r.reason else ""))
    return 0 if all(r.status == "done" for r in results) else 1


def _bar(key: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=key[-24:], unit="stage", file=sys.stderr, leave=True)
