"""The v2 recipe of the demo model (issue 12): v2 phantoms with auxiliary labels, 2 mm, warm start.

``python -m research.training_v2 --workdir DIR --out models/spine-phantom-demo`` (or
``make demo-model-v2``) renders the v2 phantoms, plans and preprocesses them with nnU-Net and
trains the v1 network shape warm-started from the v0.3.0 weights (taken from git history,
so the recipe does not depend on what ``models/`` holds now); see ``RECIPE_V2``.

Labels: the paper's T1-L5 (1-17) plus the auxiliary C7 (18), sacrum (19) and rib (20). The
bundle's manifest lists T1-L5 in ``label_map`` (reported) and the rest in
``auxiliary_labels`` (used for naming only, never reported).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import asdict, replace
from pathlib import Path

from pipelines.levels import LEVELS
from research.training import CONFIGURATION, PLANS, TRAINER, DemoRecipe

V0_3_0_WEIGHTS = "git:fac7426:models/spine-phantom-demo/nnunet/fold_all/checkpoint_final.pth"
"""The v0.3.0 checkpoint (sha256 8515864a...), as committed before v2 replaced it."""

RECIPE_V2 = DemoRecipe(
    n_cases=120, spacing_mm=2.0, patch_size=(80, 64, 64), features=(8, 16, 32, 64, 96), batch_size=2,
    epochs=7, iterations_per_epoch=50, val_iterations_per_epoch=2, optimizer="adamw", initial_lr=1e-3,
    batch_dice=True, seed_offset=0, warm_start=V0_3_0_WEIGHTS, generator="v2", render_processes=2)
"""Step 1 of the shipped v2 weights (seeds 0..119 of the v2 generator), warm-started from v0.3.0."""

STEPS_V2: list[dict] = [
    {},
    {"epochs": 16, "initial_lr": 5e-4, "warm_start": "previous"},
    {"epochs": 12, "initial_lr": 3e-4, "warm_start": "previous"},
]
"""The training steps: each a change of RECIPE_V2; "previous" warm-starts from the step before's final
checkpoint. The shipped run chose each step's epochs with a time budget (--budget-min) on shared cores;
the epochs written here are the ones it ran (see the bundle's manifest, recipe.steps)."""


def dataset_json_v2(num_training: int) -> dict:
    """nnU-Net dataset.json of the v2 phantoms: T1-L5 = 1-17, then C7, sacrum and rib."""
    from research.phantoms.v2.anatomy import AUXILIARY_LABELS

    labels = {"background": 0, **{level: i + 1 for i, level in enumerate(LEVELS)},
              **{name: label for label, name in AUXILIARY_LABELS.items()}}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": num_training, "file_ending": ".nii.gz",
            "name": "SpinePhantomV2",
            "description": "Synthetic spine CT phantoms v2 made by spine-node (research/phantoms/v2)"}


def _render_case(args: tuple[int, float, str]) -> str:
    """Render and write one training phantom (a worker's job)."""
    from research.phantoms.nifti import write_nnunet_case
    from research.phantoms.v2.generator import make_phantom_v2

    seed, spacing, raw = args
    phantom = make_phantom_v2(seed, spacing=(spacing,) * 3, matrix=None)
    write_nnunet_case(phantom, Path(raw), f"phantom_{seed:05d}")
    return f"{seed} {phantom.fov} {phantom.image.shape}"


def write_training_set_v2(raw: Path, recipe: DemoRecipe, log=print) -> Path:
    """Render the v2 training phantoms (seeds seed_offset..) into an nnU-Net raw dataset folder."""
    jobs = [(recipe.seed_offset + i, recipe.spacing_mm, str(raw)) for i in range(recipe.n_cases)]
    raw.mkdir(parents=True, exist_ok=True)
    if recipe.render_processes > 1:
        with multiprocessing.get_context("spawn").Pool(recipe.render_processes) as pool:
            for line in pool.imap_unordered(_render_case, jobs):
                log(f"rendered {line}")
    else:
        for job in jobs:
            log(f"rendered {_render_case(job)}")
    (raw / "dataset.json").write_text(json.dumps(dataset_json_v2(recipe.n_cases), indent=1))
    return raw


