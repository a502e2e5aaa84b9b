"""The nnU-Net v2 raw dataset every importer writes, its lesion table and its dataset report.

Layout of ``DATASET_DIR`` (an nnU-Net raw dataset, plus spine-node's own files)::

    imagesTr/<case>_0000.nii.gz    the CT, on its own grid (never resampled)
    labelsTr/<case>.nii.gz         vertebra labels in the paper's map: T1..T12 = 1..12, L1..L5 = 13..17
    dataset.json                   nnU-Net's description (channels, labels, numTraining)
    lesions.csv                    case, level, class (none / lytic / blastic / mixed)
    cases.json                     per case: source, levels, geometry, demographics
    import_log.json                what was imported and what was refused, with the reasons
    report.json, report.md         the dataset report, beside the paper's Table 2

The whole dataset is assembled in a hidden folder beside ``DATASET_DIR`` and renamed into
place at the end, so a failed import never leaves half a dataset where training looks.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.levels import LEVELS, LUMBAR, THORACIC
from research.errors import CaseRefused, DatasetError

LESION_CLASSES = ("none", "lytic", "blastic", "mixed")
"""The workbook's four classes, as spine-node names them (``none`` = not involved)."""
UNKNOWN = "unknown"
"""The lesion class of a vertebra from a dataset without lesion classes (VerSe, TotalSegmentator)."""

PAPER_LABELS: dict[str, int] = {level: i + 1 for i, level in enumerate(LEVELS)}
"""The paper's label map (rouge1616/Spine-Mets-CT-SEG, tcia_dcm2nifti.py): level -> id."""

PAPER_TABLE_2 = {
    "cases": 55, "vertebrae": 787, "thoracic": 543, "lumbar": 244,
    "with_lesions": 183, "blastic": 58, "lytic": 54, "mixed": 71,
}
"""The paper's Table 2 (Spine-Mets-CT-SEG): the figures the report sets beside the imported ones."""


@dataclass
class ImportedCase:
    """What was written for one case: its id, source, levels and lesion class per level."""

    case_id: str
    source: str
    levels: list[str]
    lesions: dict[str, str]
    shape_zyx: list[int]
    spacing_zyx_mm: list[float]
    orientation: str = ""
    patient_id: str = ""
    demographics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Refusal:
    """One case that was not imported, and why."""

    case: str
    source: str
    code: str
    reason: str


