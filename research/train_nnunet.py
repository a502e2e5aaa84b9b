"""The paper's baseline, reproducible: nnU-Net v2 on an imported dataset, k-fold CV, one verified bundle.

``spine-node train --dataset DATASET_DIR --out BUNDLE_DIR`` runs the protocol of
"An open annotated dataset and baseline machine learning model for segmentation of
vertebrae with metastatic bone lesions from CT" by default: nnU-Net v2, ``3d_fullres``,
the plain ``nnUNetTrainer`` with its own schedule (1000 epochs x 250 iterations), 3-fold
cross-validation, on CUDA. Every setting is a ``TrainingProtocol`` field, and so a
command-line option: configuration, folds, trainer, epochs, iterations, and a plans
override (a JSON object merged into the configuration, e.g. a small network for the CPU).

Steps, each recorded in ``WORKDIR/state.json`` so that an interrupted run resumes where it
stopped (``spine-node train`` again with the same arguments):

1. the imported dataset is linked into ``nnUNet_raw`` as ``Dataset<id>_<name>``;
2. nnU-Net's fingerprint, plan (plus the override) and preprocessing, once;
3. ``splits_final.json``: a seeded k-fold split of the cases, written once and kept;
4. each fold: done if its ``checkpoint_final.pth`` and validation exist, resumed from
   ``checkpoint_latest.pth`` if the run stopped inside it, otherwise started; on a Dask
   cluster (``--dask-scheduler``) one fold runs per GPU worker (resource ``GPU: 1``),
   the work folder being on a file system the workers share;
5. the cross-validation figures from each fold's held-out cases (nnU-Net's validation
   predictions, scored per vertebra by ``research.paper_validation``);
6. the bundle: every fold's checkpoint without optimizer state (an ensemble of the k
   folds, as nnU-Net predicts with ``-f 0 1 2``), and a manifest recording the data
   (dataset digest, cases, Table-2 report), the folds, the CV figures and the software.

GPU cost of the full recipe, an **estimate** from nnU-Net's documented figures (not measured
here): nnU-Net's ``documentation/expected_epoch_times.md`` gives 3d_fullres epoch times (250
iterations, mixed precision) of 44-51 s on an A100 40GB, 76-86 s on a V100 32GB and 107-148 s on
an RTX 2080 Ti (MSD Heart, Liver, Prostate). The trainer runs 1000 epochs, so one fold takes
about 12-14 GPU hours on an A100 and 30-41 on a 2080 Ti, and **the 3 folds about 37-43 GPU hours
on an A100 (up to ~125 on a 2080 Ti)**, one fold per GPU in parallel with ``--dask-scheduler``;
plus nnU-Net's preprocessing on the CPU (tens of minutes for 55 CTs) and a few minutes of
validation per fold. A CT vertebra plan with a larger patch than those datasets' may sit at the
slower end. ``FULL_RECIPE_GPU_HOURS`` holds the A100 range.

nnU-Net reads its folders from environment variables at import: they are set before the
first nnunetv2 import. Validation starts worker processes with ``spawn``: scripts that
call ``train`` must guard with ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from research.errors import TrainingError

PAPER_CONFIGURATION = "3d_fullres"
PAPER_FOLDS = 3
PAPER_TRAINER = "nnUNetTrainer"
FULL_RECIPE_GPU_HOURS = (37, 43)
"""Estimate (not measured) of the full recipe's A100 time, 3 folds x 1000 epochs: see the module docstring."""


@dataclass
class TrainingProtocol:
    """Every knob of the training, recorded in the bundle's manifest. The defaults are the paper's."""

    configuration: str = PAPER_CONFIGURATION
    n_folds: int = PAPER_FOLDS
    folds: tuple[int, ...] | None = None  # None: all of 0..n_folds-1
    trainer: str = PAPER_TRAINER
    plans: str = "nnUNetPlans"
    epochs: int | None = None  # None: the trainer's own (1000 for nnUNetTrainer)
    iterations_per_epoch: int | None = None  # None: 250
    val_iterations_per_epoch: int | None = None  # None: 50
    save_every: int | None = None  # epochs between resumable checkpoints; None: nnU-Net's 50
    device: str = "cuda"
    plans_override: dict = field(default_factory=dict)  # merged into plans["configurations"][configuration]
    dataset_id: int = 600
    split_seed: int = 12345
    augmentation_workers: int | None = None  # nnUNet_n_proc_DA; None: nnU-Net's choice (half the cores here)
    name: str = "spine-mets-nnunet"
    version: str = "1.0.0"

    def fold_list(self) -> list[int]:
        folds = list(range(self.n_folds)) if self.folds is None else list(self.folds)
        bad = [f for f in folds if not 0 <= f < self.n_folds]
        if bad or not folds:
            raise TrainingError(f"folds {bad or folds} are not among 0..{self.n_folds - 1}")
        return folds

    def recorded(self) -> dict:
        """The fields that decide the result (a resumed run must have the same ones)."""
        data = asdict(self)
        for transient in ("folds", "device", "augmentation_workers", "name", "version"):
            data.pop(transient)
        return data

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingProtocol":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TrainingError(f"unknown protocol field(s) {', '.join(sorted(unknown))}")
        if values.get("folds") is not None:
            values = {**values, "folds": tuple(values["folds"])}
        return cls(**values)