def manifest_v2(recipe: DemoRecipe, minutes: float, steps: list[dict] | None = None) -> dict:
    """Manifest fields of a v2 bundle: explicit T1-L5 label map plus the auxiliary labels."""
    from research.phantoms.v2.anatomy import AUXILIARY_LABELS

    return {
        "name": "spine-phantom-demo",
        "version": "0.4.0",
        "licence": ("Apache-2.0 (weights trained by spine-node on its own synthetic data; the phantoms' vertebra "
                    "shapes come from manual VerSe masks, CC BY-SA 4.0)"),
        "intended_use": ("DEMONSTRATION ONLY. Trained on synthetic phantoms; not a medical device and "
                         "not for clinical use. It shows the pipeline working end to end."),
        "training_data": (f"{recipe.n_cases} synthetic spine CT phantoms v2 (research/phantoms/v2: real VerSe vertebra "
                          f"shapes, ribs, organs, scanner effects), seeds {recipe.seed_offset}.."
                          f"{recipe.seed_offset + recipe.n_cases - 1}, rendered at {recipe.spacing_mm} mm isotropic; "
                          "no patient images"),
        "label_map": {str(i + 1): level for i, level in enumerate(LEVELS)},
        "auxiliary_labels": {str(label): name for label, name in AUXILIARY_LABELS.items()},
        "recipe": {**asdict(recipe), "training_minutes": round(minutes, 1),
                   "trainer": TRAINER, "configuration": CONFIGURATION, "plans": PLANS,
                   **({"steps": steps} if steps else {})},
    }


def prepare_data(workdir: Path, recipe: DemoRecipe, log=print) -> None:
    """Steps 1-2 of the recipe: render the v2 phantoms and let nnU-Net plan and preprocess them."""
    from research.training import plan_and_preprocess, set_nnunet_paths, write_training_set

    paths = set_nnunet_paths(workdir)
    log(f"rendering {recipe.n_cases} v2 training phantoms at {recipe.spacing_mm} mm")
    write_training_set(paths["nnUNet_raw"], recipe)
    log("nnU-Net fingerprint, plan and preprocessing")
    plan_and_preprocess(recipe)


def run_steps(workdir: Path, bundle_dir: Path, device_name: str = "cpu", start_step: int = 1,
              budget_min: float | None = None, log=print) -> Path:
    """Train STEPS_V2 from ``start_step`` on the preprocessed phantoms in ``workdir``; write the bundle.

    Each step's final checkpoint is kept as ``workdir/step<k>_checkpoint_final.pth`` so that a
    later step (or a restart from it) can warm-start from it. ``budget_min`` fits the last
    step into that many minutes (``fit_to_budget``); the epochs it ran are recorded.
    """
    import shutil

    from pipelines.model.bundles import write_bundle
    from research.training import FOLD, set_nnunet_paths, torch_threads, train

    set_nnunet_paths(workdir)
    torch_threads(device_name)
    record, output, started = [], None, time.time()
    for k in range(start_step, len(STEPS_V2) + 1):
        recipe = replace(RECIPE_V2, **STEPS_V2[k - 1], extra={})
        if recipe.warm_start == "previous":
            recipe.warm_start = str(workdir / f"step{k - 1}_checkpoint_final.pth")
        if budget_min and k == len(STEPS_V2):
            recipe.time_budget_min = budget_min
        t0 = time.time()
        log(f"step {k}: up to {recipe.epochs} epochs from {recipe.warm_start}, lr {recipe.initial_lr}")
        output = train(recipe, device_name)
        shutil.copy2(output / f"fold_{FOLD}" / "checkpoint_final.pth", workdir / f"step{k}_checkpoint_final.pth")
        record.append({"step": k, "warm_start": STEPS_V2[k - 1].get("warm_start", RECIPE_V2.warm_start),
                       "epochs": recipe.epochs, "epochs_run": recipe.extra.get("epochs_run"),
                       "initial_lr": recipe.initial_lr, "time_budget_min": recipe.time_budget_min,
                       "minutes": round((time.time() - t0) / 60, 1)})
        log(f"step {k} done: {record[-1]}")
    minutes = (time.time() - started) / 60
    return write_bundle(output, bundle_dir, manifest_v2(RECIPE_V2, minutes, record), FOLD)


def main(argv: list[str] | None = None) -> int:
    """Render, preprocess and train every step of the v2 recipe; write the bundle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("spine-node-data/train-demo-v2"))
    parser.add_argument("--out", type=Path, default=Path("spine-node-data/spine-phantom-demo-v2"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-data", action="store_true", help="use the workdir's already preprocessed phantoms")
    parser.add_argument("--start-step", type=int, default=1, help="resume at this step (needs the previous one's checkpoint)")
    parser.add_argument("--budget-min", type=float, help="fit the last step into this many minutes (shared CPUs)")
    args = parser.parse_args(argv)
    started = time.time()
    log = lambda m: print(time.strftime("%H:%M:%S"), m, flush=True)  # noqa: E731
    if not args.skip_data:
        prepare_data(args.workdir, RECIPE_V2, log)
    bundle = run_steps(args.workdir, args.out, args.device, args.start_step, args.budget_min, log)
    print(f"bundle written to {bundle} in {(time.time() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
