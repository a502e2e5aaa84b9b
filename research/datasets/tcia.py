"""Import the TCIA collection Spine-Mets-CT-SEG into an nnU-Net v2 raw dataset in the paper's map.

The collection (and the paper's own converter, rouge1616/Spine-Mets-CT-SEG
``tcia_dcm2nifti.py``) has one folder per case, holding a study folder with one CT series
folder and one DICOM SEG. Each case is read from the DICOM headers, not from folder names
or file counts:

1. the CT series: every CT image file in the case, sorted along the slice normal, with one
   orientation, one pixel spacing and even slice steps (its geometry is written as is:
   never resampled, so the NIfTI has the scanner's grid exactly);
2. the SEG: it must reference that CT series (ReferencedSeriesSequence) and its frame of
   reference; each frame is put on the CT slice *at its position* (ImagePositionPatient,
   within 0.01 mm) with the CT's orientation and pixel spacing, never by frame order;
3. the segments: each is mapped to its level by its SNOMED CT property type (and its label
   must not name another level), never by its segment number, which only says in which
   order the segments were written. Vertebrae outside T1..L5 (C7, S1, sacrum) are left
   out and noted; any other code is refused;
4. the lesion workbook (``research.datasets.workbook``): the class of each vertebra.

A case that cannot be read correctly is refused with its reason and the import goes on
with the others: a SEG whose CT is missing, a segment with an unknown code, overlapping
segments, a workbook row naming a level that is not segmented, a case given twice, and
more (each ``CaseRefused.code`` is listed in ``REFUSAL_CODES``).

The paper's script relabels the merged map in place, one old id after another
(``seg[seg == old] = new``), which goes wrong when a new id equals an old id still to be
handled; here every voxel's level comes from one look-up, so that cannot happen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from pipelines.levels import KNOWN_LEVELS, LEVELS, level_of_label_name
from research.datasets.raw import PAPER_LABELS, ImportedCase, RawDatasetWriter, Refusal, case_id_for
from research.datasets.workbook import DEFAULT_LAYOUT, Workbook, WorkbookLayout, lesions_of_case, read_workbook
from research.errors import CaseRefused, DatasetError

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
CT_STORAGE = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4

REFUSAL_CODES = {
    "no_ct": "the case folder holds no CT series",
    "several_ct": "the case folder holds more than one CT series",
    "no_seg": "the case folder holds no DICOM SEG",
    "several_seg": "the case folder holds more than one DICOM SEG",
    "seg_ct_missing": "the SEG references a CT series that is not in the case folder",
    "ct_geometry": "the CT slices do not form one regular grid",
    "seg_geometry": "a SEG frame does not lie exactly on a CT slice",
    "unknown_segment_code": "a segment's SNOMED CT code is not a vertebra",
    "segment_label_mismatch": "a segment's label names another level than its code",
    "duplicate_segment": "two segments are the same level",
    "overlapping_segments": "two segments share voxels",
    "no_vertebra": "no segment is one of T1..L5",
    "duplicate_case": "the case is given twice",
    "unreadable": "a file cannot be read",
    "workbook_unknown_level": "a workbook row names no level of T1..L5",
    "workbook_level_not_segmented": "a workbook row names a level that is not segmented",
    "workbook_unknown_class": "a workbook row's class is not a known spelling",
    "workbook_conflict": "two workbook rows give one level two classes",
}


def _vertebra_codes() -> dict[tuple[str, str], str]:
    """(scheme, code value) -> level, for every vertebra pydicom's DICOM tables name, plus S1 and sacrum."""
    table = {}
    for level in KNOWN_LEVELS:
        concept = getattr(codes.SCT, f"{level}Vertebra", None)
        if concept is not None:
            table[("SCT", concept.value)] = level
    table[("SCT", "65985001")] = "S1"  # TotalSegmentator's mapping; not in the DICOM tables
    table[("SCT", str(codes.SCT.Sacrum.value))] = "sacrum"
    return table


VERTEBRA_CODES = _vertebra_codes()


@dataclass
class CaseFiles:
    """The DICOM files of one case folder, grouped by what they are."""

    folder: Path
    ct_series: dict[str, list[Path]]  # SeriesInstanceUID -> files
    segs: list[Path]


@dataclass
class CTVolume:
    """A CT series as a (k, rows, cols) HU array with its exact grid and its slices' positions."""

    array: np.ndarray
    positions: np.ndarray  # (k, 3) ImagePositionPatient of each slice, sorted along the normal
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_step: float
    series_uid: str
    frame_of_reference: str
    patient_id: str
    patient_position: str

    def image(self, array: np.ndarray | None = None) -> sitk.Image:
        """An ITK image of ``array`` (default: the HU) on the series' grid, geometry as the headers give it."""
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetSpacing((self.pixel_spacing[1], self.pixel_spacing[0], self.slice_step))
        image.SetOrigin(tuple(float(v) for v in self.positions[0]))
        direction = np.stack([self.row_dir, self.col_dir, self.normal], axis=1)
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        return image


