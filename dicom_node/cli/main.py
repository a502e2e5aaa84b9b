"""The ``spine-node`` command line.

Subcommands (each a small function below):

* ``phantom``     write synthetic spine CTs with ground truth (NIfTI, DICOM or nnU-Net raw)
* ``models``      ``list`` / ``verify NAME_OR_PATH`` / ``install PATH_OR_ZIP`` model bundles
* ``train-demo``  reproduce the bundled demo model from scratch (CPU, about an hour)
* ``evaluate``    per-vertebra Dice, level identification and lesion classes of a model on cases;
                  on unlabelled scans (``--scans``), vertebrae found, column, anatomical naming
                  check, lesion calls and a QC picture per scan
* ``process``     the pipeline offline on DICOM files and folders (``cli_process.py``)
* ``jobs``        ``list`` / ``show ID`` the jobs recorded in the node's database (``cli_jobs.py``)
* ``serve``       run the DICOM node; ``echo AE@host:port`` C-ECHOes a peer (``cli_serve.py``)

Errors that a user can fix are printed as one line ``spine-node: error: ...`` with exit
status 2 (bad input) or 1 (a failed run); nothing is half-written.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pipelines.errors import PipelineError
from storage.errors import StorageError

from dicom_node.cli import dataset as cli_dataset, jobs as cli_jobs, process as cli_process, serve as cli_serve
from dicom_node.cli import train as cli_train
from dicom_node.cli import operations as cli_operations
from dicom_node.errors import NodeError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (PipelineError, NodeError, StorageError) as exc:
        print(f"spine-node: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spine-node: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spine-node", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    _phantom_parser(sub)
    _models_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    cli_process.add_parser(sub)
    cli_jobs.add_parser(sub)
    cli_serve.add_parsers(sub)
    cli_operations.add_parsers(sub)  # purge, retrieve (issue 17)
    cli_dataset.add_parser(sub)
    cli_train.add_parser(sub)
    return parser


# --- phantom -------------------------------------------------------------------------------------------

def _phantom_parser(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic spine CT phantoms with ground truth")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per case)")
    p.add_argument("--n", type=int, default=1, help="number of phantoms (seeds S..S+N-1)")
    p.add_argument("--seed", type=int, default=100000, help="first seed (training uses 0..999)")
    p.add_argument("--format", choices=("nifti", "dicom", "nnunet"), default="nifti")
    p.add_argument("--fov", choices=("thoracic", "lumbar", "thoracolumbar"), help="field of view (random by default)")
    p.add_argument("--matrix", type=int, default=512, help="in-plane matrix (512 like a real scan)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SZ", "SY", "SX"),
                   help="voxel spacing in mm (random 1-3 mm slices, 0.6-1.0 mm pixels by default)")
    p.add_argument("--orientation", default="HFS", choices=("HFS", "FFS", "HFP", "FFP"),
                   help="DICOM patient position (an exact flip of the same volume)")
    p.add_argument("--kind", choices=PHANTOM_KINDS, default="plain",
                   help="plain: the training and evaluation phantoms; report: compression fractures of known Genant "
                        "grade and morphology, known trabecular HU and designed lesions (the spine report's truth in "
                        "truth.json); followup: a baseline and its follow-up of one patient, in baseline/ and "
                        "followup/ (two studies; lesion growth, a new lesion, a new collapse: the change's truth in "
                        "followup/truth.json)")
    p.set_defaults(handler=cmd_phantom)


PHANTOM_KINDS = ("plain", "report", "followup")
FOLLOWUP_ISSUER = "SPINE-NODE-PHANTOMS"
"""The IssuerOfPatientID of follow-up phantoms, so that a node matches the two studies by patient."""


def cmd_phantom(args) -> int:
    from research.phantoms.generator import make_phantom
    from research.phantoms.nifti import nnunet_dataset_json, write_nnunet_case
    from research.phantoms.report import ReportDesign

    if args.n < 1:
        raise NodeError("--n must be at least 1")
    if args.kind != "plain" and args.format == "nnunet":
        raise NodeError(f"--kind {args.kind} phantoms are written as nifti or dicom cases, not as an nnU-Net dataset")
    args.out.mkdir(parents=True, exist_ok=True)
    spacing = tuple(args.spacing) if args.spacing else None
    for seed in range(args.seed, args.seed + args.n):
        name = f"phantom_{seed:05d}"
        if args.kind == "followup":
            _write_followup(seed, args.out / name, spacing, args)
            continue
        phantom = make_phantom(seed, fov=args.fov, spacing=spacing, matrix=args.matrix,
                               report=ReportDesign() if args.kind == "report" else None)
        if args.format == "nnunet":
            write_nnunet_case(phantom, args.out, name)
        else:
            _write_case_atomically(phantom, args.out / name, args)
        print(f"{name}: {phantom.fov}, {phantom.grid.shape[0]} slices, levels "
              f"{phantom.levels_present()[0]}-{phantom.levels_present()[-1]}, lesions: "
              + (", ".join(f"{k} {v['lesion']}" for k, v in phantom.truth.items() if v["lesion"] != "none") or "none")
              + "".join(f", {k} Genant {v['genant_grade']} {v.get('genant_morphology') or ''}".rstrip()
                        for k, v in phantom.truth.items() if v.get("genant_grade")))
    if args.format == "nnunet":
        count = len(list((args.out / "labelsTr").glob("*.nii.gz")))
        (args.out / "dataset.json").write_text(json.dumps(nnunet_dataset_json(count), indent=1))
    return 0


def _write_followup(seed: int, folder: Path, spacing, args) -> None:
    """A follow-up pair of one patient (``report.followup_pair``): ``folder/baseline`` and ``folder/followup``."""
    from research.phantoms.dicom import default_patient_id
    from research.phantoms.report import followup_pair

    folder.mkdir(parents=True, exist_ok=True)
    pair = followup_pair(seed, fov=args.fov, spacing=spacing)
    for phantom, visit in zip(pair, ("baseline", "followup")):
        _write_case_atomically(phantom, folder / visit, args, patient_id=default_patient_id(seed),
                               issuer=FOLLOWUP_ISSUER)
    change = pair[1].extra_truth["change"]
    print(f"{folder.name}: baseline and follow-up of one patient, {pair[0].grid.shape[0]} slices; "
          f"new lesions {', '.join(change['new_lesions']) or 'none'}, new collapse "
          f"{', '.join(change['new_collapse']) or 'none'}")


def _write_case_atomically(phantom, final: Path, args, **patient) -> None:
    """Write a case into a temporary sibling folder, then rename it into place (``patient``: the DICOM
    writer's ``patient_id`` and ``issuer``, for the two studies of a follow-up pair)."""
    from research.phantoms.nifti import write_nifti_case

    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write_nifti_case(phantom, staging)
        if args.format == "dicom":
            from research.phantoms.dicom import write_dicom_series

            (staging / "ct.nii.gz").unlink()
            write_dicom_series(phantom, staging / "dicom", orientation=args.orientation, **patient)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- models --------------------------------------------------------------------------------------------

def _models_parser(sub) -> None:
    p = sub.add_parser("models", help="list, verify or install model bundles")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="bundles installed and shipped").set_defaults(handler=cmd_models_list)
    v = msub.add_parser("verify", help="check a bundle's manifest, label map and checksums")
    v.add_argument("bundle", help="bundle name or folder")
    v.set_defaults(handler=cmd_models_verify)
    i = msub.add_parser("install", help="verify and install a bundle folder or zip")
    i.add_argument("source", type=Path)
    i.add_argument("--into", type=Path, help="models folder (default: $SPINE_NODE_MODELS_DIR or DATA_DIR/models)")
    i.set_defaults(handler=cmd_models_install)
    cli_train.add_import_parsers(msub)


