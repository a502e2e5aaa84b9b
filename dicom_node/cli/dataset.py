"""``spine-node dataset``: import public collections into nnU-Net v2 raw datasets in the paper's map.

* ``import-tcia COLLECTION --lesions WORKBOOK.xlsx --out DATASET``  Spine-Mets-CT-SEG (CT + DICOM SEG)
* ``import-verse FOLDER --out DATASET``                             VerSe NIfTI
* ``import-totalseg FOLDER --out DATASET [--convention ...]``       TotalSegmentator-convention NIfTI
* ``combine DATASET... --out DATASET``                               several imported datasets as one
* ``tcia-phantoms --out COLLECTION --n N``                          a TCIA-shaped phantom collection

Each import prints one line per case (imported, or refused with the reason), then the
dataset report beside the paper's Table 2. Exit status 0 when every case was imported,
1 when some were refused (the dataset holds the others), 2 when nothing could be imported.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dicom_node.errors import NodeError


def add_parser(sub) -> None:
    p = sub.add_parser("dataset", help="import TCIA Spine-Mets-CT-SEG, VerSe or TotalSegmentator data for training")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    t = dsub.add_parser("import-tcia", help="Spine-Mets-CT-SEG: CT series + DICOM SEG per case, lesion workbook")
    t.add_argument("collection", type=Path, help="the collection folder (one folder per case)")
    t.add_argument("--lesions", type=Path, help="the lesion workbook (.xlsx)")
    t.add_argument("--workbook-layout", type=Path,
                   help="JSON of the workbook's sheet, columns and class spellings (see research/datasets/workbook.py)")
    t.add_argument("--out", required=True, type=Path, help="the nnU-Net raw dataset folder to write")
    t.set_defaults(handler=cmd_import_tcia)
    v = dsub.add_parser("import-verse", help="VerSe: <sub>_ct.nii.gz + <sub>_seg-vert_msk.nii.gz")
    v.add_argument("folder", type=Path)
    v.add_argument("--out", required=True, type=Path)
    v.set_defaults(handler=cmd_import_verse)
    s = dsub.add_parser("import-totalseg", help="case folders with ct.nii.gz and TotalSegmentator labels")
    s.add_argument("folder", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--convention", default="totalsegmentator", choices=("totalsegmentator", "totalsegmentator-vertebrae"),
                   help="ids of a single label map: the merged 'total' output, or the Dataset292 vertebrae model")
    s.set_defaults(handler=cmd_import_totalseg)
    c = dsub.add_parser("combine", help="one dataset from several imported ones (all in the paper's label map)")
    c.add_argument("datasets", nargs="+", type=Path)
    c.add_argument("--out", required=True, type=Path)
    c.set_defaults(handler=cmd_combine)
    ph = dsub.add_parser("tcia-phantoms", help="write a TCIA-shaped collection of phantoms (CT + SEG + .xlsx)")
    ph.add_argument("--out", required=True, type=Path)
    ph.add_argument("--n", type=int, default=4)
    ph.add_argument("--seed", type=int, default=300000, help="first seed")
    ph.add_argument("--spacing", type=float, nargs=3, default=(3.0, 2.0, 2.0), metavar=("SZ", "SY", "SX"))
    ph.set_defaults(handler=cmd_tcia_phantoms)


def _finish(report: dict) -> int:
    from research.datasets.raw import format_report

    print(format_report(report))
    return 1 if report["refused"] else 0


def cmd_import_tcia(args: argparse.Namespace) -> int:
    from research.datasets.tcia import import_collection
    from research.datasets.workbook import DEFAULT_LAYOUT, WorkbookLayout

    layout = WorkbookLayout.from_json(args.workbook_layout) if args.workbook_layout else DEFAULT_LAYOUT
    if args.lesions is None:
        print("note: no --lesions workbook: every vertebra is recorded as not involved")
    return _finish(import_collection(args.collection, args.lesions, args.out, layout))


def cmd_import_verse(args: argparse.Namespace) -> int:
    from research.datasets.verse import import_verse

    return _finish(import_verse(args.folder, args.out))


def cmd_import_totalseg(args: argparse.Namespace) -> int:
    from research.datasets.totalseg import import_totalseg

    return _finish(import_totalseg(args.folder, args.out, args.convention))


def cmd_combine(args: argparse.Namespace) -> int:
    from research.datasets.raw import combine

    return _finish(combine(args.datasets, args.out))


def cmd_tcia_phantoms(args: argparse.Namespace) -> int:
    from research.datasets.tcia_phantom import write_collection

    if args.n < 1:
        raise NodeError("--n must be at least 1")
    cases = write_collection(args.out, list(range(args.seed, args.seed + args.n)), spacing=tuple(args.spacing))
    for case in cases:
        print(f"{case.name}: {case.orientation}, {case.phantom.grid.shape[0]} slices, "
              f"levels {case.phantom.levels_present()[0]}-{case.phantom.levels_present()[-1]}")
    print(f"lesion workbook: {args.out / 'lesions.xlsx'}")
    return 0