def import_collection(collection: Path | str, workbook: Path | str | None, out: Path | str,
                      layout: WorkbookLayout = DEFAULT_LAYOUT, log=print) -> dict:
    """Import every case folder of ``collection`` into the raw dataset ``out``; return the report.

    Each refused case is logged with its reason and left out; the others are imported.
    """
    collection = Path(collection)
    if not collection.is_dir():
        raise DatasetError(f"collection folder {collection} does not exist")
    book = read_workbook(workbook, layout) if workbook else None
    writer = RawDatasetWriter(out, "SpineMetsCTSEG",
                              f"Spine-Mets-CT-SEG (TCIA) imported by spine-node from {collection.name}")
    seen_series: dict[str, str] = {}
    try:
        for folder in sorted(p for p in collection.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                case, image, labels = _read_case_or_refuse(folder, book, seen_series)
                writer.add(case, image, labels)
                log(f"{case.case_id}: {len(case.levels)} vertebrae {case.levels[0]}-{case.levels[-1]}, "
                    f"lesions: {_lesion_text(case)}")
            except CaseRefused as refused:
                writer.refuse(Refusal(refused.case, str(folder), refused.code, refused.reason))
                log(f"refused {refused}")
        if book is not None:
            writer.warnings.extend(_rows_without_case(book, writer.cases, writer.refusals))
        return writer.finish({"source": "TCIA Spine-Mets-CT-SEG", "collection": str(collection),
                              "workbook": str(workbook) if workbook else None})
    except BaseException:
        writer.abandon()
        raise


def _lesion_text(case: ImportedCase) -> str:
    involved = [f"{level} {cls}" for level, cls in case.lesions.items() if cls != "none"]
    return ", ".join(involved) or "none"


def _rows_without_case(book: Workbook, cases: list[ImportedCase], refusals: list[Refusal]) -> list[str]:
    known = {c.case_id for c in cases} | {c.source for c in cases} | {r.case for r in refusals}
    known |= {c.patient_id for c in cases}
    return [f"workbook rows for {name!r} match no case folder" for name in book.rows if name not in known]


def _read_case_or_refuse(folder: Path, book: Workbook | None, seen_series: dict[str, str]):
    """``read_case``, with a malformed object (missing attributes, undecodable pixels) refused as unreadable."""
    try:
        return read_case(folder, book, seen_series)
    except CaseRefused:
        raise
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise CaseRefused(folder.name, "unreadable", f"a DICOM object of the case is malformed "
                          f"({type(exc).__name__}: {str(exc)[:120]})") from None


def read_case(folder: Path, book: Workbook | None, seen_series: dict[str, str] | None = None
              ) -> tuple[ImportedCase, sitk.Image, sitk.Image]:
    """One case folder: (record, CT image, paper-map label image), or CaseRefused with the reason."""
    name = folder.name
    files = scan_case(folder)
    ct_files, seg_path = _pick_series(files, name)
    ct = load_ct(ct_files, name)
    if seen_series is not None:
        if ct.series_uid in seen_series:
            raise CaseRefused(name, "duplicate_case", f"its CT series is the one already imported as "
                              f"{seen_series[ct.series_uid]} (the case is given twice)")
    seg = _read(seg_path, name)
    _check_reference(seg, ct, name, files)
    labels, levels, notes = seg_labels(seg, ct, name)
    rows = book.rows_for(name, ct.patient_id) if book is not None else []
    lesions = lesions_of_case(rows, levels, name) if book is not None else {level: "none" for level in levels}
    if book is not None and not rows:
        notes.append("no workbook row: every vertebra taken as not involved")
    demographics = book.demographics_for(name, ct.patient_id) if book is not None else {}
    case = ImportedCase(case_id_for(name), name, levels, lesions, list(ct.array.shape),
                        [ct.slice_step, *ct.pixel_spacing], ct.patient_position, ct.patient_id,
                        demographics, notes)
    if seen_series is not None:
        seen_series[ct.series_uid] = case.case_id
    return case, ct.image(), ct.image(labels)


def scan_case(folder: Path) -> CaseFiles:
    """Every DICOM file under a case folder, read header-only and sorted into CT series and SEGs."""
    ct_series: dict[str, list[Path]] = {}
    segs: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue  # not DICOM (a README, a thumbnail): not part of the case
        sop_class = str(header.get("SOPClassUID", ""))
        if sop_class == SEG_STORAGE or header.get("Modality") == "SEG":
            segs.append(path)
        elif sop_class in CT_STORAGE or header.get("Modality") == "CT":
            ct_series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(path)
    return CaseFiles(folder, ct_series, segs)


def _pick_series(files: CaseFiles, name: str) -> tuple[list[Path], Path]:
    if not files.segs:
        raise CaseRefused(name, "no_seg", "the case folder holds no DICOM SEG")
    if len(files.segs) > 1:
        raise CaseRefused(name, "several_seg", f"the case folder holds {len(files.segs)} DICOM SEGs, expected one")
    seg_header = _read(files.segs[0], name, header_only=True)
    referenced = _referenced_series(seg_header)
    if referenced not in files.ct_series:
        held = ", ".join(sorted(files.ct_series)) or "no CT series"
        raise CaseRefused(name, "seg_ct_missing",
                          f"its SEG references CT series {referenced or '(none)'}, which is not in the case "
                          f"folder (it holds {held})")
    return files.ct_series[referenced], files.segs[0]


def _referenced_series(seg) -> str:
    items = seg.get("ReferencedSeriesSequence") or []
    return str(items[0].SeriesInstanceUID) if items else ""


def _read(path: Path, name: str, header_only: bool = False):
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise CaseRefused(name, "unreadable", f"{path.name} cannot be read ({type(exc).__name__})") from None


def load_ct(files: list[Path], name: str) -> CTVolume:
    """The CT series as one regular grid, or CaseRefused (ct_geometry) naming what is irregular."""
    datasets = [_read(f, name) for f in files]
    first = datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    spacing = tuple(float(v) for v in first.PixelSpacing)
    for ds in datasets:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=ORIENTATION_TOLERANCE):
            raise CaseRefused(name, "ct_geometry", f"CT slice {ds.get('InstanceNumber')} has another orientation")
        if (not np.allclose([float(v) for v in ds.PixelSpacing], spacing, atol=1e-6)
                or (ds.Rows, ds.Columns) != (first.Rows, first.Columns)):
            raise CaseRefused(name, "ct_geometry", f"CT slice {ds.get('InstanceNumber')} has another matrix or spacing")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal)
    positions, datasets = positions[order], [datasets[i] for i in order]
    step = _regular_step(positions, normal, row_dir, col_dir, name)
    array = np.stack([_hu(ds) for ds in datasets])
    return CTVolume(array, positions, row_dir, col_dir, normal, spacing, step, str(first.SeriesInstanceUID),
                    str(first.get("FrameOfReferenceUID", "")), str(first.get("PatientID", "")),
                    str(first.get("PatientPosition", "")))


