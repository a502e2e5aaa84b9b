"""Model bundles: an nnU-Net v2 trained-model folder plus a manifest that says what it is.

Layout of a bundle folder::

    <name>/manifest.json          what the model is, its label map, sha256 of each checkpoint
    <name>/nnunet/dataset.json    the nnU-Net trained-model folder, as nnU-Net writes it
    <name>/nnunet/plans.json
    <name>/nnunet/fold_<f>/checkpoint_final.pth

The manifest's ``label_map`` maps nnU-Net label ids to vertebra levels (``"1": "T1"``);
instead a bundle may name a ``label_preset`` of ``pipelines.levels.PRESETS`` (``paper``;
``totalsegmentator-vertebrae`` for TotalSegmentator's Dataset292 vertebrae weights, ids 1..26;
``totalsegmentator`` only for label maps in the ids of its merged ``total`` output, 25..50).
A bundle is verified before it is used or installed: a checkpoint whose sha256 differs
from the manifest, or a label map naming an unknown level, is refused with a one-line
reason. Installation unpacks into a temporary folder beside the target and renames it
into place only after verification, so nothing is ever half-installed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipelines.errors import ChecksumMismatch, ModelBundleError
from pipelines.levels import check_auxiliary_labels, check_label_map, preset

MANIFEST = "manifest.json"
FORMAT = "spine-node-model-bundle/1"
NNUNET_FOLDER = "nnunet"
REQUIRED = ("name", "version", "licence", "intended_use", "training_data", "checkpoints", "nnunet")

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "models"
"""Bundles shipped in the repository (the demo model)."""


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle: where it lies, its manifest and its resolved label map."""

    path: Path
    manifest: dict
    label_map: dict[int, str]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def nnunet_dir(self) -> Path:
        return self.path / self.manifest["nnunet"].get("folder", NNUNET_FOLDER)

    @property
    def folds(self) -> tuple:
        return tuple(self.manifest["nnunet"].get("folds", ["all"]))

    @property
    def checkpoint_name(self) -> str:
        return self.manifest["nnunet"].get("checkpoint_name", "checkpoint_final.pth")

    @property
    def sha256(self) -> str:
        """One digest naming the weights: of the sorted checkpoint digests (a single one as is)."""
        digests = sorted(self.manifest["checkpoints"].values())
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256("".join(digests).encode()).hexdigest()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The parsed manifest of a bundle folder, or a ModelBundleError saying what is wrong with it."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ModelBundleError(f"model bundle not found: {folder} is not a folder")
    if not path.is_file():
        raise ModelBundleError(f"{folder} is not a model bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelBundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ModelBundleError(f"{path}: the manifest must be a JSON object")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ModelBundleError(f"{path}: missing field(s) {', '.join(missing)}")
    name = manifest["name"]
    # The name becomes a folder under the models root: it must not be a path.
    if (not isinstance(name, str) or not name.strip() or name.startswith(".")
            or "/" in name or "\\" in name or "\n" in name):
        raise ModelBundleError(f"{path}: name {name!r} is not a plain folder name")
    if not isinstance(manifest["nnunet"], dict):
        raise ModelBundleError(f"{path}: 'nnunet' must be an object (folder, folds)")
    return manifest


def resolve_label_map(manifest: dict, where: str) -> dict[int, str]:
    """The manifest's label map (explicit, or from its preset), checked against the known levels."""
    if "label_map" in manifest:
        return check_label_map(manifest["label_map"], where)
    if "label_preset" in manifest:
        return check_label_map(preset(manifest["label_preset"]), where)
    raise ModelBundleError(f"{where}: neither label_map nor label_preset is given")


def verify_bundle(folder: Path | str, load_weights: bool = True) -> ModelBundle:
    """Check a bundle completely and return it; raise ModelBundleError (one line) if anything is off.

    Checks: manifest fields, label map, auxiliary labels (ids and names, and that they are
    labels of the nnU-Net dataset), nnU-Net files present, the sha256 of every checkpoint,
    and (``load_weights``) that each checkpoint deserialises.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    where = str(folder / MANIFEST)
    label_map = resolve_label_map(manifest, where)
    bundle = ModelBundle(folder, manifest, label_map)
    for name in ("dataset.json", "plans.json"):
        if not (bundle.nnunet_dir / name).is_file():
            raise ModelBundleError(f"{folder}: nnU-Net file {bundle.nnunet_dir.name}/{name} is missing")
    _check_labels_in_dataset(bundle, where)
    checkpoints = manifest["checkpoints"]
    if not isinstance(checkpoints, dict) or not checkpoints:
        raise ModelBundleError(f"{where}: 'checkpoints' must map each checkpoint file to its sha256")
    for relative in checkpoints:
        if PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
            raise ModelBundleError(f"{where}: checkpoint {relative!r} lies outside the bundle")
    listed = {PurePosixPath(relative) for relative in checkpoints}
    for fold in bundle.folds:
        # The files nnU-Net will load must be among those whose sha256 is checked.
        relative = PurePosixPath(manifest["nnunet"].get("folder", NNUNET_FOLDER), f"fold_{fold}",
                                 bundle.checkpoint_name)
        if relative not in listed:
            raise ModelBundleError(f"{where}: checkpoint {relative} of fold {fold} has no sha256 in 'checkpoints'")
    for relative, expected in checkpoints.items():
        path = folder / relative
        if not path.is_file():
            raise ModelBundleError(f"{folder}: checkpoint {relative} named in the manifest is missing")
        actual = sha256_of(path)
        if actual != expected:
            raise ChecksumMismatch(
                f"{path}: sha256 {actual[:12]}... does not match the manifest's {str(expected)[:12]}...")
        if load_weights:
            _load_checkpoint(path)
    return bundle


def _check_labels_in_dataset(bundle: ModelBundle, where: str) -> None:
    path = bundle.nnunet_dir / "dataset.json"
    try:
        dataset = json.loads(path.read_text())
        ids = {int(v) if not isinstance(v, list) else int(v[0]) for v in dataset.get("labels", {}).values()}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ModelBundleError(f"{path}: unreadable nnU-Net dataset.json ({type(exc).__name__})") from None
    unknown = sorted(set(bundle.label_map) - ids)
    if unknown and "label_map" in bundle.manifest:
        raise ModelBundleError(f"{where}: label ids {unknown} are not labels of the nnU-Net dataset.json")
    auxiliary = check_auxiliary_labels(bundle.manifest.get("auxiliary_labels", {}), bundle.label_map, where)
    missing = sorted(set(auxiliary) - ids)
    if missing:
        raise ModelBundleError(f"{where}: auxiliary label ids {missing} are not labels of the nnU-Net dataset.json")


def _load_checkpoint(path: Path) -> dict:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same here
        raise ModelBundleError(f"{path}: checkpoint is corrupt and cannot be loaded ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelBundleError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    return checkpoint


def models_dirs(installed: Path | str | None = None) -> list[Path]:
    """Where bundles are looked up: the folder of installed ones (if given) first, then those shipped.

    The caller decides where installed bundles live (the node's ``models_dir`` setting);
    this package reads no environment variable.
    """
    return ([Path(installed)] if installed is not None else []) + [BUNDLED_DIR]


def list_bundles(installed: Path | str | None = None) -> list[tuple[Path, dict | None, str]]:
    """Every bundle folder found: (path, manifest or None, 'ok' or the reason it is unusable)."""
    found = []
    for root in models_dirs(installed):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                found.append((folder, verify_bundle(folder, load_weights=False).manifest, "ok"))
            except ModelBundleError as exc:
                found.append((folder, None, str(exc)))
    return found


def find_bundle(name_or_path: str, installed: Path | str | None = None) -> ModelBundle:
    """A verified bundle by folder path, or by name among the installed (``installed``) and bundled ones."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return verify_bundle(candidate)
    for root in models_dirs(installed):
        if (root / name_or_path).is_dir():
            return verify_bundle(root / name_or_path)
    searched = ", ".join(str(p) for p in models_dirs(installed))
    raise ModelBundleError(f"model {name_or_path!r} not found (searched {searched})")


def install_bundle(source: Path | str, target_root: Path | str) -> ModelBundle:
    """Verify a bundle (folder or .zip) and install it under ``target_root`` as ``<name>/``.

    The copy is made in a temporary folder beside the target and renamed into place only
    once verified; an existing bundle of the same name is replaced the same way.
    """
    source = Path(source)
    target_root = Path(target_root)
    if not source.exists():
        raise ModelBundleError(f"cannot install {source}: no such file or folder")
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target_root))
    try:
        unpacked = _unpack(source, staging / "bundle")
        try:
            bundle = verify_bundle(unpacked)
        except ModelBundleError as exc:  # name what the user gave, not the staging copy
            raise type(exc)(f"cannot install {source}: {str(exc).replace(str(unpacked) + '/', '')}") from None
        final = target_root / bundle.name
        if final.exists():
            old = staging / "previous"
            final.rename(old)
        unpacked.rename(final)
        return ModelBundle(final, bundle.manifest, bundle.label_map)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(source: Path, destination: Path) -> Path:
    """Copy a bundle folder, or extract a zip holding one (at its root or in one top folder)."""
    if source.is_dir():
        shutil.copytree(source, destination)
        return destination
    if not zipfile.is_zipfile(source):
        raise ModelBundleError(f"cannot install {source}: neither a bundle folder nor a zip file")
    with zipfile.ZipFile(source) as archive:
        for member in archive.namelist():
            if member.startswith("/") or ".." in Path(member).parts:
                raise ModelBundleError(f"{source}: refusing unsafe path {member!r} in the zip")
        archive.extractall(destination)
    if (destination / MANIFEST).is_file():
        return destination
    inner = [p for p in destination.iterdir() if (p / MANIFEST).is_file()]
    if len(inner) != 1:
        raise ModelBundleError(f"{source}: the zip holds no single bundle with a {MANIFEST}")
    return inner[0]