def case_id_for(name: str) -> str:
    """An nnU-Net case identifier from a folder or patient name (letters, digits, ``_`` and ``-``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not cleaned:
        raise DatasetError(f"{name!r} gives no usable case identifier")
    return cleaned


class RawDatasetWriter:
    """Writes cases into a staging copy of ``DATASET_DIR``; ``finish()`` renames it into place."""

    def __init__(self, out: Path | str, name: str, description: str):
        self.out = Path(out)
        self.name = name
        self.description = description
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}-", dir=self.out.parent))
        (self.staging / "imagesTr").mkdir()
        (self.staging / "labelsTr").mkdir()
        self.cases: list[ImportedCase] = []
        self.refusals: list[Refusal] = []
        self.warnings: list[str] = []

    def has_case(self, case_id: str) -> bool:
        return any(c.case_id == case_id for c in self.cases)

    def add(self, case: ImportedCase, image: sitk.Image, labels: sitk.Image) -> None:
        """Write one case's CT and paper-map labels; refuse a case id given twice or grids that differ."""
        if self.has_case(case.case_id):
            raise CaseRefused(case.case_id, "duplicate_case",
                              f"the case is given twice ({case.source}); the first one was kept")
        if (image.GetSize() != labels.GetSize() or not np.allclose(image.GetSpacing(), labels.GetSpacing())
                or not np.allclose(image.GetOrigin(), labels.GetOrigin())
                or not np.allclose(image.GetDirection(), labels.GetDirection())):
            raise CaseRefused(case.case_id, "grid_mismatch", "the label map's grid differs from the CT's")
        sitk.WriteImage(image, str(self.staging / "imagesTr" / f"{case.case_id}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(labels, str(self.staging / "labelsTr" / f"{case.case_id}.nii.gz"), useCompression=True)
        self.cases.append(case)

    def add_files(self, case: ImportedCase, image: Path, labels: Path) -> None:
        """Add a case already written by an importer (its two NIfTI files are copied, not re-encoded)."""
        if self.has_case(case.case_id):
            raise CaseRefused(case.case_id, "duplicate_case",
                              f"the case is given twice ({case.source}); the first one was kept")
        shutil.copy2(image, self.staging / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        shutil.copy2(labels, self.staging / "labelsTr" / f"{case.case_id}.nii.gz")
        self.cases.append(case)

    def refuse(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)

    def finish(self, extra: dict | None = None) -> dict:
        """Write dataset.json, the lesion table, the log and the report; rename into place; return the report."""
        try:
            if not self.cases:
                reasons = "; ".join(f"{r.case}: {r.reason}" for r in self.refusals[:5]) or "no case found"
                raise DatasetError(f"nothing to import into {self.out}: {reasons}")
            self._write_metadata(extra or {})
            report = dataset_report(self.cases)
            report["refused"] = [asdict(r) for r in self.refusals]
            (self.staging / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            (self.staging / "report.md").write_text(format_report(report) + "\n")
            if self.out.exists():
                shutil.rmtree(self.out)
            self.staging.chmod(0o755)
            self.staging.rename(self.out)
            return report
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _write_metadata(self, extra: dict) -> None:
        dataset = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **PAPER_LABELS},
            "numTraining": len(self.cases),
            "file_ending": ".nii.gz",
            "name": self.name,
            "description": self.description,
            "spine_node": {"label_convention": "paper", **extra},
        }
        (self.staging / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
        with open(self.staging / "lesions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "level", "class"])
            for case in self.cases:
                for level in case.levels:
                    writer.writerow([case.case_id, level, case.lesions.get(level, "none")])
        (self.staging / "cases.json").write_text(json.dumps([asdict(c) for c in self.cases], indent=1) + "\n")
        log = {"imported": [c.case_id for c in self.cases], "refused": [asdict(r) for r in self.refusals],
               "warnings": self.warnings}
        (self.staging / "import_log.json").write_text(json.dumps(log, indent=1) + "\n")


def read_lesion_table(dataset_dir: Path | str) -> dict[tuple[str, str], str]:
    """The lesion table of an imported dataset: (case, level) -> class."""
    path = Path(dataset_dir) / "lesions.csv"
    if not path.is_file():
        raise DatasetError(f"{dataset_dir}: no lesions.csv (not a dataset written by spine-node dataset import-*)")
    with open(path, newline="") as handle:
        return {(row["case"], row["level"]): row["class"] for row in csv.DictReader(handle)}


def dataset_report(cases: list[ImportedCase]) -> dict:
    """Cases, vertebrae per level and region, lesions per class and region."""
    per_level = {level: sum(level in c.levels for c in cases) for level in LEVELS}
    region = {"thoracic": set(THORACIC), "lumbar": set(LUMBAR)}
    lesions = {cls: {"thoracic": 0, "lumbar": 0} for cls in (*LESION_CLASSES, UNKNOWN)}
    for case in cases:
        for level in case.levels:
            cls = case.lesions.get(level, "none")
            lesions[cls]["thoracic" if level in region["thoracic"] else "lumbar"] += 1
    imported = {
        "cases": len(cases),
        "vertebrae": sum(per_level.values()),
        "thoracic": sum(per_level[level] for level in THORACIC),
        "lumbar": sum(per_level[level] for level in LUMBAR),
        "with_lesions": sum(sum(lesions[c].values()) for c in ("lytic", "blastic", "mixed")),
        **{c: sum(lesions[c].values()) for c in ("blastic", "lytic", "mixed")},
    }
    return {"imported": imported, "paper_table_2": dict(PAPER_TABLE_2), "per_level": per_level,
            "lesions_by_region": lesions}


def format_report(report: dict) -> str:
    """The report as a table: each figure of Table 2 beside the imported one; then per level and region."""
    names = {"cases": "CT scans", "vertebrae": "vertebrae", "thoracic": "  thoracic", "lumbar": "  lumbar",
             "with_lesions": "vertebrae with lesions", "blastic": "  blastic", "lytic": "  lytic",
             "mixed": "  mixed"}
    lines = [f"{'':<26}{'imported':>10}{'paper (Table 2)':>17}"]
    for key, label in names.items():
        lines.append(f"{label:<26}{report['imported'][key]:>10}{report['paper_table_2'][key]:>17}")
    lines.append("")
    lines.append("vertebrae per level: " + ", ".join(f"{k} {v}" for k, v in report["per_level"].items()))
    lines.append(f"{'lesions by region':<26}{'thoracic':>10}{'lumbar':>10}")
    for cls, counts in report["lesions_by_region"].items():
        if cls == UNKNOWN and not any(counts.values()):
            continue
        lines.append(f"  {cls:<24}{counts['thoracic']:>10}{counts['lumbar']:>10}")
    for refusal in report.get("refused", []):
        lines.append(f"refused {refusal['case']} [{refusal['code']}]: {refusal['reason']}")
    return "\n".join(lines)


def combine(datasets: list[Path | str], out: Path | str, log=print) -> dict:
    """One raw dataset from several imported ones (all in the paper's map); a case id given twice is refused.

    The lesion table keeps each source's classes (``unknown`` for VerSe and TotalSegmentator
    cases), so the paper's lesion figures count only the cases that have them.
    """
    writer = RawDatasetWriter(out, "SpineCombined", "combined by spine-node dataset combine")
    try:
        for dataset in map(Path, datasets):
            cases_file = dataset / "cases.json"
            if not cases_file.is_file():
                raise DatasetError(f"{dataset}: no cases.json (not a dataset written by spine-node dataset import-*)")
            for record in json.loads(cases_file.read_text()):
                case = ImportedCase(**record)
                try:
                    writer.add_files(case, dataset / "imagesTr" / f"{case.case_id}_0000.nii.gz",
                                     dataset / "labelsTr" / f"{case.case_id}.nii.gz")
                    log(f"{case.case_id}: from {dataset.name}")
                except CaseRefused as refused:
                    writer.refuse(Refusal(refused.case, str(dataset), refused.code, refused.reason))
                    log(f"refused {refused}")
        return writer.finish({"source": "combined", "datasets": [str(d) for d in datasets]})
    except BaseException:
        writer.abandon()
        raise