def _regular_step(positions: np.ndarray, normal: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray,
                  name: str) -> float:
    if len(positions) < 2:
        raise CaseRefused(name, "ct_geometry", "the CT series has a single slice")
    along = positions @ normal
    steps = np.diff(along)
    if steps.min() < POSITION_TOLERANCE_MM:
        raise CaseRefused(name, "ct_geometry", "two CT slices lie at the same position")
    if steps.max() - steps.min() > POSITION_TOLERANCE_MM:
        k = int(np.argmax(np.abs(steps - np.median(steps))))
        raise CaseRefused(name, "ct_geometry", f"CT slices are not evenly spaced ({steps[k]:.3f} mm after "
                          f"slice {k + 1}, {np.median(steps):.3f} mm elsewhere)")
    offsets = positions - positions[0]
    in_plane = np.stack([offsets @ row_dir, offsets @ col_dir], axis=1)
    if np.abs(in_plane).max() > POSITION_TOLERANCE_MM:
        raise CaseRefused(name, "ct_geometry", "the CT slices are shifted in plane (a tilted or sheared stack)")
    return float(np.mean(steps))


def _hu(ds) -> np.ndarray:
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    return np.clip(np.rint(values), -32768, 32767).astype(np.int16)


def _check_reference(seg, ct: CTVolume, name: str, files: CaseFiles) -> None:
    if str(seg.get("SOPClassUID", "")) != SEG_STORAGE:
        raise CaseRefused(name, "unreadable", "the SEG is not a (binary or fractional) Segmentation Storage object")
    frame = str(seg.get("FrameOfReferenceUID", ""))
    if frame and ct.frame_of_reference and frame != ct.frame_of_reference:
        raise CaseRefused(name, "seg_ct_missing", "the SEG's frame of reference is not its CT's")


