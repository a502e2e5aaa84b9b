"""``spine-node train --dataset DATASET_DIR --out BUNDLE_DIR``: the paper's nnU-Net baseline, as a bundle.

Also ``spine-node models import-nnunet MODEL_DIR`` and ``models import-totalsegmentator WEIGHTS_DIR``:
bundles from results folders that nnU-Net or TotalSegmentator wrote (``research/model_import.py``).

The defaults are the paper's protocol (nnU-Net v2 ``3d_fullres``, the plain trainer with its
own schedule, 3-fold cross-validation, CUDA); every other setting is an option
(``research/train_nnunet.py`` says what each step does). Run it again with the same
arguments after an interruption and it resumes: folds already trained are kept, a fold
stopped midway goes on from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dicom_node.errors import NodeError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the paper's nnU-Net baseline (3-fold CV) on an imported dataset")
    p.add_argument("--dataset", required=True, type=Path, help="a raw dataset from spine-node dataset import-*")
    p.add_argument("--out", required=True, type=Path, help="the bundle folder to write")
    p.add_argument("--workdir", type=Path, help="nnU-Net's folders and the resumable state (default: OUT.work)")
    p.add_argument("--configuration", default="3d_fullres", help="nnU-Net configuration (paper: 3d_fullres)")
    p.add_argument("--n-folds", type=int, default=3, help="folds of the cross-validation (paper: 3)")
    p.add_argument("--folds", type=int, nargs="+", help="train only these folds (default: all)")
    p.add_argument("--trainer", default="nnUNetTrainer", help="nnU-Net trainer class (paper: nnUNetTrainer)")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--plans-override", type=Path,
                   help="JSON merged into the configuration of the plans, e.g. a small network for the CPU: "
                        '{"patch_size": [32,32,32], "batch_size": 2, "arch_kwargs": {...}}')
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the trainer's, 1000)")
    p.add_argument("--iterations", type=int, help="training iterations per epoch (default: 250)")
    p.add_argument("--val-iterations", type=int, help="validation iterations per epoch (default: 50)")
    p.add_argument("--save-every", type=int, help="epochs between resumable checkpoints (default: 50)")
    p.add_argument("--device", default="cuda", help="cuda (paper), cuda:N or cpu")
    p.add_argument("--augmentation-workers", type=int, help="nnU-Net data-augmentation processes (0: in-process)")
    p.add_argument("--dataset-id", type=int, default=600, help="nnU-Net dataset id used in the work folder")
    p.add_argument("--dask-scheduler", metavar="ADDR", help="run one fold per GPU worker (resource GPU=1) of a Dask cluster")
    p.add_argument("--name", default="spine-mets-nnunet", help="bundle name")
    p.add_argument("--version", default="1.0.0", help="bundle version")
    p.set_defaults(handler=cmd_train)


def protocol_from_args(args: argparse.Namespace):
    """The TrainingProtocol the options describe."""
    from research.train_nnunet import TrainingProtocol

    override = {}
    if args.plans_override:
        try:
            override = json.loads(args.plans_override.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise NodeError(f"{args.plans_override}: unreadable plans override ({exc})") from None
        if not isinstance(override, dict):
            raise NodeError(f"{args.plans_override}: the plans override must be a JSON object")
    return TrainingProtocol(configuration=args.configuration, n_folds=args.n_folds,
                            folds=tuple(args.folds) if args.folds else None, trainer=args.trainer, plans=args.plans,
                            epochs=args.epochs, iterations_per_epoch=args.iterations,
                            val_iterations_per_epoch=args.val_iterations, save_every=args.save_every,
                            device=args.device, plans_override=override, dataset_id=args.dataset_id,
                            augmentation_workers=args.augmentation_workers, name=args.name, version=args.version)


def cmd_train(args: argparse.Namespace) -> int:
    from research.paper_validation import format_validation
    from research.train_nnunet import train

    bundle = train(args.dataset, args.out, protocol_from_args(args), args.workdir, args.dask_scheduler)
    manifest = json.loads((bundle / "manifest.json").read_text())
    cv = manifest["cross_validation"]
    print(format_validation({"model": {"name": manifest["name"], "version": manifest["version"]},
                             "dice": cv["dice"], "lesions": None}))
    print(f"bundle written to {bundle} (folds {', '.join(manifest['nnunet']['folds'])}); "
          f"install it with: spine-node models install {bundle}")
    return 0


def add_import_parsers(msub) -> None:
    """``models import-nnunet`` and ``models import-totalsegmentator`` (under the ``models`` command)."""
    for command, helptext in (("import-nnunet", "make a bundle from an nnU-Net results folder"),
                              ("import-totalsegmentator", "make a bundle from TotalSegmentator's vertebrae "
                                                          "weights (Dataset292)")):
        p = msub.add_parser(command, help=helptext)
        p.add_argument("source", type=Path, help="the results / weights folder (any level of DatasetNNN_*/...)")
        p.add_argument("--out", required=True, type=Path, help="the bundle folder to write (then: models install)")
        p.add_argument("--licence", required=True, help="the weights' licence, as you received them")
        p.add_argument("--intended-use", required=True, help="what the weights may be used for")
        p.add_argument("--folds", nargs="+", help="folds to use (default: every fold with a checkpoint_final.pth)")
        p.add_argument("--name", help="bundle name")
        p.add_argument("--version", default="1", help="bundle version")
        if command == "import-nnunet":
            p.add_argument("--training-data", required=True, help="what the model was trained on")
            p.add_argument("--configuration", help="which configuration, when the folder holds several")
            p.add_argument("--ignore-unmapped", action="store_true",
                           help="leave out labels whose names name no vertebra (instead of refusing)")
        p.set_defaults(handler=cmd_import_model, import_command=command)


def cmd_import_model(args: argparse.Namespace) -> int:
    from pipelines.model.bundles import verify_bundle
    from research.model_import import import_nnunet, import_totalsegmentator

    if args.import_command == "import-totalsegmentator":
        bundle = import_totalsegmentator(args.source, args.out, licence=args.licence, intended_use=args.intended_use,
                                         name=args.name or "totalsegmentator-vertebrae", version=args.version,
                                         folds=args.folds)
    else:
        bundle = import_nnunet(args.source, args.out, name=args.name or args.out.name, version=args.version,
                               licence=args.licence, intended_use=args.intended_use, training_data=args.training_data,
                               configuration=args.configuration, folds=args.folds,
                               ignore_unmapped=args.ignore_unmapped)
    verified = verify_bundle(bundle)
    levels = sorted(verified.label_map.items())
    print(f"{verified.name} {verified.version}: bundle written to {bundle} (folds {', '.join(verified.folds)})")
    print("  labels " + ", ".join(f"{k}={v}" for k, v in levels))
    print(f"  install it with: spine-node models install {bundle}")
    return 0