def write_bundle(trained_folder: Path, bundle_dir: Path, fields: dict, fold: str = "all",
                 checkpoint: str = "checkpoint_final.pth") -> Path:
    """Make a bundle from an nnU-Net trained-model folder: slim checkpoint, files, manifest.

    The optimizer state is dropped from the checkpoint (inference needs the weights only),
    which halves its size. The bundle is assembled beside ``bundle_dir`` and renamed into place.
    """
    import torch

    bundle_dir = Path(bundle_dir)
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=bundle_dir.parent))
    try:
        nn_dir = staging / NNUNET_FOLDER
        (nn_dir / f"fold_{fold}").mkdir(parents=True)
        for name in ("dataset.json", "plans.json"):
            shutil.copy2(Path(trained_folder) / name, nn_dir / name)
        state = torch.load(Path(trained_folder) / f"fold_{fold}" / checkpoint, map_location="cpu",
                           weights_only=False)
        state.pop("optimizer_state", None)
        state.pop("grad_scaler_state", None)
        relative = f"{NNUNET_FOLDER}/fold_{fold}/{checkpoint}"
        torch.save(state, staging / relative)
        manifest = {"format": FORMAT, **fields,
                    "nnunet": {"folder": NNUNET_FOLDER, "folds": [fold], "checkpoint_name": checkpoint,
                               "trainer": state.get("trainer_name"), "configuration": state.get("init_args", {}).get("configuration")},
                    "checkpoints": {relative: sha256_of(staging / relative)}}
        return publish_bundle(staging, manifest, bundle_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_bundle(staging: Path, manifest: dict, bundle_dir: Path) -> Path:
    """Write ``manifest`` into the staged bundle, verify it, and rename it into place (replacing an older one)."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    verify_bundle(staging)
    staging.chmod(0o755)  # mkdtemp made it 0700: the bundle must be readable by the node's user
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    staging.rename(bundle_dir)
    return bundle_dir