def segment_levels(seg, name: str) -> tuple[dict[int, str], list[str]]:
    """SegmentNumber -> level for the T1..L5 segments, by SNOMED code (label checked); notes on the rest."""
    levels: dict[int, str] = {}
    notes: list[str] = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", ""))
        type_code = item.SegmentedPropertyTypeCodeSequence[0]
        key = (str(type_code.CodingSchemeDesignator), str(type_code.CodeValue))
        level = VERTEBRA_CODES.get(key)
        if level is None:
            raise CaseRefused(name, "unknown_segment_code",
                              f"segment {number} ({label!r}) has code ({key[1]}, {key[0]}, "
                              f"{type_code.get('CodeMeaning', '')!r}), which is not a vertebra")
        named = level_of_label_name(label) if label else None
        if named is not None and named != level:
            raise CaseRefused(name, "segment_label_mismatch",
                              f"segment {number} is coded {level} but labelled {label!r}")
        if level not in LEVELS:
            notes.append(f"segment {number} ({level}) is outside T1..L5 and left out")
            continue
        if level in levels.values():
            raise CaseRefused(name, "duplicate_segment", f"segments {_number_of(levels, level)} and {number} are both {level}")
        levels[number] = level
    if not levels:
        raise CaseRefused(name, "no_vertebra", "no segment of the SEG is one of T1..L5")
    return levels, notes


def _number_of(levels: dict[int, str], level: str) -> int:
    return next(n for n, lv in levels.items() if lv == level)


def seg_labels(seg, ct: CTVolume, name: str) -> tuple[np.ndarray, list[str], list[str]]:
    """The SEG as a paper-map label volume on the CT grid, its levels (cranial first) and notes."""
    levels, notes = segment_levels(seg, name)
    frames = _frames(seg)
    _check_frame_geometry(seg, ct, name)
    along = ct.positions @ ct.normal
    labels = np.zeros(ct.array.shape, np.uint8)
    owner = np.zeros(ct.array.shape, np.uint8)  # segment number that set each voxel, to find overlaps
    groups = seg.PerFrameFunctionalGroupsSequence
    for index, group in enumerate(groups):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        k = _slice_at(position, ct, along, name, index)
        if number not in levels:
            continue
        mask = frames[index] > 0
        clash = mask & (owner[k] > 0) & (owner[k] != number)
        if clash.any():
            other = levels.get(int(owner[k][clash][0]), "?")
            raise CaseRefused(name, "overlapping_segments",
                              f"segments {levels[number]} and {other} overlap ({int(clash.sum())} voxels on CT slice "
                              f"{k + 1} alone)")
        owner[k][mask] = number
        labels[k][mask] = PAPER_LABELS[levels[number]]
    present = [level for level in LEVELS if (labels == PAPER_LABELS[level]).any()]
    for number, level in levels.items():
        if level not in present:
            notes.append(f"segment {number} ({level}) is empty and left out")
    if not present:
        raise CaseRefused(name, "no_vertebra", "every T1..L5 segment of the SEG is empty")
    return labels, present, notes


def _frames(seg) -> np.ndarray:
    """The SEG's frames as (n, rows, cols): 0/1 for BINARY, thresholded at half for FRACTIONAL."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        top = float(seg.get("MaximumFractionalValue", 255))
        return (pixels.astype(np.float32) >= top / 2).astype(np.uint8)
    return pixels.astype(np.uint8)


def _check_frame_geometry(seg, ct: CTVolume, name: str) -> None:
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = shared.get("PlaneOrientationSequence")
    measures = shared.get("PixelMeasuresSequence")
    if orientation is None or measures is None:
        raise CaseRefused(name, "seg_geometry", "the SEG gives no shared plane orientation and pixel spacing")
    iop = np.array([float(v) for v in orientation[0].ImageOrientationPatient])
    if not np.allclose(iop, np.concatenate([ct.row_dir, ct.col_dir]), atol=ORIENTATION_TOLERANCE):
        raise CaseRefused(name, "seg_geometry", "the SEG's frames are oriented differently from the CT's slices")
    if not np.allclose([float(v) for v in measures[0].PixelSpacing], ct.pixel_spacing, atol=1e-6):
        raise CaseRefused(name, "seg_geometry", "the SEG's pixel spacing differs from the CT's")
    if (int(seg.Rows), int(seg.Columns)) != ct.array.shape[1:]:
        raise CaseRefused(name, "seg_geometry", "the SEG's matrix differs from the CT's")


def _slice_at(position: np.ndarray, ct: CTVolume, along: np.ndarray, name: str, index: int) -> int:
    k = int(np.argmin(np.abs(along - position @ ct.normal)))
    if np.abs(ct.positions[k] - position).max() > POSITION_TOLERANCE_MM:
        raise CaseRefused(name, "seg_geometry", f"SEG frame {index + 1} at {np.round(position, 3).tolist()} mm lies on "
                          f"no CT slice (nearest: {np.round(ct.positions[k], 3).tolist()})")
    return k