def cmd_models_list(args) -> int:
    from pipelines.model.bundles import list_bundles

    bundles = list_bundles(installed_models_dir())
    if not bundles:
        print("no model bundles found")
    for path, manifest, status in bundles:
        if manifest:
            print(f"{manifest['name']:<24} {manifest['version']:<10} {path}")
        else:
            print(f"{path.name:<24} {'UNUSABLE':<10} {status}")
    return 0


def cmd_models_verify(args) -> int:
    from pipelines.model.bundles import find_bundle

    bundle = find_bundle(args.bundle, installed_models_dir())
    levels = sorted(bundle.label_map.items())
    print(f"{bundle.name} {bundle.version}: OK ({bundle.path})")
    print(f"  sha256 {bundle.sha256}")
    print(f"  labels {levels[0][0]}={levels[0][1]} .. {levels[-1][0]}={levels[-1][1]} ({len(levels)} levels)")
    print(f"  intended use: {bundle.manifest['intended_use']}")
    return 0


def cmd_models_install(args) -> int:
    from pipelines.model.bundles import install_bundle

    bundle = install_bundle(args.source, args.into or installed_models_dir())
    print(f"installed {bundle.name} {bundle.version} at {bundle.path}")
    return 0


def installed_models_dir() -> Path:
    """Installed bundles: ``$SPINE_NODE_MODELS_DIR``, else ``DATA_DIR/models`` (the node's ``data_dir``)."""
    import os

    from dicom_node.config.settings import models_dir

    return models_dir(os.environ)


