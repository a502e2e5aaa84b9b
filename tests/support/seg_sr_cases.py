"""Cases of test_seg.py and test_sr.py: CT series built from DICOM files, and reference
label maps carried between grids through patient coordinates.

``load_ct_series`` is a deliberately small stand-in for the node's series loader: it reads
the headers, sorts the frames along the slice normal and builds a ``CTSeries`` whose
frame k is file k of that order. Reference labels never pass through it: they are
sampled at the series' voxel centres from their own grid (``sample_on_series``), and the
SEG is checked by sending each of its frames' pixels back to that grid through the
frame's own ImagePositionPatient (``seg_levels_on_grid``), so a flip, a swap of rows and
columns or an off-by-one slice anywhere shows as a Dice below 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipelines.records import CTSeries, Geometry, ModelIdentity, VertebraFinding
from pipelines.outputs.codes import vertebra_code
from pipelines.levels import LEVELS
from research.report_figures import OBLIQUE, rotation  # one oblique turn for the SEG, SR and report cases
from support.paths import REAL_CT, SHARED_DATA

MODEL = ModelIdentity(name="spine-demo", version="0.3.1", sha256="ab" * 32)
LEVEL_OF_CODE = {vertebra_code(level).value: level for level in LEVELS}

# Few thick slices, non-square pixels and a non-square matrix: a swap of rows and columns,
# of the two pixel spacings or a flip cannot go unnoticed, and every build takes well under a second.
PHANTOM = dict(fov="lumbar", spacing=(8.0, 2.5, 2.0), matrix=None)

# Warnings dciodvfy gives on patient and study attributes copied from the source, as every series
# of a study must carry them: the real CT's empty Patient ID and Study ID (type 2 in the CT too) and
# its study-level ProcedureCodeSequence, coded by its PACS vendor in the scheme "SECTRA"; the GE
# CT's one-component Patient's Name.
SOURCE_STUDY_WARNINGS = {
    "real-ct-t11-t12": [
        "Warning - Missing attribute or value that would be needed to build DICOMDIR - Patient ID",
        "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
        "Warning - Unrecognized defined term <SECTRA> for value 1 of attribute <Coding Scheme Designator>",
    ],
    "dcmqi-ct-3slice": [
        "Warning - Value dubious for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = <JANCT000> - "
        "Retired Person Name form",
    ],
}


@dataclass
class Grid:
    """A voxel grid in the Geometry convention: (k, j, i) -> origin + M @ (i, j, k)."""

    geometry: Geometry
    shape: tuple[int, int, int]

    @property
    def matrix(self) -> np.ndarray:
        sz, sy, sx = self.geometry.spacing
        return self.geometry.direction * np.array([sx, sy, sz])

    def world(self, k: np.ndarray, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        """LPS positions (n, 3) of voxel indices."""
        ijk = np.stack([i, j, k], axis=-1).astype(float)
        return np.asarray(self.geometry.origin, float) + ijk @ self.matrix.T

    def index(self, world: np.ndarray, atol: float = 1e-3) -> np.ndarray:
        """(n, 3) integer (k, j, i) of world positions that must fall on voxel centres."""
        ijk = np.linalg.solve(self.matrix, (world - np.asarray(self.geometry.origin, float)).T).T
        rounded = np.rint(ijk)
        assert np.abs(ijk - rounded).max() < atol, f"positions off the voxel centres by {np.abs(ijk - rounded).max()}"
        return rounded[:, ::-1].astype(int)


def load_ct_series(paths: list[Path], study_uid: str | None = None, series_uid: str | None = None) -> CTSeries:
    """A CTSeries from single-frame CT files: sorted along the normal, HU decoded, headers kept."""
    datasets = [pydicom.dcmread(p) for p in paths]
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    datasets.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in datasets], float)
    n = len(datasets)
    step = float(np.dot(positions[-1] - positions[0], normal) / (n - 1)) if n > 1 else float(datasets[0].SliceThickness)
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    for ds in datasets:
        del ds.PixelData
    sy, sx = (float(v) for v in datasets[0].PixelSpacing)
    geometry = Geometry(origin=positions[0], direction=np.column_stack([row, col, normal]), spacing=(step, sy, sx))
    return CTSeries(
        hu=hu.astype(np.float32), geometry=geometry, source_images=datasets,
        study_instance_uid=study_uid or datasets[0].StudyInstanceUID,
        series_instance_uid=series_uid or datasets[0].SeriesInstanceUID,
    )


def series_grid(series: CTSeries) -> Grid:
    return Grid(series.geometry, series.hu.shape)


def sample_on_series(reference: np.ndarray, ref_grid: Grid, series: CTSeries, atol: float = 1e-3) -> np.ndarray:
    """The reference label map read at every voxel centre of the series (which must be voxel centres of it)."""
    grid = series_grid(series)
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    idx = ref_grid.index(grid.world(k.ravel(), j.ravel(), i.ravel()), atol=atol)
    inside = np.all((idx >= 0) & (idx < np.array(reference.shape)), axis=1)
    out = np.zeros(grid.shape, reference.dtype).ravel()
    out[inside] = reference[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
    return out.reshape(grid.shape)


def findings_for(labels: np.ndarray, level_of_label: dict[int, str], series: CTSeries) -> list[VertebraFinding]:
    """VertebraFindings for every label present, in a scrambled (not head-to-feet) order."""
    voxel_ml = float(np.prod(series.geometry.spacing)) / 1000.0
    out = []
    lesions = ["none", "lytic", "blastic", "mixed"]
    for n, label in enumerate(sorted((int(v) for v in np.unique(labels) if v), reverse=True)):
        mask = labels == label
        out.append(VertebraFinding(
            level=level_of_label[label], label=label, voxels=int(mask.sum()),
            volume_ml=float(mask.sum()) * voxel_ml, mean_hu=float(series.hu[mask].mean()),
            lesion=lesions[n % 4], features={"largest_lytic_focus_mm3": float(n)}))
    return out


def seg_frames(seg: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (f, rows, cols) of segment numbers, positions (f, 3), orientation (6,)) read with pydicom."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    positions = np.array([fg.PlanePositionSequence[0].ImagePositionPatient
                          for fg in seg.PerFrameFunctionalGroupsSequence], float)
    if seg.SegmentationType == "BINARY":
        shared = seg.SharedFunctionalGroupsSequence[0]  # one segment: highdicom shares its identification
        numbers = [(fg if "SegmentIdentificationSequence" in fg else shared)
                   .SegmentIdentificationSequence[0].ReferencedSegmentNumber
                   for fg in seg.PerFrameFunctionalGroupsSequence]
        pixels = pixels.astype(np.int32) * np.array(numbers)[:, None, None]
    orientation = np.array(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
                           float)
    return pixels, positions, orientation


def level_of_segment(seg: Dataset) -> dict[int, str]:
    return {int(s.SegmentNumber): LEVEL_OF_CODE[s.SegmentedPropertyTypeCodeSequence[0].CodeValue]
            for s in seg.SegmentSequence if int(s.SegmentNumber) > 0}


def seg_levels_on_grid(seg: Dataset, grid: Grid, atol: float = 1e-3) -> np.ndarray:
    """The SEG painted onto ``grid`` through each frame's own position: an array of level indices (1 = T1)."""
    pixels, positions, iop = seg_frames(seg)
    sy, sx = (float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    row, col = iop[:3], iop[3:]
    code = {n: LEVELS.index(level) + 1 for n, level in level_of_segment(seg).items()}
    out = np.zeros(grid.shape, np.uint8)
    for frame, position in zip(pixels, positions):
        r, c = np.nonzero(frame)
        world = position + np.outer(c * sx, row) + np.outer(r * sy, col)
        idx = grid.index(world, atol=atol)
        assert np.all((idx >= 0) & (idx < np.array(grid.shape))), "SEG voxels outside the reference grid"
        values = np.vectorize(code.get)(frame[r, c]) if len(r) else np.zeros(0, np.uint8)
        assert not out[idx[:, 0], idx[:, 1], idx[:, 2]].any(), "two SEG frames paint the same voxel"
        out[idx[:, 0], idx[:, 1], idx[:, 2]] = values
    return out


def dice_per_level(truth: np.ndarray, result: np.ndarray) -> dict[str, float]:
    """Dice of each level present in either array (arrays of level indices, 1 = T1)."""
    out = {}
    for value in sorted((set(np.unique(truth)) | set(np.unique(result))) - {0}):
        a, b = truth == value, result == value
        out[LEVELS[int(value) - 1]] = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
    return out


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """A CT series, the label map handed to the writers, its findings, and the truth on its own grid."""

    name: str
    series: CTSeries
    labels: np.ndarray              # on the series, values = finding.label
    findings: list[VertebraFinding]
    truth: np.ndarray               # level indices (1 = T1 .. 17 = L5) on truth_grid
    truth_grid: Grid


def grid_from_lps(origin, matrix: np.ndarray, shape: tuple[int, int, int]) -> Grid:
    """A Grid from an LPS origin and a 3x3 matrix whose columns step i, j, k (as ITK and NIfTI give them)."""
    matrix = np.asarray(matrix, float)
    steps = np.linalg.norm(matrix, axis=0)
    geometry = Geometry(origin=np.asarray(origin, float), direction=matrix / steps,
                        spacing=(float(steps[2]), float(steps[1]), float(steps[0])))
    return Grid(geometry, shape)


def grid_of_itk(image) -> Grid:
    """The Grid of a SimpleITK image (ITK is LPS; its array is (k, j, i))."""
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    matrix = direction * np.array(image.GetSpacing(), float)
    size = image.GetSize()
    return grid_from_lps(image.GetOrigin(), matrix, (size[2], size[1], size[0]))


def phantom_grid(phantom) -> Grid:
    """The phantom's own LPS-aligned grid: (k, j, i) = (z, y, x)."""
    g = phantom.grid
    return Grid(Geometry(np.array(g.origin, float), np.eye(3), tuple(g.spacing)), g.shape)




def rotate_series(paths: list[Path], grid: Grid, folder: Path, r: np.ndarray = OBLIQUE) -> tuple[list[Path], Grid]:
    """Rewrite an axial series as an oblique one: the same pixels, the patient frame turned by ``r``.

    Every voxel keeps its value and moves rigidly with its plane, so the rotated reference
    grid (returned) carries the same labels exactly: no resampling anywhere.
    """
    from pydicom.valuerep import DSfloat
    centre = grid.world(np.array([grid.shape[0] / 2]), np.array([grid.shape[1] / 2]),
                        np.array([grid.shape[2] / 2]))[0]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        iop = np.array(ds.ImageOrientationPatient, float)
        ipp = np.array(ds.ImagePositionPatient, float)
        ds.ImageOrientationPatient = [DSfloat(float(v), auto_format=True) for v in (*r @ iop[:3], *r @ iop[3:])]
        ds.ImagePositionPatient = [DSfloat(float(v), auto_format=True) for v in centre + r @ (ipp - centre)]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OBLIQUE"]
        del ds.SliceLocation
        out.append(folder / path.name)
        ds.save_as(out[-1], enforce_file_format=True)
    g = grid.geometry
    rotated = Geometry(origin=centre + r @ (np.asarray(g.origin, float) - centre), direction=r @ g.direction,
                       spacing=g.spacing)
    return out, Grid(rotated, grid.shape)


def phantom_case(phantom, orientation: str, folder: Path) -> Case:
    """The phantom written as DICOM in HFS, FFS, HFP or FFP, or OBLIQUE (HFS turned by OBLIQUE)."""
    from pipelines.levels import PAPER
    from research.phantoms.dicom import write_dicom_series
    truth_grid = phantom_grid(phantom)
    paths = write_dicom_series(phantom, folder / "axial", "HFS" if orientation == "OBLIQUE" else orientation)
    if orientation == "OBLIQUE":
        paths, truth_grid = rotate_series(paths, truth_grid, folder / "oblique")
    series = load_ct_series(paths)
    labels = sample_on_series(phantom.labels, truth_grid, series)
    return Case(f"phantom-{orientation}", series, labels, findings_for(labels, PAPER, series),
                phantom.labels.copy(), truth_grid)


def real_ct_case() -> Case:
    """The real JPEG 2000 CT with EMPTY Study/Series UIDs, given derived ones; TotalSegmentator's T11/T12."""
    import nibabel as nib
    from pydicom.uid import generate_uid
    folder = REAL_CT
    paths = sorted(folder.iterdir())
    series = load_ct_series(paths, study_uid=generate_uid(entropy_srcs=["test study", folder.name]),
                            series_uid=generate_uid(entropy_srcs=["test series", folder.name]))
    series.repairs.append("empty Study/Series Instance UIDs: derived UIDs given")
    image = nib.load(SHARED_DATA / "real-ct-dicom-t11-t12-totalseg-labels.nii.gz")
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    data = np.asarray(image.dataobj).transpose(2, 1, 0)  # (i, j, k) -> (k, j, i)
    grid = grid_from_lps(ras_to_lps @ image.affine[:3, 3], ras_to_lps @ image.affine[:3, :3], data.shape)
    level_of = {32: "T12", 33: "T11"}
    truth = np.zeros(data.shape, np.uint8)
    for label, level in level_of.items():
        truth[data == label] = LEVELS.index(level) + 1
    labels = sample_on_series(np.where(np.isin(data, list(level_of)), data, 0).astype(np.uint8), grid, series,
                              atol=1e-2)
    return Case("real-ct-t11-t12", series, labels, findings_for(labels, level_of, series), truth, grid)


def dcmqi_case() -> Case:
    """dcmqi's 3-slice GE CT (implicit VR), with its spine mask (Thoracic spine) standing in for T10."""
    import SimpleITK as sitk
    folder = SHARED_DATA / "reference-objects" / "dcmqi-ct-3slice"
    series = load_ct_series(sorted(folder.glob("0*.dcm")))
    mask = sitk.ReadImage(str(folder / "spine_seg.nrrd"))
    grid = grid_of_itk(mask)
    truth = (sitk.GetArrayFromImage(mask) == 2).astype(np.uint8) * (LEVELS.index("T10") + 1)
    labels = sample_on_series(truth, grid, series)
    return Case("dcmqi-ct-3slice", series, labels, findings_for(labels, {10: "T10"}, series), truth, grid)


def pydicom_ct2_case() -> Case:
    """pydicom's 16x16 CT2 series: its three contiguous slices (the fourth lies 200 mm away), two boxes."""
    folder = SHARED_DATA / "reference-objects" / "pydicom-ct2"
    paths = [p for p in sorted(folder.iterdir())
             if float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) > 0]
    series = load_ct_series(paths)
    labels = np.zeros(series.hu.shape, np.uint8)
    labels[0:2, 4:10, 5:12] = 1
    labels[2, 6:12, 3:9] = 2
    truth = np.where(labels == 1, LEVELS.index("T1") + 1, np.where(labels == 2, LEVELS.index("T2") + 1, 0))
    return Case("pydicom-ct2", series, labels, findings_for(labels, {1: "T1", 2: "T2"}, series),
                truth.astype(np.uint8), series_grid(series))


