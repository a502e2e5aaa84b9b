"""Bundles from nnU-Net results folders as nnU-Net or TotalSegmentator write them.

``spine-node models import-nnunet MODEL_DIR`` and ``import-totalsegmentator WEIGHTS_DIR``
read a folder laid out as ``DatasetNNN_*/<Trainer>__<Plans>__<configuration>/fold_N/
checkpoint_final.pth`` (any level of it may be given), and write a verified bundle:

* the label map is derived from the trained folder's ``dataset.json`` label *names*
  (``vertebrae_T1``, ``T1``, ``T1 vertebra``, ``sacrum``, ... via
  ``pipelines.levels.level_of_label_name``), never assumed from a numbering; a name that
  maps to no level is refused (or, with ``ignore_unmapped``, left out: the node then treats
  that label as background);
* TotalSegmentator's vertebrae model (``Dataset292_TotalSegmentator_part2_vertebrae_*``) is
  also checked against the ``totalsegmentator-vertebrae`` preset, so that a folder which is
  not what it says is refused;
* the licence and intended use are the user's statement (TotalSegmentator's weights come
  with their own terms) and are recorded in the manifest, with where the weights came from.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.levels import check_label_map, level_of_label_name, preset
from research.errors import ModelImportError

TOTALSEG_VERTEBRAE_PREFIX = "Dataset292_TotalSegmentator_part2_vertebrae"


def find_trained_folder(root: Path, configuration: str | None = None) -> Path:
    """The one ``<Trainer>__<Plans>__<configuration>`` folder under ``root`` (``root`` itself if it is one)."""
    root = Path(root)
    if not root.is_dir():
        raise ModelImportError(f"model folder {root} does not exist")
    found = sorted({p.parent.parent for p in root.rglob("fold_*/checkpoint_final.pth")})
    if configuration:
        found = [f for f in found if f.name.endswith(f"__{configuration}")]
    found = [f for f in found if (f / "dataset.json").is_file() and (f / "plans.json").is_file()]
    if not found:
        raise ModelImportError(f"{root}: no trained nnU-Net model (Trainer__Plans__configuration/fold_N/"
                               f"checkpoint_final.pth beside dataset.json and plans.json)")
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(root)) for f in found[:6])
        raise ModelImportError(f"{root} holds {len(found)} trained models ({names}); give --configuration or that folder")
    return found[0]


def trained_folds(trained: Path) -> list[str]:
    """The fold names (``0``, ``1``, ``all``) with a final checkpoint, numbers first."""
    folds = [p.parent.name[len("fold_"):] for p in trained.glob("fold_*/checkpoint_final.pth")]
    return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def label_map_from_names(dataset_json: Path, ignore_unmapped: bool = False) -> tuple[dict[int, str], list[str]]:
    """(label id -> level, names left out) from a dataset.json's label names; refuse names that map to nothing."""
    try:
        labels = json.loads(Path(dataset_json).read_text())["labels"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelImportError(f"{dataset_json}: no readable 'labels' ({type(exc).__name__})") from None
    label_map: dict[int, str] = {}
    unmapped: list[str] = []
    for name, value in labels.items():
        if name == "background":
            continue
        if isinstance(value, list):
            raise ModelImportError(f"{dataset_json}: label {name!r} is a region ({value}); region-trained models "
                                   f"cannot be read as one level per label")
        level = level_of_label_name(str(name))
        if level is None:
            unmapped.append(str(name))
        else:
            label_map[int(value)] = level
    if unmapped and not ignore_unmapped:
        shown = ", ".join(unmapped[:8]) + (f" and {len(unmapped) - 8} more" if len(unmapped) > 8 else "")
        raise ModelImportError(f"{dataset_json}: label name(s) {shown} name no vertebra level; give --ignore-unmapped "
                               f"to leave them out (they then count as background)")
    if not label_map:
        raise ModelImportError(f"{dataset_json}: no label names a vertebra")
    return check_label_map(label_map, str(dataset_json)), unmapped


def import_nnunet(model_dir: Path | str, bundle_dir: Path | str, *, name: str, version: str, licence: str,
                  intended_use: str, training_data: str, configuration: str | None = None,
                  folds: list[str] | None = None, ignore_unmapped: bool = False,
                  expected_preset: str | None = None) -> Path:
    """Write a verified bundle at ``bundle_dir`` from an nnU-Net results folder; return its path."""
    from research.train_nnunet import write_cv_bundle

    for field, value in (("licence", licence), ("intended use", intended_use)):
        if not value or not value.strip():
            raise ModelImportError(f"state the weights' {field}: the bundle records it for whoever installs it")
    trained = find_trained_folder(Path(model_dir), configuration)
    available = trained_folds(trained)
    folds = [str(f) for f in folds] if folds else available
    missing = [f for f in folds if f not in available]
    if missing:
        raise ModelImportError(f"{trained}: fold(s) {', '.join(missing)} have no checkpoint_final.pth "
                               f"(available: {', '.join(available)})")
    label_map, left_out = label_map_from_names(trained / "dataset.json", ignore_unmapped)
    if expected_preset:
        expected = preset(expected_preset)
        wrong = {k: v for k, v in label_map.items() if expected.get(k) != v}
        if wrong:
            raise ModelImportError(f"{trained}: labels {wrong} differ from the {expected_preset} preset; "
                                   f"this is not the model it claims to be")
    trainer, plans, config = (trained.name.split("__") + ["", "", ""])[:3]
    fields = {"name": name, "version": version, "licence": licence, "intended_use": intended_use,
              "training_data": training_data, "label_map": {str(k): v for k, v in sorted(label_map.items())},
              "source": {"imported_from": str(Path(model_dir).resolve()), "trained_folder": trained.name,
                         "dataset": trained.parent.name, "labels_left_out": left_out},
              "nnunet": {"trainer": trainer, "plans": plans, "configuration": config}}
    return write_cv_bundle(trained, folds, Path(bundle_dir), fields)


def import_totalsegmentator(weights_dir: Path | str, bundle_dir: Path | str, *, licence: str, intended_use: str,
                            name: str = "totalsegmentator-vertebrae", version: str = "2",
                            folds: list[str] | None = None) -> Path:
    """A bundle of TotalSegmentator's vertebrae model (Dataset292) from its weights folder, ids checked."""
    weights_dir = Path(weights_dir)
    candidates = [weights_dir] if weights_dir.name.startswith(TOTALSEG_VERTEBRAE_PREFIX) else \
        sorted(p for p in weights_dir.rglob(f"{TOTALSEG_VERTEBRAE_PREFIX}*") if p.is_dir())
    if not candidates:
        raise ModelImportError(f"{weights_dir}: no {TOTALSEG_VERTEBRAE_PREFIX}_* folder (TotalSegmentator's "
                               f"vertebrae model); import other nnU-Net models with import-nnunet")
    return import_nnunet(candidates[0], bundle_dir, name=name, version=version, licence=licence,
                         intended_use=intended_use,
                         training_data="TotalSegmentator's training data (1532 subjects, per the model's name); "
                                       "see TotalSegmentator's documentation",
                         folds=folds, expected_preset="totalsegmentator-vertebrae")