# --- train-demo ----------------------------------------------------------------------------------------

def _train_parser(sub) -> None:
    p = sub.add_parser("train-demo", help="reproduce the bundled demo model from scratch")
    p.add_argument("--workdir", type=Path, default=Path("spine-node-data/train-demo"),
                   help="nnU-Net raw/preprocessed/results folders")
    p.add_argument("--out", type=Path, default=Path("models/spine-phantom-demo"), help="bundle folder to write")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    p.add_argument("--iterations", type=int, help="override the recipe's iterations per epoch")
    p.add_argument("--cases", type=int, help="override the recipe's number of training phantoms")
    p.add_argument("--recipe", type=Path, help="JSON file of DemoRecipe fields to override (patch_size, features, ...)")
    p.set_defaults(handler=cmd_train_demo)


def cmd_train_demo(args) -> int:
    from research.training import DemoRecipe, train_demo

    overrides = json.loads(args.recipe.read_text()) if args.recipe else {}
    unknown = set(overrides) - set(DemoRecipe.__dataclass_fields__)
    if unknown:
        raise NodeError(f"{args.recipe}: unknown recipe field(s) {', '.join(sorted(unknown))}")
    recipe = DemoRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    for field, value in (("epochs", args.epochs), ("iterations_per_epoch", args.iterations),
                         ("n_cases", args.cases)):
        if value is not None:
            setattr(recipe, field, value)
    bundle = train_demo(args.workdir, args.out, recipe, args.device)
    print(f"demo model written to {bundle}")
    return 0


# --- evaluate ------------------------------------------------------------------------------------------

