"""The paper's training protocol (research/train_nnunet.py, spine-node train).

The fast tests check the protocol's parts (defaults, splits, resumable state, override, the
Dask submission); the slow one imports TCIA-shaped phantoms, trains a tiny 3-fold model on
the CPU in a child process (nnU-Net reads its folders at import), checks the bundle, then
interrupts a fold and resumes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from research.errors import TrainingError
from research.train_nnunet import (FULL_RECIPE_GPU_HOURS, State, TrainingProtocol, apply_override, make_splits,
                                   run_folds_on_dask)

TINY_PLANS = {"patch_size": [32, 32, 32], "batch_size": 2,
              "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16],
                              "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "kernel_sizes": [[3, 3, 3]] * 3,
                              "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}}


def test_the_default_protocol_is_the_papers():
    protocol = TrainingProtocol()
    assert (protocol.configuration, protocol.n_folds, protocol.trainer, protocol.device) == \
        ("3d_fullres", 3, "nnUNetTrainer", "cuda")
    assert protocol.fold_list() == [0, 1, 2]
    assert protocol.epochs is None  # the trainer's own 1000 epochs
    low, high = FULL_RECIPE_GPU_HOURS
    assert 0 < low < high


def test_train_cli_defaults_are_the_papers_protocol():
    from dicom_node.cli.main import build_parser
    from dicom_node.cli.train import protocol_from_args

    args = build_parser().parse_args(["train", "--dataset", "d", "--out", "b"])
    assert protocol_from_args(args).recorded() == TrainingProtocol().recorded()


def test_splits_hold_each_case_out_exactly_once_and_are_the_same_every_time():
    ids = [f"case{i:02d}" for i in range(55)]
    splits = make_splits(ids, 3, 12345)
    held = [c for split in splits for c in split["val"]]
    assert sorted(held) == ids
    assert [len(s["val"]) for s in splits] == [19, 18, 18]
    for split in splits:
        assert set(split["train"]) | set(split["val"]) == set(ids) and not set(split["train"]) & set(split["val"])
    assert make_splits(ids, 3, 12345) == splits
    assert make_splits(ids, 3, 1) != splits


def test_folds_outside_the_cross_validation_are_refused():
    with pytest.raises(TrainingError, match="not among 0..2"):
        TrainingProtocol(folds=(3,)).fold_list()


def test_a_work_folder_resumes_only_with_the_same_protocol_and_dataset(tmp_path):
    State(tmp_path).bind(TrainingProtocol(epochs=5), "digest-1")
    State(tmp_path).bind(TrainingProtocol(epochs=5, device="cpu", folds=(1,)), "digest-1")  # same run, other machine
    with pytest.raises(TrainingError, match=r"other settings \(epochs\)"):
        State(tmp_path).bind(TrainingProtocol(epochs=6), "digest-1")
    with pytest.raises(TrainingError, match="another dataset"):
        State(tmp_path).bind(TrainingProtocol(epochs=5), "digest-2")


def test_plans_override_merges_into_the_configuration_and_its_network():
    plans = {"configurations": {"3d_fullres": {"patch_size": [128, 128, 128], "batch_size": 2,
                                               "architecture": {"arch_kwargs": {"n_stages": 6, "norm_op": "x"}}}}}
    apply_override(plans, TrainingProtocol(plans_override=TINY_PLANS))
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [32, 32, 32]
    assert cfg["architecture"]["arch_kwargs"]["n_stages"] == 3 and cfg["architecture"]["arch_kwargs"]["norm_op"] == "x"


def test_dask_runs_one_fold_per_task_each_asking_for_one_gpu():
    submitted = []

    class Future:
        def __init__(self, fold):
            self.fold = fold

        def result(self):
            return f"/work/fold_{self.fold}"

    class Client:
        def __init__(self, address):
            self.address = address

        def submit(self, function, *args, resources=None, pure=None, key=None):
            submitted.append((function.__name__, args[-1], resources, key))
            return Future(args[-1])

        def close(self):
            pass

    done = run_folds_on_dask("tcp://sched:8786", "/work", {}, "Dataset600_X", [0, 1, 2], lambda *_: None,
                             client_factory=Client)
    assert done == {f: Path(f"/work/fold_{f}") for f in range(3)}
    assert [(name, fold, resources) for name, fold, resources, _ in submitted] == \
        [("train_fold", f, {"GPU": 1}) for f in range(3)]


def test_training_on_cuda_where_there_is_none_is_refused_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from research.train_nnunet import train

    dataset = tmp_path / "ds"
    (dataset / "labelsTr").mkdir(parents=True)
    (dataset / "imagesTr").mkdir()
    (dataset / "dataset.json").write_text("{}")
    for i in range(3):
        (dataset / "labelsTr" / f"c{i}.nii.gz").write_bytes(b"")
        (dataset / "imagesTr" / f"c{i}_0000.nii.gz").write_bytes(b"")
    with pytest.raises(TrainingError, match="CUDA is not available"):
        train(dataset, tmp_path / "bundle", TrainingProtocol(), log=lambda *_: None)
    assert not (tmp_path / "bundle.work").exists()


@pytest.mark.slow
def test_tiny_three_fold_training_on_tcia_phantoms_gives_a_verified_bundle_and_resumes(tmp_path):
    from pipelines.model.bundles import verify_bundle
    from research.datasets.tcia import import_collection
    from research.datasets.tcia_phantom import write_collection

    write_collection(tmp_path / "coll", [700, 701, 702], ["HFS", "FFS"], spacing=(6.0, 5.0, 5.0))
    import_collection(tmp_path / "coll", tmp_path / "coll" / "lesions.xlsx", tmp_path / "ds", log=lambda *_: None)
    (tmp_path / "plans.json").write_text(json.dumps(TINY_PLANS))
    command = [sys.executable, "-m", "dicom_node.cli.main", "train", "--dataset", str(tmp_path / "ds"),
               "--out", str(tmp_path / "bundle"), "--device", "cpu", "--epochs", "1", "--iterations", "2",
               "--val-iterations", "1", "--plans-override", str(tmp_path / "plans.json"),
               "--trainer", "nnUNetTrainerNoMirroring", "--augmentation-workers", "0"]
    env = {**__import__("os").environ, "nnUNet_def_n_proc": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fold 2" in run.stdout and "94.33 %" in run.stdout
    bundle = verify_bundle(tmp_path / "bundle")
    manifest = bundle.manifest
    assert bundle.folds == ("0", "1", "2")
    assert manifest["cross_validation"]["n_folds"] == 3
    assert sorted(c for s in manifest["cross_validation"]["splits"] for c in s["val"]) == manifest["data"]["cases"]
    assert manifest["cross_validation"]["dice"]["overall"]["n"] > 0
    assert manifest["data"]["dataset_sha256"] and manifest["data"]["report"]["cases"] == 3
    assert manifest["software"]["nnunetv2"] and manifest["software"]["torch"]
    assert manifest["protocol"]["configuration"] == "3d_fullres" and manifest["label_preset"] == "paper"

    # an interruption inside fold 1: only its latest checkpoint is left; the rerun resumes it and keeps 0 and 2
    fold1 = next((tmp_path / "bundle.work" / "nnUNet_results").glob("*/*/fold_1"))
    fold0_final = next((tmp_path / "bundle.work" / "nnUNet_results").glob("*/*/fold_0")) / "checkpoint_final.pth"
    stamp = fold0_final.stat().st_mtime_ns
    (fold1 / "checkpoint_final.pth").rename(fold1 / "checkpoint_latest.pth")
    (fold1 / "validation" / "summary.json").unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "fold 1: resuming from its latest checkpoint" in rerun.stdout
    assert "fold 0: already trained and validated, kept" in rerun.stdout
    assert fold0_final.stat().st_mtime_ns == stamp  # fold 0 was not trained again
    assert (fold1 / "checkpoint_final.pth").is_file()
    verify_bundle(tmp_path / "bundle")