def enhanced_case(phantom, folder: Path) -> tuple[Case, list[int]]:
    """The phantom as ONE Legacy Converted Enhanced CT whose frames are stored shuffled.

    Returns the case and, for each frame k of the series (sorted along the normal), the
    1-based number of the stored frame it came from.
    """
    import highdicom as hd
    from pipelines.levels import PAPER
    from research.phantoms.dicom import write_dicom_series
    paths = write_dicom_series(phantom, folder / "single", "HFS")
    datasets = [pydicom.dcmread(p) for p in paths]
    order = np.random.default_rng(7).permutation(len(datasets))
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [datasets[i] for i in order], series_instance_uid=hd.UID(), series_number=7,
        sop_instance_uid=hd.UID(), instance_number=1, include_dimension_index=False)
    path = folder / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    mf = pydicom.dcmread(path)
    positions = np.array([fg.PlanePositionSequence[0].ImagePositionPatient
                          for fg in mf.PerFrameFunctionalGroupsSequence], float)
    shared = mf.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    sort = np.argsort(positions @ normal)
    sy, sx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    step = float((positions[sort[-1]] - positions[sort[0]]) @ normal / (len(sort) - 1))
    hu = mf.pixel_array[sort].astype(np.float32)  # the phantom stores HU with slope 1, intercept 0
    del mf.PixelData
    geometry = Geometry(positions[sort[0]], np.column_stack([iop[:3], iop[3:], normal]), (step, sy, sx))
    series = CTSeries(hu=hu, geometry=geometry, source_images=[mf], study_instance_uid=mf.StudyInstanceUID,
                      series_instance_uid=mf.SeriesInstanceUID)
    labels = sample_on_series(phantom.labels, phantom_grid(phantom), series)
    case = Case("enhanced-ct", series, labels, findings_for(labels, PAPER, series), phantom.labels.copy(),
                phantom_grid(phantom))
    return case, [int(i) + 1 for i in sort]