def _as_node(segmenter):
    """A segment function giving what the node reports: the network's labels after ``anatomy.review_vertebrae``.

    The reference cases are read as LPS (z, y, x) volumes, the grid the review works on.
    """
    from pipelines.model.anatomy import review_vertebrae

    def segment(volume):
        labels = segmenter.segment(volume.array, volume.spacing).labels
        return review_vertebrae(volume.array, volume.spacing, labels, segmenter.bundle.label_map).labels

    return segment


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice, level identification and lesion classes on reference cases; "
                                        "on scans without reference: vertebrae, column, naming checks, QC pictures")
    p.add_argument("--model", default="spine-phantom-demo", help="bundle name or folder")
    p.add_argument("--cases", type=Path, help="a case folder, or a folder of case folders")
    p.add_argument("--ct", type=Path, help="instead of --cases: one CT (image file or DICOM series folder)")
    p.add_argument("--reference", type=Path,
                   help="with --ct: its reference vertebra label map (without it, --ct is evaluated unlabelled)")
    p.add_argument("--scans", type=Path, nargs="+", metavar="PATH",
                   help="unlabelled CTs: DICOM folders (every series in them) or image files")
    p.add_argument("--qc-dir", type=Path,
                   help="unlabelled: folder of the QC pictures (default: next to --json, else ./spine-node-qc)")
    p.add_argument("--convention", default="auto",
                   choices=("auto", "paper", "verse", "totalsegmentator", "totalsegmentator-vertebrae"),
                   help="numbering of the reference labels")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--device", default="auto")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding-window step (fraction of the patch)")
    p.add_argument("--no-relabel", action="store_true",
                   help="keep the network's level names (skip the head-to-feet consistency step)")
    p.add_argument("--as-node", action="store_true",
                   help="score the labels as the node reports them: after the anatomy review (is it a spine, the "
                        "rib and sacrum naming checks, the column rebuilt from the CT where the network ran "
                        "vertebrae together); without it, the network's labels")
    p.add_argument("--dataset", type=Path, help="an imported dataset (spine-node dataset import-*): the paper's "
                                               "validation on its cases, held-out fold per case (research/paper_validation.py)")
    p.add_argument("--compare", metavar="BUNDLE", help="with --dataset: a second bundle on the same cases; paired "
                                                       "Dice difference with a Wilcoxon signed-rank test")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args) -> int:
    if args.dataset or args.compare:
        from research.paper_validation import run_cli
        return run_cli(args, installed_models_dir())
    if args.scans or (args.ct and not args.reference):
        return cmd_evaluate_unlabelled(args)
    from research.evaluation import evaluate_case, format_table, summarise
    from pipelines.model.segmenter import Segmenter
    from pipelines.lesions import ThresholdClassifier
    from pipelines.model.bundles import find_bundle

    cases = _cases_to_evaluate(args)
    bundle = find_bundle(args.model, installed_models_dir())
    segmenter = Segmenter(bundle, device=args.device, step_size=args.step_size, relabel=not args.no_relabel)
    classifier = ThresholdClassifier()
    results = []
    segment = _as_node(segmenter) if args.as_node else (lambda v: segmenter.segment(v.array, v.spacing).labels)
    for case in cases:
        result = evaluate_case(case, segment, bundle.label_map, classifier)
        dices = [r["dice"] for r in result["vertebrae"]]
        mean = sum(dices) / len(dices) if dices else float("nan")
        print(f"{case.name}: {len(dices)} vertebrae, mean Dice {mean:.3f}", flush=True)
        results.append(result)
    report = summarise(results)
    report["model"] = {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256}
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


def cmd_evaluate_unlabelled(args) -> int:
    """``evaluate`` on scans without reference labels: what the node finds, checked against the anatomy."""
    from pipelines.options import PipelineOptions
    from research.evaluation import discover_scans, evaluate_unlabelled, format_unlabelled, summarise_unlabelled

    if args.cases or args.reference:
        raise NodeError("--scans (or --ct without --reference) evaluates unlabelled scans; --cases and "
                        "--reference are for labelled cases")
    scans = discover_scans([*(args.scans or []), *([args.ct] if args.ct else [])])
    options = PipelineOptions(model=str(args.model), device=args.device, step_size=args.step_size,
                              models_dir=str(installed_models_dir()))
    qc_dir = args.qc_dir or (args.json.parent / "qc" if args.json else Path("spine-node-qc"))
    results = []
    for scan in scans:
        result = evaluate_unlabelled(scan, options, qc_dir)
        print(f"{scan.name}: {len(result['vertebrae'])} vertebrae ({', '.join(result['levels']) or 'none'}), "
              f"naming {(result['naming'] or {}).get('verdict', '-')}", flush=True)
        results.append(result)
    report = summarise_unlabelled(results)
    from pipelines.model.bundles import find_bundle

    bundle = find_bundle(args.model, installed_models_dir())
    report["model"] = {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256}
    print(format_unlabelled(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


def _cases_to_evaluate(args) -> list:
    from research.evaluation import Case, discover_cases

    if args.ct or args.reference:
        if not (args.ct and args.reference):
            raise NodeError("--ct and --reference go together")
        return [Case(args.ct.name, args.ct, args.reference, args.convention)]
    if not args.cases:
        raise NodeError("give --cases DIR, or --ct and --reference")
    return discover_cases(args.cases, args.convention)


if __name__ == "__main__":
    sys.exit(main())
