"""The recipe of the bundled demo model: phantoms -> nnU-Net v2 plan -> small network -> bundle.

``train_demo()`` reproduces ``models/spine-phantom-demo`` from scratch on a CPU:

1. render ``n_cases`` phantoms (seeds 0..n-1, never used for evaluation) directly at the
   model's spacing, with random HU, noise, blur and anatomy (domain randomisation);
2. nnU-Net v2's fingerprint, planning and preprocessing, unchanged;
3. the 3d_fullres plan edited to a small network (few stages, few features) and a patch
   that sees several vertebrae with their ribs, so that it trains in about an hour on two
   cores and ships in a few MB;
4. ``nnUNetTrainerNoMirroring``: mirroring would flip head and feet and teach the network
   that T1 and L5 look alike, which ruins level identification;
5. the final checkpoint, stripped of its optimizer state, is written as a model bundle
   with a manifest (``models.write_bundle``).

nnU-Net reads its folders from environment variables at import time, so they are set
before the first nnunetv2 import. Validation and export start worker processes that
re-import the caller: scripts calling this must guard with ``if __name__ == "__main__"``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from research.phantoms.generator import make_phantom
from research.phantoms.nifti import nnunet_dataset_json, write_nnunet_case

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_SpinePhantom"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerNoMirroring"
PLANS = "nnUNetPlans"
FOLD = "all"


@dataclass
class DemoRecipe:
    """Every knob of the demo model's training, recorded in its manifest."""

    n_cases: int = 80
    spacing_mm: float = 2.5
    patch_size: tuple[int, int, int] = (80, 64, 64)
    features: tuple[int, ...] = (8, 16, 32, 64, 96)
    batch_size: int = 2
    epochs: int = 30
    iterations_per_epoch: int = 50
    val_iterations_per_epoch: int = 2
    optimizer: str = "adamw"  # "adamw" or nnU-Net's default "sgd"
    initial_lr: float = 1e-3
    batch_dice: bool = True
    seed_offset: int = 0
    warm_start: str | None = None  # a checkpoint whose network weights start the training ("git:REV:PATH" works)
    generator: str = "v1"  # "v1": research.phantoms.generator; "v2": research.phantoms.v2 (real shapes, aux labels)
    render_processes: int = 1  # phantoms rendered in parallel (v2)
    time_budget_min: float | None = None  # fit the epochs into this many minutes of training (see fit_to_budget)
    extra: dict = field(default_factory=dict)


