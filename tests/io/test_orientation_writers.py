"""Labels drawn in the view frame land on the source voxels in every output format.

For series whose stored orientation is not the display one (RAS, LAS, rows/columns transposed, oblique), a
label map is drawn in the canonical view, mapped back with the reorientation and written as NIfTI, NRRD, MHA,
DICOM-SEG and RT-STRUCT. Each file is read back with its own library and compared voxel for voxel with the
expected source-frame labels, and in physical space with where the view says the labelled voxels are.
"""

from __future__ import annotations

import numpy as np
import pytest

from medsam.io.dicom_seg import write_dicom_seg
from medsam.io.rtstruct import read_rtstruct_labels, write_rtstruct
from medsam.io.volume import read_volume
from medsam.io.volume_writers import write_label_volume
from medsam.preprocess.orientation import orient_volume, voxel_to_physical
from medsam.types import Volume

from dicom_synth import rotation, write_ct_series

L, P, S = np.eye(3)
# columns: row direction (x), column direction (y), slice normal (z) of the DICOM series
SERIES = {
    "RAS, IOP (-1,0,0,0,-1,0)": np.column_stack([-L, -P, S]),
    "LAS, IOP (1,0,0,0,-1,0)": np.column_stack([L, -P, -S]),
    "transposed, IOP (0,1,0,1,0,0)": np.column_stack([P, L, -S]),
    "oblique RAS 25/-20/15": rotation(25, -20, 15) @ np.column_stack([-L, -P, S]),
}


@pytest.fixture(params=list(SERIES), scope="module")
def case(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    series = write_ct_series(folder / "ct", num_slices=5, rows=24, cols=20, direction=SERIES[request.param])
    volume = read_volume(series.folder)
    oriented = orient_volume(volume, "canonical")
    assert not oriented.is_identity
    view_labels = view_drawing(oriented.view.shape)
    return request.param, volume, oriented, view_labels, oriented.labels_to_source(view_labels), folder


def view_drawing(shape) -> np.ndarray:
    """Two objects placed asymmetrically in the view (top-left block over slices 1-3, an L on slice 2-4)."""
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 2:7, 1:5] = 1
    labels[2:5, shape[1] - 8 : shape[1] - 2, shape[2] - 4] = 2
    labels[2:5, shape[1] - 3, shape[2] - 9 : shape[2] - 3] = 2
    return labels


def physical_points(volume: Volume, labels: np.ndarray, value: int) -> np.ndarray:
    """Physical positions (x, y, z mm) of the voxels holding ``value``, sorted for comparison."""
    pts = voxel_to_physical(volume, np.argwhere(labels == value))
    return pts[np.lexsort(np.round(pts, 3).T[::-1])]


def to_voxel(volume: Volume, xyz: np.ndarray) -> np.ndarray:
    """Physical points -> (z, y, x) fractional voxel indices of ``volume``."""
    m = np.asarray(volume.direction) @ np.diag(np.asarray(volume.spacing_mm)[::-1])
    ijk = np.linalg.solve(m, (np.asarray(xyz) - np.asarray(volume.origin_mm)).T).T
    return ijk[:, ::-1]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_volumes_read_back_on_the_source_grid(case, suffix):
    import SimpleITK as sitk

    name, volume, oriented, view_labels, expected, folder = case
    out = folder / f"labels{suffix}"
    write_label_volume(expected, volume, out, overwrite=True)
    image = sitk.ReadImage(str(out))
    back = sitk.GetArrayFromImage(image)
    assert np.array_equal(back, expected), name
    read = Volume(back, tuple(reversed(image.GetSpacing())), image.GetOrigin(),
                  np.asarray(image.GetDirection()).reshape(3, 3))
    assert np.allclose(read.direction, volume.direction, atol=1e-5)
    for value in (1, 2):
        assert np.allclose(physical_points(read, back, value), physical_points(oriented.view, view_labels, value),
                           atol=1e-3), (name, value)


def test_dicom_seg_reads_back_on_the_source_slices(case):
    import highdicom as hd

    name, volume, oriented, view_labels, expected, folder = case
    out = folder / "seg.dcm"
    write_dicom_seg(expected, volume, out, overwrite=True)
    seg = hd.seg.segread(out)
    uids = list(volume.metadata["dicom"].sop_instance_uids)
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    assert np.array_equal(back, expected), name
    # physical space from the SEG's own plane positions, independent of our reader
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = seg.pixel_array.reshape(len(seg.PerFrameFunctionalGroupsSequence), seg.Rows, seg.Columns)
    for number in (1, 2):
        pts = []
        for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
            if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != number:
                continue
            ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
            rows, cols = np.nonzero(frame)
            pts.append(ipp + cols[:, None] * col_mm * iop[:3] + rows[:, None] * row_mm * iop[3:])
        found = np.concatenate(pts)
        found = found[np.lexsort(np.round(found, 3).T[::-1])]
        assert np.allclose(found, physical_points(oriented.view, view_labels, number), atol=1e-3), (name, number)


def test_rtstruct_reads_back_on_the_source_slices(case):
    import pydicom

    name, volume, oriented, view_labels, expected, folder = case
    out = folder / "rs.dcm"
    write_rtstruct(expected, volume, out, label_names=["block", "ell"], overwrite=True)
    back, names = read_rtstruct_labels(out, volume)
    assert names == {1: "block", 2: "ell"}
    assert np.array_equal(back, expected), name
    # every contour point (mm) falls on a voxel the view labelled with that ROI
    ds = pydicom.dcmread(out)
    for roi in ds.ROIContourSequence:
        value = int(roi.ReferencedROINumber)
        for contour in roi.ContourSequence:
            xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
            zyx = np.round(to_voxel(oriented.view, xyz)).astype(int)
            assert np.all(view_labels[tuple(zyx.T)] == value), (name, value)