# --- the dataset -------------------------------------------------------------------------------------------

def dataset_digest(dataset_dir: Path) -> str:
    """sha256 naming an imported dataset: of each file's relative path and sha256 (images, labels, tables)."""
    from pipelines.model.bundles import sha256_of

    digest = hashlib.sha256()
    files = sorted(p for sub in ("imagesTr", "labelsTr") for p in (dataset_dir / sub).glob("*.nii.gz"))
    files += [dataset_dir / n for n in ("dataset.json", "lesions.csv") if (dataset_dir / n).is_file()]
    for path in files:
        digest.update(f"{path.relative_to(dataset_dir)}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def case_ids(dataset_dir: Path) -> list[str]:
    """The training cases of a raw dataset, from its labelsTr (sorted)."""
    ids = sorted(p.name[: -len(".nii.gz")] for p in (dataset_dir / "labelsTr").glob("*.nii.gz"))
    if not ids:
        raise TrainingError(f"{dataset_dir}: no labelsTr/*.nii.gz (import a dataset with spine-node dataset import-*)")
    return ids


def check_dataset(dataset_dir: Path, n_folds: int) -> list[str]:
    """The case ids, or a TrainingError if the folder is not an imported dataset or too small for the folds."""
    if not (dataset_dir / "dataset.json").is_file():
        raise TrainingError(f"{dataset_dir} is not a raw dataset: it has no dataset.json")
    ids = case_ids(dataset_dir)
    missing = [c for c in ids if not (dataset_dir / "imagesTr" / f"{c}_0000.nii.gz").is_file()]
    if missing:
        raise TrainingError(f"{dataset_dir}: labels without images: {', '.join(missing[:5])}")
    if len(ids) < n_folds:
        raise TrainingError(f"{dataset_dir}: {len(ids)} cases cannot make {n_folds} folds")
    return ids


def make_splits(ids: list[str], n_folds: int, seed: int) -> list[dict]:
    """A seeded k-fold split of the cases: each case is held out in exactly one fold."""
    rng = np.random.default_rng(seed)
    shuffled = [ids[i] for i in rng.permutation(len(ids))]
    held = [sorted(shuffled[f::n_folds]) for f in range(n_folds)]
    return [{"train": sorted(c for c in ids if c not in held[f]), "val": held[f]} for f in range(n_folds)]


# --- the resumable state ------------------------------------------------------------------------------------

class State:
    """``WORKDIR/state.json``: the protocol and dataset a work folder belongs to, and the steps done."""

    def __init__(self, workdir: Path):
        self.path = workdir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def bind(self, protocol: TrainingProtocol, digest: str) -> None:
        """Start or resume; refuse a work folder that was started for another protocol or dataset."""
        if self.data:
            if self.data["dataset_sha256"] != digest:
                raise TrainingError(f"{self.path.parent} was started on another dataset; give a new --workdir")
            if self.data["protocol"] != protocol.recorded():
                changed = sorted(k for k, v in protocol.recorded().items() if self.data["protocol"].get(k) != v)
                raise TrainingError(f"{self.path.parent} was started with other settings ({', '.join(changed)}); "
                                    f"give the same ones to resume, or a new --workdir")
            return
        self.data = {"protocol": protocol.recorded(), "dataset_sha256": digest, "steps": {}}
        self.save()

    def done(self, step: str) -> bool:
        return step in self.data.get("steps", {})

    def mark(self, step: str, value=True) -> None:
        self.data.setdefault("steps", {})[step] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


# --- nnU-Net steps ------------------------------------------------------------------------------------------

def nnunet_environment(workdir: Path, protocol: TrainingProtocol) -> dict[str, Path]:
    """Point nnU-Net's folders into the work folder (before the first nnunetv2 import)."""
    paths = {name: workdir / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, os.cpu_count() or 1))))
    if protocol.device == "cpu":
        os.environ.setdefault("nnUNet_compile", "f")
    return paths


