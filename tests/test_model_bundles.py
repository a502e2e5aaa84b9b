"""The model bundle format (pipelines/models.py): verification, installation, lookup, writing.

Every test builds small real bundles in tmp_path (an nnU-Net-like folder with a tiny
torch checkpoint and a manifest) and runs the real code on them: no mocks.
"""
from __future__ import annotations

import json
import random
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from pipelines.errors import ChecksumMismatch, ModelBundleError, UnknownLevelError
from pipelines.levels import LEVELS, preset
from pipelines.model.bundles import (
    BUNDLED_DIR, MANIFEST, find_bundle, install_bundle, list_bundles, sha256_of, verify_bundle, write_bundle)

CHECKPOINT = "nnunet/fold_all/checkpoint_final.pth"
DATASET_LABELS = {"background": 0, **{level: i + 1 for i, level in enumerate(LEVELS)}}


def _dataset_json(labels: dict | None = None) -> dict:
    return {"channel_names": {"0": "CT"}, "labels": labels or DATASET_LABELS,
            "numTraining": 1, "file_ending": ".nii.gz"}


def _checkpoint_state(**extra) -> dict:
    return {"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres"}, **extra}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".install-", ".bundle-")))


@pytest.fixture
def make_bundle(tmp_path):
    """Factory: make_bundle(name=..., **manifest overrides) -> a bundle folder in tmp_path/src."""

    def make(name: str = "test-model", where: Path | None = None, label_map: dict | None = None,
             dataset_labels: dict | None = None, **overrides) -> Path:
        folder = (where or tmp_path / "src") / name
        fold = folder / "nnunet" / "fold_all"
        fold.mkdir(parents=True)
        (folder / "nnunet" / "dataset.json").write_text(json.dumps(_dataset_json(dataset_labels)))
        (folder / "nnunet" / "plans.json").write_text("{}")
        torch.save(_checkpoint_state(), fold / "checkpoint_final.pth")
        manifest = {
            "format": "spine-node-model-bundle/1",
            "name": name,
            "version": "1.0",
            "licence": "Apache-2.0",
            "intended_use": "tests only",
            "training_data": "none (zeros)",
            "nnunet": {"folder": "nnunet", "folds": ["all"]},
            "checkpoints": {CHECKPOINT: sha256_of(folder / CHECKPOINT)},
        }
        if label_map is not None:
            manifest["label_map"] = label_map
        else:
            manifest["label_preset"] = "paper"
        manifest.update(overrides)
        _write_manifest(folder, manifest)
        return folder

    return make