def set_nnunet_paths(workdir: Path) -> dict[str, Path]:
    """Point nnU-Net's three folders into ``workdir`` (before importing nnunetv2)."""
    paths = {name: workdir / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    # One augmentation worker: nnU-Net's default (12 for an unknown host) thrashes two cores.
    os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, (os.cpu_count() or 2) // 2)))
    return paths


def write_training_set(raw_root: Path, recipe: DemoRecipe) -> Path:
    """Render the training phantoms into an nnU-Net raw dataset and return its folder."""
    raw = raw_root / DATASET_NAME
    if raw.exists():
        shutil.rmtree(raw)
    if recipe.generator == "v2":
        from research.training_v2 import write_training_set_v2
        return write_training_set_v2(raw, recipe)
    spacing = (recipe.spacing_mm,) * 3
    for i in range(recipe.n_cases):
        seed = recipe.seed_offset + i
        phantom = make_phantom(seed, spacing=spacing, matrix=None)
        write_nnunet_case(phantom, raw, f"phantom_{seed:05d}")
    (raw / "dataset.json").write_text(json.dumps(nnunet_dataset_json(recipe.n_cases), indent=1))
    return raw


def shrink_plan(plans: dict, recipe: DemoRecipe) -> dict:
    """Edit the 3d_fullres configuration of nnU-Net's plan to the recipe's small network."""
    cfg = plans["configurations"][CONFIGURATION]
    n = len(recipe.features)
    shape = list(recipe.patch_size)
    strides = [[1, 1, 1]]
    for _ in range(n - 1):
        step = [2 if s >= 8 else 1 for s in shape]
        shape = [s // k for s, k in zip(shape, step)]
        strides.append(step)
    kwargs = cfg["architecture"]["arch_kwargs"]
    kwargs.update(n_stages=n, features_per_stage=list(recipe.features), strides=strides,
                  kernel_sizes=[[3, 3, 3]] * n, n_conv_per_stage=[2] * n,
                  n_conv_per_stage_decoder=[2] * (n - 1))
    cfg["patch_size"] = list(recipe.patch_size)
    cfg["batch_size"] = recipe.batch_size
    cfg["batch_dice"] = recipe.batch_dice
    return plans


def plan_and_preprocess(recipe: DemoRecipe, num_processes: int = 2) -> dict:
    """nnU-Net's fingerprint, plan (then shrunk) and preprocessing of the phantom dataset."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess_dataset)
    from nnunetv2.paths import nnUNet_preprocessed

    extract_fingerprints([DATASET_ID], num_processes=num_processes, check_dataset_integrity=True,
                         show_progress_bar=False)
    plan_experiments([DATASET_ID])
    plans_file = Path(nnUNet_preprocessed) / DATASET_NAME / f"{PLANS}.json"
    plans = shrink_plan(json.loads(plans_file.read_text()), recipe)
    for other in ("2d", "3d_lowres", "3d_cascade_fullres"):
        plans["configurations"].pop(other, None)
    plans_file.write_text(json.dumps(plans, indent=1))
    preprocess_dataset(DATASET_ID, PLANS, (CONFIGURATION,), [num_processes], show_progress_bar=False)
    return plans


def train(recipe: DemoRecipe, device_name: str = "cpu") -> Path:
    """Train the plain nnU-Net trainer (no mirroring) with the recipe's schedule; return the output folder."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring)

    torch.manual_seed(recipe.seed_offset)
    np.random.seed(recipe.seed_offset)
    pre = Path(nnUNet_preprocessed) / DATASET_NAME
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = nnUNetTrainerNoMirroring(plans, CONFIGURATION, FOLD, dataset_json, device=torch.device(device_name))
    trainer.num_epochs = recipe.epochs
    trainer.num_iterations_per_epoch = recipe.iterations_per_epoch
    trainer.num_val_iterations_per_epoch = recipe.val_iterations_per_epoch
    trainer.initial_lr = recipe.initial_lr
    if recipe.optimizer == "adamw":
        use_adamw(trainer)
    trainer.save_every = max(recipe.epochs // 4, 1) if recipe.generator == "v1" else 5  # v2: a checkpoint every 5 epochs
    if recipe.warm_start:
        warm_start(trainer, resolve_checkpoint(recipe.warm_start, Path(nnUNet_preprocessed).parent))
    if recipe.time_budget_min:
        fit_to_budget(trainer, recipe.time_budget_min * 60.0)
    try:
        trainer.run_training()
    except _BudgetSpent:
        trainer.on_train_end()  # saves checkpoint_final.pth as a finished run would
    recipe.extra["epochs_run"] = int(trainer.current_epoch)
    return Path(trainer.output_folder_base)  # the trained-model folder (dataset.json, plans.json, fold_*)


class _BudgetSpent(Exception):
    """Raised at an epoch's end when the time budget's epochs are done."""


def fit_to_budget(trainer, budget_s: float) -> None:
    """Shorten the run to the epochs that fit into ``budget_s`` on this (shared) machine.

    After the first epoch (whose learning rate is the initial one whatever the schedule),
    the number of epochs is fixed once to what fits at that epoch's pace, and the poly
    learning-rate schedule is stretched to end there, so the run still decays to 0 and
    setting ``epochs`` to the number recorded reproduces the schedule. Should the machine
    slow down later, the run also stops when the next epoch would not fit.
    """
    import types

    started = time.time()
    original = trainer.on_epoch_end

    def on_epoch_end(self):
        original()
        elapsed = time.time() - started
        done = self.current_epoch  # on_epoch_end has counted the epoch just finished
        if done == 1:
            self.num_epochs = max(1, min(self.num_epochs, int(budget_s // max(elapsed, 1e-6))))
            self.lr_scheduler.max_steps = self.num_epochs
            self.print_to_log_file(f"time budget {budget_s / 60:.0f} min: {self.num_epochs} epochs")
        if done >= self.num_epochs or elapsed + elapsed / done > budget_s:
            raise _BudgetSpent

    trainer.on_epoch_end = types.MethodType(on_epoch_end, trainer)  # the trained-model folder (dataset.json, plans.json, fold_*)


def resolve_checkpoint(spec: str, workdir: Path) -> Path:
    """A checkpoint path, or ``git:REV:PATH`` (a file of this repository's history) copied into ``workdir``."""
    if not spec.startswith("git:"):
        return Path(spec)
    import subprocess

    _, rev, path = spec.split(":", 2)
    repo = Path(__file__).resolve().parents[1]
    out = workdir / f"warm_start_{rev}.pth"
    blob = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, check=True).stdout
    out.write_bytes(blob)
    return out


def warm_start(trainer, checkpoint: Path) -> None:
    """Start from an earlier run's network weights (all layers, the output layer included).

    nnU-Net's own ``load_pretrained_weights`` skips the output layer because it is meant
    for transfer to new labels; continuing the demo model's training keeps the labels.
    When the new network has more output classes (v2's auxiliary labels), the old classes'
    output weights are copied and the new ones keep their random start.
    """
    import torch

    trainer.initialize()
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    network = getattr(trainer.network, "_orig_mod", trainer.network)
    own = network.state_dict()
    for key, value in weights.items():
        if key not in own:
            continue
        if own[key].shape == value.shape:
            own[key] = value
        elif own[key].ndim == value.ndim and own[key].shape[1:] == value.shape[1:] and own[key].shape[0] > value.shape[0]:
            own[key][: value.shape[0]] = value  # output layer: the old classes keep their weights
    network.load_state_dict(own)


def use_adamw(trainer) -> None:
    """Swap nnU-Net's SGD for AdamW (as its nnUNetTrainerAdam variant does) on this trainer instance.

    With a CPU budget of a couple of thousand iterations, SGD (momentum 0.99) sat on the
    all-background solution for the first 350+ iterations; AdamW leaves it quickly. The
    instance keeps the class name nnUNetTrainerNoMirroring, so nnU-Net's predictor (and
    nnUNetv2_predict) load the checkpoint as usual.
    """
    import types

    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from torch.optim import AdamW

    def configure_optimizers(self):
        optimizer = AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay, amsgrad=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    trainer.configure_optimizers = types.MethodType(configure_optimizers, trainer)


def train_demo(workdir: Path, bundle_dir: Path, recipe: DemoRecipe | None = None,
               device_name: str = "cpu", log=print) -> Path:
    """The whole recipe, end to end: returns the bundle folder written at ``bundle_dir``."""
    from pipelines.model.bundles import write_bundle

    recipe = recipe or DemoRecipe()
    paths = set_nnunet_paths(workdir)
    torch_threads(device_name)
    started = time.time()
    log(f"rendering {recipe.n_cases} training phantoms at {recipe.spacing_mm} mm")
    write_training_set(paths["nnUNet_raw"], recipe)
    log("nnU-Net fingerprint, plan and preprocessing")
    plan_and_preprocess(recipe)
    log(f"training {recipe.epochs} epochs x {recipe.iterations_per_epoch} iterations on {device_name}")
    output = train(recipe, device_name)
    minutes = (time.time() - started) / 60
    log(f"trained in {minutes:.1f} min; writing the bundle to {bundle_dir}")
    fields = demo_manifest(recipe, minutes)
    if recipe.generator == "v2":
        from research.training_v2 import manifest_v2
        fields = manifest_v2(recipe, minutes)
    return write_bundle(output, bundle_dir, fields, FOLD)


def torch_threads(device_name: str) -> None:
    """Use every core for the CPU training (torch defaults to half of them on some builds)."""
    if device_name == "cpu":
        import torch
        torch.set_num_threads(os.cpu_count() or 1)


def demo_manifest(recipe: DemoRecipe, minutes: float) -> dict:
    """The manifest fields of the demo model that describe what it is and how it was made."""
    return {
        "name": "spine-phantom-demo",
        "version": "0.1.0",
        "licence": "Apache-2.0 (weights trained by spine-node on its own synthetic data)",
        "intended_use": ("DEMONSTRATION ONLY. Trained on synthetic phantoms; not a medical device and "
                         "not for clinical use. It shows the pipeline working end to end."),
        "training_data": (f"{recipe.n_cases} synthetic spine CT phantoms from pipelines/phantom.py, "
                          f"seeds {recipe.seed_offset}..{recipe.seed_offset + recipe.n_cases - 1}, "
                          f"rendered at {recipe.spacing_mm} mm isotropic; no patient data"),
        "label_preset": "paper",
        "recipe": {**asdict(recipe), "training_minutes": round(minutes, 1),
                   "trainer": TRAINER, "configuration": CONFIGURATION, "plans": PLANS},
    }