def dataset_name(protocol: TrainingProtocol, dataset_dir: Path) -> str:
    name = json.loads((dataset_dir / "dataset.json").read_text()).get("name", "Spine")
    cleaned = "".join(ch for ch in name if ch.isalnum()) or "Spine"
    return f"Dataset{protocol.dataset_id:03d}_{cleaned}"


def link_raw(raw_root: Path, name: str, dataset_dir: Path) -> Path:
    """The dataset in nnUNet_raw under nnU-Net's name: links to the imported files, nothing copied."""
    raw = raw_root / name
    raw.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr"):
        link = raw / sub
        if not link.exists():
            link.symlink_to((dataset_dir / sub).resolve(), target_is_directory=True)
    dataset = json.loads((dataset_dir / "dataset.json").read_text())
    dataset["numTraining"] = len(case_ids(dataset_dir))
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return raw


def plan_and_preprocess(protocol: TrainingProtocol, name: str, processes: int) -> None:
    """nnU-Net's fingerprint, plan, the override, and preprocessing of the one configuration."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess_dataset)
    from nnunetv2.paths import nnUNet_preprocessed

    extract_fingerprints([protocol.dataset_id], num_processes=processes, check_dataset_integrity=True,
                         show_progress_bar=False)
    plan_experiments([protocol.dataset_id])
    plans_file = Path(nnUNet_preprocessed) / name / f"{protocol.plans}.json"
    plans = json.loads(plans_file.read_text())
    if protocol.configuration not in plans["configurations"]:
        raise TrainingError(f"nnU-Net planned no {protocol.configuration!r} configuration for this dataset "
                            f"(planned: {', '.join(plans['configurations'])})")
    apply_override(plans, protocol)
    plans_file.write_text(json.dumps(plans, indent=1))
    preprocess_dataset(protocol.dataset_id, protocol.plans, (protocol.configuration,), [processes],
                       show_progress_bar=False)


def apply_override(plans: dict, protocol: TrainingProtocol) -> dict:
    """Merge the protocol's override into the configuration (``architecture.arch_kwargs`` merged too)."""
    cfg = plans["configurations"][protocol.configuration]
    for key, value in protocol.plans_override.items():
        if key == "arch_kwargs":
            cfg["architecture"]["arch_kwargs"].update(value)
        else:
            cfg[key] = value
    return plans


def fold_folder(results: Path, name: str, protocol: TrainingProtocol, fold: int) -> Path:
    return results / name / f"{protocol.trainer}__{protocol.plans}__{protocol.configuration}" / f"fold_{fold}"