def _zip(folder: Path, destination: Path, top: str | None) -> Path:
    """Zip a bundle folder with its files at the archive root (top=None) or inside ``top/``."""
    with zipfile.ZipFile(destination, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = path.relative_to(folder).as_posix()
                archive.write(path, f"{top}/{relative}" if top else relative)
    return destination


# --------------------------------------------------------------------------- verification

def test_good_bundle_verifies_with_paper_label_map(make_bundle):
    folder = make_bundle()
    bundle = verify_bundle(folder)
    assert bundle.name == "test-model" and bundle.version == "1.0"
    assert bundle.label_map == {i + 1: level for i, level in enumerate(LEVELS)}
    assert bundle.label_map[1] == "T1" and bundle.label_map[12] == "T12"
    assert bundle.label_map[13] == "L1" and bundle.label_map[17] == "L5"
    assert bundle.nnunet_dir == folder / "nnunet"
    assert bundle.folds == ("all",)
    assert bundle.checkpoint_name == "checkpoint_final.pth"
    assert bundle.sha256 == sha256_of(folder / CHECKPOINT)


def test_totalsegmentator_preset_maps_27_to_L5_and_43_to_T1(make_bundle):
    ts_labels = {"background": 0, **{f"vertebrae_{level}": label
                                     for label, level in preset("totalsegmentator").items()}}
    folder = make_bundle(label_preset="totalsegmentator", dataset_labels=ts_labels)
    bundle = verify_bundle(folder)
    assert bundle.label_map[27] == "L5"
    assert bundle.label_map[43] == "T1"
    assert bundle.label_map[32] == "T12"


def test_explicit_label_map_is_used_with_int_keys(make_bundle):
    folder = make_bundle(label_map={"1": "T12", "2": "L1"})
    assert verify_bundle(folder).label_map == {1: "T12", 2: "L1"}


def test_changed_checkpoint_bytes_are_refused_with_checksum_mismatch_naming_the_file(make_bundle):
    folder = make_bundle()
    torch.save(_checkpoint_state(network_weights={"w": torch.ones(2)}), folder / CHECKPOINT)
    with pytest.raises(ChecksumMismatch) as caught:
        verify_bundle(folder, load_weights=False)
    message = str(caught.value)
    assert CHECKPOINT in message
    assert "sha256" in message and "\n" not in message


def test_label_map_with_unknown_level_is_refused_naming_the_level(make_bundle):
    folder = make_bundle(label_map={"1": "T1", "2": "X9"})
    with pytest.raises(UnknownLevelError) as caught:
        verify_bundle(folder)
    assert "X9" in str(caught.value)
    assert MANIFEST in str(caught.value)
    assert isinstance(caught.value, ModelBundleError)


def test_unknown_label_preset_is_refused(make_bundle):
    folder = make_bundle(label_preset="nope")
    with pytest.raises(UnknownLevelError, match="nope"):
        verify_bundle(folder)


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_corrupt_checkpoint_with_correct_sha256_is_refused_when_loading_weights(make_bundle, damage):
    folder = make_bundle()
    path = folder / CHECKPOINT
    if damage == "random-bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    manifest = _manifest(folder)
    manifest["checkpoints"][CHECKPOINT] = sha256_of(path)  # the digest is right, the file is not
    _write_manifest(folder, manifest)

    assert verify_bundle(folder, load_weights=False).name == "test-model"
    with pytest.raises(ModelBundleError) as caught:
        verify_bundle(folder, load_weights=True)
    message = str(caught.value)
    assert "corrupt" in message and CHECKPOINT in message
    assert "\n" not in message


def test_checkpoint_without_network_weights_is_refused(make_bundle):
    folder = make_bundle()
    torch.save({"something": 1}, folder / CHECKPOINT)
    manifest = _manifest(folder)
    manifest["checkpoints"][CHECKPOINT] = sha256_of(folder / CHECKPOINT)
    _write_manifest(folder, manifest)
    with pytest.raises(ModelBundleError, match="network_weights"):
        verify_bundle(folder)


def _one_line_error(folder: Path) -> str:
    with pytest.raises(ModelBundleError) as caught:
        verify_bundle(folder)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def test_missing_manifest_is_a_one_line_error(make_bundle):
    folder = make_bundle()
    (folder / MANIFEST).unlink()
    assert MANIFEST in _one_line_error(folder)


def test_missing_folder_is_a_one_line_error(tmp_path):
    assert "not found" in _one_line_error(tmp_path / "nowhere")


def test_unreadable_manifest_is_a_one_line_error(make_bundle):
    folder = make_bundle()
    (folder / MANIFEST).write_text("{not json\n\n")
    assert "unreadable manifest" in _one_line_error(folder)


@pytest.mark.parametrize("field", ["name", "version", "licence", "intended_use", "training_data",
                                   "checkpoints", "nnunet"])
def test_missing_manifest_field_is_a_one_line_error(make_bundle, field):
    folder = make_bundle()
    manifest = _manifest(folder)
    del manifest[field]
    _write_manifest(folder, manifest)
    assert field in _one_line_error(folder)


def test_manifest_without_label_map_or_preset_is_a_one_line_error(make_bundle):
    folder = make_bundle()
    manifest = _manifest(folder)
    del manifest["label_preset"]
    _write_manifest(folder, manifest)
    assert "label_map" in _one_line_error(folder)


def test_missing_checkpoint_file_is_a_one_line_error(make_bundle):
    folder = make_bundle()
    (folder / CHECKPOINT).unlink()
    message = _one_line_error(folder)
    assert CHECKPOINT in message and "missing" in message


def test_missing_nnunet_file_is_a_one_line_error(make_bundle):
    folder = make_bundle()
    (folder / "nnunet" / "plans.json").unlink()
    assert "plans.json" in _one_line_error(folder)


def test_label_ids_absent_from_dataset_json_are_a_one_line_error(make_bundle):
    folder = make_bundle(label_map={"1": "T1", "40": "L5", "41": "L4"})
    message = _one_line_error(folder)
    assert "[40, 41]" in message and "dataset.json" in message


def test_auxiliary_labels_of_a_bundle_are_verified_against_its_dataset(make_bundle):
    labels = {**DATASET_LABELS, "C7": 18, "sacrum": 19}
    good = make_bundle("aux-good", dataset_labels=labels, auxiliary_labels={"18": "C7", "19": "sacrum"})
    assert verify_bundle(good, load_weights=False).manifest["auxiliary_labels"] == {"18": "C7", "19": "sacrum"}
    absent = make_bundle("aux-absent", dataset_labels=labels, auxiliary_labels={"18": "C7", "30": "rib"})
    message = _one_line_error(absent)
    assert "[30]" in message and "auxiliary" in message
    with pytest.raises(UnknownLevelError, match="knee"):
        verify_bundle(make_bundle("aux-name", dataset_labels=labels, auxiliary_labels={"18": "knee"}), load_weights=False)
    with pytest.raises(UnknownLevelError, match="both reported"):
        verify_bundle(make_bundle("aux-clash", dataset_labels=labels, auxiliary_labels={"3": "rib"}), load_weights=False)


def test_unreadable_dataset_json_is_a_one_line_error(make_bundle):
    folder = make_bundle()
    (folder / "nnunet" / "dataset.json").write_text("{broken")
    assert "dataset.json" in _one_line_error(folder)


def test_fold_checkpoint_without_a_recorded_sha256_is_refused(make_bundle):
    # The checksummed file must be the one nnU-Net loads (fold_all/checkpoint_final.pth).
    folder = make_bundle()
    other = folder / "nnunet" / "fold_all" / "checkpoint_best.pth"
    shutil.copy(folder / CHECKPOINT, other)
    manifest = _manifest(folder)
    manifest["checkpoints"] = {"nnunet/fold_all/checkpoint_best.pth": sha256_of(other)}
    _write_manifest(folder, manifest)
    message = _one_line_error(folder)
    assert CHECKPOINT in message


def test_checkpoint_path_outside_the_bundle_is_refused(make_bundle):
    folder = make_bundle()
    outside = folder.parent / "outside.pth"
    shutil.copy(folder / CHECKPOINT, outside)
    manifest = _manifest(folder)
    manifest["checkpoints"]["../outside.pth"] = sha256_of(outside)
    _write_manifest(folder, manifest)
    assert "outside the bundle" in _one_line_error(folder)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", 7])
def test_manifest_name_that_is_not_a_plain_folder_name_is_refused(make_bundle, name):
    folder = make_bundle()
    manifest = _manifest(folder)
    manifest["name"] = name
    _write_manifest(folder, manifest)
    assert "folder name" in _one_line_error(folder)


# --------------------------------------------------------------------------- installation

def test_install_from_folder_puts_the_bundle_at_target_root_name(make_bundle, tmp_path):
    source = make_bundle("spine-a")
    target = tmp_path / "installed"
    bundle = install_bundle(source, target)
    assert bundle.path == target / "spine-a"
    assert (target / "spine-a" / MANIFEST).is_file()
    assert (target / "spine-a" / CHECKPOINT).is_file()
    assert verify_bundle(target / "spine-a").name == "spine-a"
    assert source.is_dir()  # the source is copied, not moved
    assert sorted(p.name for p in target.iterdir()) == ["spine-a"]


@pytest.mark.parametrize("top", [None, "some-top-folder"], ids=["files-at-root", "one-top-folder"])
def test_install_from_zip_puts_the_bundle_at_target_root_name(make_bundle, tmp_path, top):
    source = make_bundle("spine-z")
    archive = _zip(source, tmp_path / "bundle.zip", top)
    target = tmp_path / "installed"
    bundle = install_bundle(archive, target)
    assert bundle.path == target / "spine-z"
    assert verify_bundle(target / "spine-z").label_map[17] == "L5"
    assert sorted(p.name for p in target.iterdir()) == ["spine-z"]


def test_install_replaces_an_existing_bundle_of_the_same_name(make_bundle, tmp_path):
    target = tmp_path / "installed"
    install_bundle(make_bundle("spine-r", where=tmp_path / "v1"), target)
    install_bundle(make_bundle("spine-r", where=tmp_path / "v2", version="2.0"), target)
    assert verify_bundle(target / "spine-r").version == "2.0"
    assert sorted(p.name for p in target.iterdir()) == ["spine-r"]


def test_installing_a_bad_bundle_leaves_no_trace(make_bundle, tmp_path):
    source = make_bundle("spine-bad")
    (source / CHECKPOINT).write_bytes(b"tampered")
    target = tmp_path / "installed"
    with pytest.raises(ChecksumMismatch):
        install_bundle(source, target)
    assert not (target / "spine-bad").exists()
    assert _leftovers(target) == []


def test_installing_a_bad_bundle_keeps_the_installed_one(make_bundle, tmp_path):
    target = tmp_path / "installed"
    install_bundle(make_bundle("spine-k", where=tmp_path / "v1"), target)
    bad = make_bundle("spine-k", where=tmp_path / "v2", version="2.0")
    (bad / CHECKPOINT).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        install_bundle(bad, target)
    assert verify_bundle(target / "spine-k").version == "1.0"
    assert _leftovers(target) == []


def test_installing_a_bad_zip_leaves_no_trace(make_bundle, tmp_path):
    source = make_bundle("spine-bz", label_map={"1": "X9"})
    archive = _zip(source, tmp_path / "bad.zip", "top")
    target = tmp_path / "installed"
    with pytest.raises(UnknownLevelError):
        install_bundle(archive, target)
    assert list(target.iterdir()) == []


def test_install_refuses_a_name_that_would_escape_target_root(make_bundle, tmp_path):
    source = make_bundle("spine-e")
    manifest = _manifest(source)
    manifest["name"] = "../escaped"
    _write_manifest(source, manifest)
    target = tmp_path / "installed"
    with pytest.raises(ModelBundleError, match="folder name"):
        install_bundle(source, target)
    assert not (tmp_path / "escaped").exists()
    assert list(target.iterdir()) == []


def test_zip_with_unsafe_path_is_refused(make_bundle, tmp_path):
    source = make_bundle("spine-u")
    archive = _zip(source, tmp_path / "evil.zip", None)
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("../evil", b"outside")
    target = tmp_path / "deep" / "installed"
    with pytest.raises(ModelBundleError) as caught:
        install_bundle(archive, target)
    assert "../evil" in str(caught.value) and "unsafe" in str(caught.value)
    assert not (tmp_path / "deep" / "evil").exists() and not (target.parent / "evil").exists()
    assert list(target.iterdir()) == []


def test_zip_holding_no_bundle_is_refused(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("readme.txt", "no bundle here")
    target = tmp_path / "installed"
    with pytest.raises(ModelBundleError, match="no single bundle"):
        install_bundle(archive, target)
    assert list(target.iterdir()) == []


def test_install_refuses_a_file_that_is_neither_folder_nor_zip(tmp_path):
    source = tmp_path / "model.tar"
    source.write_bytes(b"not a zip")
    with pytest.raises(ModelBundleError, match="neither"):
        install_bundle(source, tmp_path / "installed")


def test_install_refuses_a_missing_source(tmp_path):
    with pytest.raises(ModelBundleError, match="no such file"):
        install_bundle(tmp_path / "missing", tmp_path / "installed")


# --------------------------------------------------------------------------- lookup

def test_find_bundle_by_name_through_models_dir(make_bundle, tmp_path, monkeypatch):
    models = tmp_path / "models"
    install_bundle(make_bundle("spine-found"), models)
    monkeypatch.chdir(tmp_path)
    bundle = find_bundle("spine-found", models)
    assert bundle.path == models / "spine-found"
    assert bundle.label_map[1] == "T1"


def test_find_bundle_by_path(make_bundle, tmp_path):
    folder = make_bundle("spine-by-path")
    assert find_bundle(str(folder), tmp_path / "empty-models").path == folder


def test_find_bundle_with_unknown_name_says_what_was_searched(tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelBundleError) as caught:
        find_bundle("no-such-model-xyz", models)
    message = str(caught.value)
    assert "no-such-model-xyz" in message and "not found" in message
    assert str(models) in message
    assert "\n" not in message


def test_list_bundles_reports_good_and_bad_bundles(make_bundle, tmp_path, monkeypatch):
    models = tmp_path / "models"
    install_bundle(make_bundle("spine-good"), models)
    bad = make_bundle("spine-broken", where=models)
    (bad / CHECKPOINT).unlink()
    (models / ".install-leftover").mkdir()
    found = {path.name: (manifest, reason) for path, manifest, reason in list_bundles(models)
             if path.parent == models}
    assert set(found) == {"spine-good", "spine-broken"}
    assert found["spine-good"][1] == "ok" and found["spine-good"][0]["name"] == "spine-good"
    assert found["spine-broken"][0] is None and "missing" in found["spine-broken"][1]


# --------------------------------------------------------------------------- writing

FIELDS = {"name": "written-model", "version": "0.1", "licence": "Apache-2.0",
          "intended_use": "tests only", "training_data": "none", "label_preset": "paper"}


@pytest.fixture
def trained_folder(tmp_path) -> Path:
    """A fake nnU-Net trained-model folder, its checkpoint with an optimizer state."""
    folder = tmp_path / "nnUNet_results" / "Dataset501" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_all").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(_dataset_json()))
    (folder / "plans.json").write_text("{}")
    torch.save(_checkpoint_state(optimizer_state={"state": {0: {"momentum": torch.ones(1000)}}},
                                 grad_scaler_state={"scale": 1.0}),
               folder / "fold_all" / "checkpoint_final.pth")
    return folder


def test_write_bundle_drops_optimizer_state_and_records_the_checkpoint_sha256(trained_folder, tmp_path):
    out = tmp_path / "bundles" / "written-model"
    assert write_bundle(trained_folder, out, FIELDS) == out

    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
    assert "optimizer_state" not in state and "grad_scaler_state" not in state
    assert torch.equal(state["network_weights"]["w"], torch.zeros(2))

    manifest = _manifest(out)
    assert manifest["checkpoints"] == {CHECKPOINT: sha256_of(out / CHECKPOINT)}
    assert manifest["format"] == "spine-node-model-bundle/1"
    assert manifest["nnunet"]["trainer"] == "nnUNetTrainer"
    assert manifest["nnunet"]["configuration"] == "3d_fullres"
    assert manifest["nnunet"]["folds"] == ["all"]
    assert (out / "nnunet" / "dataset.json").is_file() and (out / "nnunet" / "plans.json").is_file()

    bundle = verify_bundle(out)
    assert bundle.name == "written-model" and bundle.label_map[17] == "L5"
    assert _leftovers(out.parent) == []
    assert stat.S_IMODE(out.stat().st_mode) & 0o055 == 0o055  # readable by others, not 0700


def test_write_bundle_replaces_an_existing_bundle(trained_folder, tmp_path):
    out = tmp_path / "bundles" / "written-model"
    write_bundle(trained_folder, out, FIELDS)
    write_bundle(trained_folder, out, {**FIELDS, "version": "0.2"})
    assert verify_bundle(out).version == "0.2"
    assert sorted(p.name for p in out.parent.iterdir()) == ["written-model"]


def test_write_bundle_that_fails_verification_leaves_nothing(trained_folder, tmp_path):
    out = tmp_path / "bundles" / "written-model"
    with pytest.raises(UnknownLevelError):
        write_bundle(trained_folder, out, {**FIELDS, "label_preset": "nope"})
    assert list(out.parent.iterdir()) == []


def test_install_names_the_users_file_not_the_staging_copy_on_a_bad_checksum(tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(BUNDLED_DIR / "spine-phantom-demo", copy)
    with open(next(copy.glob("nnunet/fold_*/*.pth")), "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChecksumMismatch) as caught:
        install_bundle(copy, tmp_path / "models")
    message = str(caught.value)
    assert str(copy) in message and ".install-" not in message
    assert not (tmp_path / "models" / "spine-phantom-demo").exists()


def test_bundle_lookup_reads_no_environment_variable(make_bundle, tmp_path, monkeypatch):
    models = tmp_path / "models"
    install_bundle(make_bundle("spine-env-only"), models)
    monkeypatch.setenv("SPINE_NODE_MODELS_DIR", str(models))
    with pytest.raises(ModelBundleError):
        find_bundle("spine-env-only")  # the caller (the node's configuration) says where installed bundles are
