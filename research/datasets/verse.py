"""Import VerSe (``<sub>_ct.nii.gz`` + ``<sub>_seg-vert_msk.nii.gz``) into a raw dataset in the paper's map.

VerSe numbers C1..C7 = 1..7, T1..T12 = 8..19, L1..L5 = 20..24, L6 = 25, T13 = 28
(``pipelines.levels.VERSE``). Files are paired by their subject prefix anywhere under the
folder, so both VerSe's ``rawdata/`` + ``derivatives/`` layout and one folder per case work.
A CT without its mask, a mask without its CT, a mask on another grid, or a subject given
twice is refused with the reason; the others are imported.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.levels import preset
from research.datasets.nifti_cases import (add_nifti_case, check_same_grid, integer_labels, read_image, run_cases,
                                           to_paper)
from research.datasets.raw import RawDatasetWriter, Refusal
from research.errors import DatasetError

CT_SUFFIX = "_ct.nii.gz"
MASK_SUFFIX = "_seg-vert_msk.nii.gz"


def subject_key(name: str) -> tuple[str, str] | None:
    """("ct" or "mask", key) of a VerSe file name, the key being its BIDS entities without ``seg-vert``.

    ``sub-x_ct.nii.gz`` and ``sub-x_seg-vert_msk.nii.gz`` share the key ``sub-x``, and so do
    ``sub-x_label-22_ct.nii.gz`` and ``sub-x_seg-vert_label-22_msk.nii.gz``.
    """
    if not name.endswith(".nii.gz"):
        return None
    parts = name[: -len(".nii.gz")].split("_")
    if parts[-1] == "ct":
        return "ct", "_".join(parts[:-1])
    if parts[-1] == "msk" and "seg-vert" in parts:
        return "mask", "_".join(p for p in parts[:-1] if p != "seg-vert")
    return None


def pair_files(root: Path) -> tuple[dict[str, tuple[Path, Path]], list[Refusal]]:
    """Subject -> (CT, mask) under ``root``, and a refusal for each file without its partner or given twice."""
    found: dict[str, dict[str, list[Path]]] = {"ct": {}, "mask": {}}
    for path in sorted(root.rglob("*.nii.gz")):
        kind_key = subject_key(path.name)
        if kind_key:
            found[kind_key[0]].setdefault(kind_key[1], []).append(path)
    cts, masks = found["ct"], found["mask"]
    pairs, refusals = {}, []
    for subject in sorted(set(cts) | set(masks)):
        ct, mask = cts.get(subject, []), masks.get(subject, [])
        if len(ct) > 1 or len(mask) > 1:
            refusals.append(Refusal(subject, str((ct or mask)[0].parent), "duplicate_case",
                                    f"subject {subject} has {len(ct)} CTs and {len(mask)} masks (given twice)"))
        elif not ct:
            refusals.append(Refusal(subject, str(mask[0]), "no_ct", f"mask {mask[0].name} has no {subject}{CT_SUFFIX}"))
        elif not mask:
            refusals.append(Refusal(subject, str(ct[0]), "no_mask", f"CT {ct[0].name} has no {subject}{MASK_SUFFIX}"))
        else:
            pairs[subject] = (ct[0], mask[0])
    return pairs, refusals


def import_verse(root: Path | str, out: Path | str, log=print) -> dict:
    """Import every VerSe subject under ``root`` into ``out``; return the dataset report."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"VerSe folder {root} does not exist")
    pairs, refusals = pair_files(root)
    writer = RawDatasetWriter(out, "VerSe", f"VerSe imported by spine-node from {root.name}")
    for refusal in refusals:
        writer.refuse(refusal)
        log(f"refused case {refusal.case}: {refusal.reason}")
    try:
        jobs = [(subject, str(ct), lambda s=subject, c=ct, m=mask: _case(writer, s, c, m))
                for subject, (ct, mask) in pairs.items()]
        run_cases(writer, jobs, log)
        return writer.finish({"source": "VerSe", "folder": str(root)})
    except BaseException:
        writer.abandon()
        raise


def _case(writer: RawDatasetWriter, subject: str, ct_path: Path, mask_path: Path):
    ct = read_image(ct_path, subject)
    mask = read_image(mask_path, subject)
    check_same_grid(ct, mask, subject)
    paper, levels, notes = to_paper(integer_labels(mask, subject), preset("verse"), subject)
    return add_nifti_case(writer, subject, str(ct_path), ct, paper, levels, notes)