def fold_is_done(folder: Path) -> bool:
    return (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()


def train_fold(workdir: str, protocol_values: dict, name: str, fold: int) -> str:
    """Train (or resume, or only validate) one fold; returns its folder. Runs in-process or on a Dask worker."""
    protocol = TrainingProtocol.from_dict(protocol_values)
    paths = nnunet_environment(Path(workdir), protocol)
    if protocol.augmentation_workers is not None:  # read by the data loaders (0 would break the planner)
        os.environ["nnUNet_n_proc_DA"] = str(protocol.augmentation_workers)
    folder = fold_folder(paths["nnUNet_results"], name, protocol, fold)
    if fold_is_done(folder):
        return str(folder)
    import torch
    from nnunetv2.paths import nnUNet_preprocessed

    trainer_class = _trainer_class(protocol.trainer)
    pre = Path(nnUNet_preprocessed) / name
    plans = json.loads((pre / f"{protocol.plans}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((pre / "dataset.json").read_text())
    device = _device(protocol.device)
    torch.manual_seed(protocol.split_seed + fold)
    trainer = trainer_class(plans, protocol.configuration, fold, dataset_json, device=device)
    for attr, value in (("num_epochs", protocol.epochs), ("num_iterations_per_epoch", protocol.iterations_per_epoch),
                        ("num_val_iterations_per_epoch", protocol.val_iterations_per_epoch),
                        ("save_every", protocol.save_every)):
        if value is not None:
            setattr(trainer, attr, value)
    if (folder / "checkpoint_final.pth").is_file():
        trainer.load_checkpoint(str(folder / "checkpoint_final.pth"))  # trained; only the validation is missing
        trainer.perform_actual_validation(False)
        return str(folder)
    if (folder / "checkpoint_latest.pth").is_file():
        trainer.load_checkpoint(str(folder / "checkpoint_latest.pth"))
    trainer.run_training()
    trainer.perform_actual_validation(False)
    return str(folder)


def _trainer_class(name: str):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    import nnunetv2

    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                        "nnunetv2.training.nnUNetTrainer")
    if found is None:
        raise TrainingError(f"nnU-Net has no trainer class {name!r}")
    return found


def _device(name: str):
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("CUDA is not available here, and the paper's protocol trains on a GPU: give "
                            "--device cpu (with a small --plans-override and few --epochs) to try it on the CPU")
    return torch.device(name)


def run_folds(workdir: Path, protocol: TrainingProtocol, name: str, folds: list[int], state: State,
              dask_scheduler: str | None, log) -> dict[int, Path]:
    """Every fold, here one after another, or one per GPU worker of a Dask cluster."""
    values = {**asdict(protocol), "folds": None}
    if dask_scheduler:
        return run_folds_on_dask(dask_scheduler, str(workdir), values, name, folds, log)
    done = {}
    for fold in folds:
        folder = fold_folder(workdir / "nnUNet_results", name, protocol, fold)
        if fold_is_done(folder):
            log(f"fold {fold}: already trained and validated, kept")
            done[fold] = folder
            continue
        started = time.time()
        log(f"fold {fold}: {fold_status(folder)}")
        done[fold] = Path(train_fold(str(workdir), values, name, fold))
        state.mark(f"fold_{fold}", round(time.time() - started, 1))
        log(f"fold {fold}: done in {(time.time() - started) / 60:.1f} min")
    return done


def fold_status(folder: Path) -> str:
    """What ``train_fold`` is about to do with a fold that is not done, in words."""
    if (folder / "checkpoint_final.pth").is_file():
        return "trained; running its validation"
    if (folder / "checkpoint_latest.pth").is_file():
        return "resuming from its latest checkpoint"
    return "training"


def run_folds_on_dask(address: str, workdir: str, values: dict, name: str, folds: list[int], log,
                      client_factory=None) -> dict[int, Path]:
    """Submit one ``train_fold`` per fold to the Dask scheduler at ``address``, each needing resource GPU=1."""
    if client_factory is None:
        from distributed import Client as client_factory
    try:
        client = client_factory(address)
    except (OSError, TimeoutError, ValueError) as exc:
        raise TrainingError(f"cannot reach the Dask scheduler at {address} ({exc})") from None
    try:
        futures = {fold: client.submit(train_fold, workdir, values, name, fold, resources={"GPU": 1}, pure=False,
                                       key=f"spine-node-train-{name}-fold-{fold}") for fold in folds}
        log(f"submitted folds {', '.join(map(str, folds))} to {address} (one GPU worker each)")
        return {fold: Path(future.result()) for fold, future in futures.items()}
    finally:
        client.close()


# --- the bundle ----------------------------------------------------------------------------------------------

def software_versions() -> dict:
    """Versions of what made the weights."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("spine-node", "nnunetv2", "torch", "dynamic-network-architectures", "numpy", "SimpleITK"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    try:
        import torch

        found["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            found["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return found


def write_cv_bundle(trained: Path, folds: list[int], bundle_dir: Path, manifest_fields: dict) -> Path:
    """A bundle of the k fold checkpoints (optimizer state dropped), verified, renamed into place."""
    import torch

    from pipelines.model.bundles import FORMAT, NNUNET_FOLDER, publish_bundle, sha256_of

    bundle_dir = Path(bundle_dir)
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=bundle_dir.parent))
    try:
        for name in ("dataset.json", "plans.json"):
            (staging / NNUNET_FOLDER).mkdir(exist_ok=True)
            shutil.copy2(trained / name, staging / NNUNET_FOLDER / name)
        checkpoints = {}
        for fold in folds:
            state = torch.load(trained / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu",
                               weights_only=False)
            state.pop("optimizer_state", None)
            state.pop("grad_scaler_state", None)
            relative = f"{NNUNET_FOLDER}/fold_{fold}/checkpoint_final.pth"
            (staging / relative).parent.mkdir(parents=True)
            torch.save(state, staging / relative)
            checkpoints[relative] = sha256_of(staging / relative)
        manifest = {"format": FORMAT, **manifest_fields,
                    "nnunet": {"folder": NNUNET_FOLDER, "folds": [str(f) for f in folds],
                               "checkpoint_name": "checkpoint_final.pth", **manifest_fields.get("nnunet", {})},
                    "checkpoints": checkpoints}
        return publish_bundle(staging, manifest, bundle_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def manifest_fields(protocol: TrainingProtocol, dataset_dir: Path, digest: str, splits: list[dict],
                    folds: list[int], cv: dict, minutes: float) -> dict:
    """What the bundle's manifest says about the model: data, folds, CV figures, software, protocol."""
    report_path = dataset_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return {
        "name": protocol.name,
        "version": protocol.version,
        "licence": "weights trained by the user with spine-node; the training data's licence applies "
                   "(TCIA Spine-Mets-CT-SEG: CC BY 4.0)",
        "intended_use": "RESEARCH ONLY: vertebra segmentation T1-L5 reproduced from the Spine-Mets-CT-SEG paper's "
                        "protocol; not a medical device",
        "training_data": (f"{dataset_dir.name}: {len(case_ids(dataset_dir))} cases, dataset sha256 {digest[:16]}..."),
        "label_preset": "paper",
        "data": {"dataset": str(dataset_dir), "dataset_sha256": digest, "cases": case_ids(dataset_dir),
                 "report": report.get("imported"), "paper_table_2": report.get("paper_table_2")},
        "cross_validation": {"n_folds": protocol.n_folds, "folds_trained": folds, "splits": splits, **cv},
        "protocol": {**asdict(protocol), "training_minutes": round(minutes, 1)},
        "software": software_versions(),
        "nnunet": {"trainer": protocol.trainer, "configuration": protocol.configuration, "plans": protocol.plans},
    }


# --- the whole protocol ----------------------------------------------------------------------------------------

def train(dataset_dir: Path | str, bundle_dir: Path | str, protocol: TrainingProtocol | None = None,
          workdir: Path | str | None = None, dask_scheduler: str | None = None, log=print) -> Path:
    """The protocol end to end (resumable): returns the verified bundle folder."""
    from research.paper_validation import cross_validation_figures

    protocol = protocol or TrainingProtocol()
    dataset_dir, bundle_dir = Path(dataset_dir).resolve(), Path(bundle_dir)
    workdir = Path(workdir) if workdir else bundle_dir.parent / f"{bundle_dir.name}.work"
    folds = protocol.fold_list()
    ids = check_dataset(dataset_dir, protocol.n_folds)
    if not dask_scheduler and protocol.device.startswith("cuda"):
        _device(protocol.device)  # refuse early, before an hour of preprocessing
    started = time.time()
    digest = dataset_digest(dataset_dir)
    state = State(workdir)
    state.bind(protocol, digest)
    paths = nnunet_environment(workdir, protocol)
    name = dataset_name(protocol, dataset_dir)
    link_raw(paths["nnUNet_raw"], name, dataset_dir)
    if not state.done("preprocessed"):
        log(f"nnU-Net fingerprint, plan and preprocessing of {len(ids)} cases ({protocol.configuration})")
        plan_and_preprocess(protocol, name, max(1, min(4, os.cpu_count() or 1)))
        state.mark("preprocessed")
    splits_file = paths["nnUNet_preprocessed"] / name / "splits_final.json"
    if not splits_file.is_file():
        splits_file.write_text(json.dumps(make_splits(ids, protocol.n_folds, protocol.split_seed), indent=1))
    splits = json.loads(splits_file.read_text())
    fold_dirs = run_folds(workdir, protocol, name, folds, state, dask_scheduler, log)
    lesions = _lesion_table(dataset_dir)
    cv = cross_validation_figures({f: d / "validation" / "summary.json" for f, d in fold_dirs.items()}, lesions)
    minutes = (time.time() - started) / 60
    trained = fold_folder(paths["nnUNet_results"], name, protocol, folds[0]).parent
    fields_ = manifest_fields(protocol, dataset_dir, digest, splits, folds, cv, minutes)
    bundle = write_cv_bundle(trained, folds, bundle_dir, fields_)
    state.mark("bundle", str(bundle))
    return bundle


def _lesion_table(dataset_dir: Path) -> dict[tuple[str, str], str]:
    from research.datasets.raw import read_lesion_table

    return read_lesion_table(dataset_dir) if (dataset_dir / "lesions.csv").is_file() else {}
