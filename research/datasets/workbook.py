"""The lesion workbook of Spine-Mets-CT-SEG (an .xlsx read with openpyxl), with a configurable layout.

The collection gives, per vertebra level, a lesion class (not involved / lytic / blastic /
mixed) and, per patient, demographics. The workbook's exact columns could not be seen when
this was written, so the layout is a ``WorkbookLayout`` that a JSON file can override
(``spine-node dataset import-tcia --workbook-layout FILE``). **The assumed default**:

* layout ``long``: one row per (case, vertebra) on the first sheet, columns ``PatientID``,
  ``Vertebra`` (``T7``, ``T7 vertebra``, ``vertebrae_T7`` all read as T7) and ``Lesion type``;
* layout ``wide`` instead: one row per case, one column per level (``T1`` ... ``L5``) holding
  the class;
* class spellings are compared lower-case, without surrounding spaces: ``not involved``,
  ``none``, ``no lesion``, ``0`` = none; ``lytic``/``osteolytic``; ``blastic``/``osteoblastic``/
  ``sclerotic``; ``mixed``;
* an optional ``Demographics`` sheet, keyed by the same case column, whose other columns are
  copied into the dataset's ``cases.json``.

The case column may hold the case folder's name or the CT's PatientID.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipelines.levels import LEVELS, level_of_label_name
from research.errors import CaseRefused, DatasetError

DEFAULT_CLASSES = {
    "not involved": "none", "none": "none", "no lesion": "none", "0": "none", "": "none",
    "lytic": "lytic", "osteolytic": "lytic",
    "blastic": "blastic", "osteoblastic": "blastic", "sclerotic": "blastic",
    "mixed": "mixed", "mixed lytic-blastic": "mixed",
}


@dataclass(frozen=True)
class WorkbookLayout:
    """Where the workbook keeps what: sheet, columns, layout and the spelling of each class."""

    layout: str = "long"  # "long": a row per vertebra; "wide": a row per case, a column per level
    sheet: str | None = None  # None: the first sheet
    case_column: str = "PatientID"
    level_column: str = "Vertebra"
    class_column: str = "Lesion type"
    demographics_sheet: str | None = "Demographics"
    classes: dict = field(default_factory=lambda: dict(DEFAULT_CLASSES))

    @classmethod
    def from_json(cls, path: Path) -> "WorkbookLayout":
        """A layout from a JSON object of these fields (any subset); unknown fields are refused."""
        try:
            given = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable workbook layout ({exc})") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(given, dict) or set(given) - known:
            raise DatasetError(f"{path}: a workbook layout is a JSON object of {', '.join(sorted(known))}")
        if given.get("layout", "long") not in ("long", "wide"):
            raise DatasetError(f"{path}: layout must be 'long' or 'wide'")
        if "classes" in given:
            given["classes"] = {str(k).strip().lower(): v for k, v in given["classes"].items()}
        return cls(**given)


DEFAULT_LAYOUT = WorkbookLayout()


@dataclass
class WorkbookRow:
    """One (case, level, class) statement of the workbook, with the row it came from."""

    case: str
    level: str | None  # None when the level cell names no known vertebra
    level_text: str
    lesion: str | None  # None when the class cell is not a known spelling
    lesion_text: str
    row: int


@dataclass
class Workbook:
    """The workbook's statements grouped by case, and each case's demographics."""

    path: Path
    rows: dict[str, list[WorkbookRow]]
    demographics: dict[str, dict]

    def rows_for(self, *names: str) -> list[WorkbookRow]:
        """The rows whose case cell equals any of ``names`` (folder name, PatientID)."""
        found: list[WorkbookRow] = []
        for name in dict.fromkeys(n for n in names if n):
            found.extend(self.rows.get(name, []))
        return found

    def demographics_for(self, *names: str) -> dict:
        for name in names:
            if name in self.demographics:
                return self.demographics[name]
        return {}


def read_workbook(path: Path | str, layout: WorkbookLayout = DEFAULT_LAYOUT) -> Workbook:
    """Read the lesion workbook; a DatasetError naming the sheet and the columns found if it does not fit."""
    import openpyxl

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"lesion workbook {path} does not exist")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError, InvalidFileException...
        raise DatasetError(f"{path}: not a readable .xlsx workbook ({type(exc).__name__})") from None
    try:
        sheet = _sheet(book, layout.sheet, path)
        table = _table(sheet)
        rows = _long_rows(table, layout, path) if layout.layout == "long" else _wide_rows(table, layout, path)
        demographics = {}
        if layout.demographics_sheet and layout.demographics_sheet in book.sheetnames:
            demographics = _demographics(_table(book[layout.demographics_sheet]), layout)
    finally:
        book.close()
    grouped: dict[str, list[WorkbookRow]] = {}
    for row in rows:
        grouped.setdefault(row.case, []).append(row)
    return Workbook(path, grouped, demographics)


def _sheet(book, name: str | None, path: Path):
    if name is None:
        return book[book.sheetnames[0]]
    if name not in book.sheetnames:
        raise DatasetError(f"{path}: no sheet {name!r} (sheets: {', '.join(book.sheetnames)})")
    return book[name]


def _table(sheet) -> list[list[str]]:
    """All rows of a sheet as stripped strings (numbers written without a trailing .0)."""
    table = []
    for values in sheet.iter_rows(values_only=True):
        table.append([_text(v) for v in values])
    return table


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _columns(header: list[str], wanted: list[str], path: Path) -> list[int]:
    lowered = [h.lower() for h in header]
    missing = [w for w in wanted if w.lower() not in lowered]
    if missing:
        raise DatasetError(f"{path}: column(s) {', '.join(missing)} not found (columns: "
                           f"{', '.join(h for h in header if h) or 'none'}); give --workbook-layout")
    return [lowered.index(w.lower()) for w in wanted]


def _lesion(text: str, layout: WorkbookLayout) -> str | None:
    return layout.classes.get(text.strip().lower())


def _long_rows(table: list[list[str]], layout: WorkbookLayout, path: Path) -> list[WorkbookRow]:
    if not table:
        raise DatasetError(f"{path}: the sheet is empty")
    ci, li, ki = _columns(table[0], [layout.case_column, layout.level_column, layout.class_column], path)
    rows = []
    for number, values in enumerate(table[1:], start=2):
        if not any(values):
            continue
        cell = lambda i: values[i] if i < len(values) else ""  # noqa: E731
        rows.append(WorkbookRow(cell(ci), level_of_label_name(cell(li)) if cell(li) else None, cell(li),
                                _lesion(cell(ki), layout), cell(ki), number))
    return rows


def _wide_rows(table: list[list[str]], layout: WorkbookLayout, path: Path) -> list[WorkbookRow]:
    if not table:
        raise DatasetError(f"{path}: the sheet is empty")
    (ci,) = _columns(table[0], [layout.case_column], path)
    level_columns = {i: level_of_label_name(h) for i, h in enumerate(table[0]) if h and level_of_label_name(h)}
    if not level_columns:
        raise DatasetError(f"{path}: the wide layout needs one column per level (T1 ... L5)")
    rows = []
    for number, values in enumerate(table[1:], start=2):
        if not any(values):
            continue
        for i, level in level_columns.items():
            text = values[i] if i < len(values) else ""
            if text:
                rows.append(WorkbookRow(values[ci], level, table[0][i], _lesion(text, layout), text, number))
    return rows


def _demographics(table: list[list[str]], layout: WorkbookLayout) -> dict[str, dict]:
    if not table:
        return {}
    header = table[0]
    lowered = [h.lower() for h in header]
    if layout.case_column.lower() not in lowered:
        return {}
    ci = lowered.index(layout.case_column.lower())
    return {values[ci]: {header[i]: v for i, v in enumerate(values) if i != ci and header[i]}
            for values in table[1:] if values and values[ci]}


def lesions_of_case(rows: list[WorkbookRow], segmented: list[str], case: str) -> dict[str, str]:
    """The class of each segmented level from a case's rows, or a CaseRefused saying which row is wrong.

    Refused: a row naming no known level, a level outside T1..L5, a level that is not
    segmented, a class that is not a known spelling, two rows giving one level two classes.
    Segmented levels without a row are taken as not involved (``none``).
    """
    found: dict[str, str] = {}
    for row in rows:
        where = f"workbook row {row.row}"
        if row.level is None or row.level not in LEVELS:
            raise CaseRefused(case, "workbook_unknown_level",
                              f"{where} names level {row.level_text!r}, which is not one of T1..L5")
        if row.level not in segmented:
            raise CaseRefused(case, "workbook_level_not_segmented",
                              f"{where} gives {row.level} a class, but the SEG has no {row.level} segment "
                              f"(segmented: {', '.join(segmented)})")
        if row.lesion is None:
            raise CaseRefused(case, "workbook_unknown_class",
                              f"{where}: lesion class {row.lesion_text!r} of {row.level} is not one of "
                              f"not involved / lytic / blastic / mixed (see --workbook-layout)")
        if found.get(row.level, row.lesion) != row.lesion:
            raise CaseRefused(case, "workbook_conflict",
                              f"{where} gives {row.level} class {row.lesion}, an earlier row {found[row.level]}")
        found[row.level] = row.lesion
    return {level: found.get(level, "none") for level in segmented}