def resampled_case(phantom, folder: Path) -> Case:
    """An oblique (tilted) acquisition resampled onto the phantom's axial grid: resampled=True."""
    from pipelines.levels import PAPER
    from research.phantoms.dicom import write_dicom_series
    grid = phantom_grid(phantom)
    paths, _ = rotate_series(write_dicom_series(phantom, folder / "axial", "HFS"), grid, folder / "oblique",
                             rotation((1.0, 0.0, 0.0), 12.0))
    oblique = load_ct_series(paths)
    series = CTSeries(hu=phantom.image.astype(np.float32), geometry=grid.geometry,
                      source_images=oblique.source_images, study_instance_uid=oblique.study_instance_uid,
                      series_instance_uid=oblique.series_instance_uid, resampled=True,
                      repairs=["gantry tilt: resampled onto an axial grid"])
    labels = phantom.labels.copy()
    return Case("resampled", series, labels, findings_for(labels, PAPER, series), phantom.labels.copy(), grid)



def named_case(phantom, name: str, folder: Path) -> Case:
    """The phantom as case ``name``: a patient position (HFS, FFS, HFP, FFP), OBLIQUE, "enhanced" or "resampled"."""
    if name == "enhanced":
        return enhanced_case(phantom, folder)[0]
    if name == "resampled":
        return resampled_case(phantom, folder)
    return phantom_case(phantom, name, folder)

def save_dataset(ds, path: Path) -> Path:
    """Write a SEG or SR as a DICOM file for the validators and readers (folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
