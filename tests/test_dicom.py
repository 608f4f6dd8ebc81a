"""dicom.py on pydicom's bundled third-party files and on series built from them: every supported transfer
syntax decodes, compressed twins equal their uncompressed originals, rescale / MONOCHROME1, geometry and
ordering, windowing, and millimetre crops centred on their point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lumbar_fast import dicom
from lumbar_fast.header import check_image

#: bundled files (never downloaded) of each transfer syntax ingest supports
SYNTAX_FILES = {
    "explicit VR little endian": "MR_small.dcm",
    "implicit VR little endian": "MR_small_implicit.dcm",
    "explicit VR big endian": "MR_small_bigendian.dcm",
    "deflated explicit VR little endian": "image_dfl.dcm",
    "RLE lossless": "MR_small_RLE.dcm",
    "JPEG baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG extended 12-bit": "JPGExtended.dcm",
    "JPEG lossless process 14": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LS lossless": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LS near-lossless": "JPEGLSNearLossless_16.dcm",
    "JPEG 2000 lossless": "MR_small_jp2klossless.dcm",
    "JPEG 2000": "693_J2KI.dcm",
}
#: (original, lossless twin) pairs that must decode to identical pixels
TWINS = [
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm"),
    ("rtdose_1frame.dcm", "rtdose_rle_1frame.dcm"),
    ("liver_1frame.dcm", "liver_expb_1frame.dcm"),
]


def bundled(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def decoded(name: str) -> np.ndarray:
    return dicom.decode_pixels(pydicom.dcmread(bundled(name)))


@pytest.mark.parametrize("syntax", SYNTAX_FILES)
def test_every_supported_transfer_syntax_decodes(syntax):
    ds = pydicom.dcmread(bundled(SYNTAX_FILES[syntax]))
    pixels = dicom.decode_pixels(ds)
    assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.std() > 0


@pytest.mark.parametrize("original, twin", TWINS)
def test_compressed_twins_decode_to_the_same_pixels(original, twin):
    np.testing.assert_array_equal(decoded(original), decoded(twin))


def test_lossy_jpeg_stays_close_to_its_original():
    difference = np.abs(decoded("SC_rgb_jpeg_dcmtk.dcm") - decoded("SC_rgb_rle.dcm"))
    assert difference.mean() < 3


def test_rescale_and_monochrome1(tmp_path):
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.float32)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    np.testing.assert_array_equal(dicom.decode_pixels(ds), raw * 2 - 100)
    ds.PhotometricInterpretation = "MONOCHROME1"
    low, high = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1  # signed 16-bit
    np.testing.assert_array_equal(dicom.decode_pixels(ds), ((low + high) - raw) * 2 - 100)


NATIVE_LAYOUTS = [  # (BitsAllocated, BitsStored, PixelRepresentation, transfer syntax)
    (16, 16, 1, pydicom.uid.ExplicitVRLittleEndian), (16, 12, 0, pydicom.uid.ExplicitVRLittleEndian),
    (16, 12, 1, pydicom.uid.ImplicitVRLittleEndian), (8, 8, 0, pydicom.uid.ExplicitVRLittleEndian),
    (8, 6, 1, pydicom.uid.ImplicitVRLittleEndian), (32, 20, 1, pydicom.uid.ExplicitVRLittleEndian),
    (32, 32, 0, pydicom.uid.ExplicitVRLittleEndian),
]


@pytest.mark.parametrize("allocated, stored, representation, syntax", NATIVE_LAYOUTS)
def test_native_frames_read_as_pydicom_reads_them(allocated, stored, representation, syntax, tmp_path):
    """Uncompressed grey frames of every integer layout, their unused high bits set at random (which the
    standard says to ignore, signed values sign-extended from bit BitsStored - 1) and zero padding after the
    frame: dicom's own reader gives pydicom's pixel_array, and the decoded slice its float values."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    dtype = np.dtype(f"<{'i' if representation else 'u'}{allocated // 8}")
    raw = np.random.default_rng(allocated + stored).integers(0, 256, ds.Rows * ds.Columns * dtype.itemsize,
                                                             dtype=np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, \
        representation
    ds.PixelData = raw.tobytes() + bytes(2 * dtype.itemsize)
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(tmp_path / "native.dcm")
    image = check_image(ds)
    assert dicom.is_native_grey(image)
    ds_trimmed = pydicom.dcmread(tmp_path / "native.dcm")
    ds_trimmed.PixelData = ds_trimmed.PixelData[:image.frame_bytes]
    expected = ds_trimmed.pixel_array
    got = dicom.native_pixels(ds.PixelData, image)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(dicom.decode_pixels(ds), expected.astype(np.float32))


def test_unusable_files_raise_with_their_reason(tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00\x01not a dicom file" * 50)
    (tmp_path / "empty.dcm").touch()
    cases = {bundled("MR_truncated.dcm"): "pixel data does not match the header: 8130 bytes",
             bundled("rtplan.dcm"): "no pixel data",
             garbage: "not a DICOM file: no .DICM. prefix",
             bundled("SC_rgb_rle.dcm"): r"missing \(0020,0037\) 'Image Orientation \(Patient\)'",
             tmp_path: "a folder, not a DICOM file",
             tmp_path / "empty.dcm": "empty file"}
    for path, reason in cases.items():
        with pytest.raises(dicom.DicomReadError, match=reason):
            dicom.read_slice(path)
    with pytest.raises(dicom.DicomReadError, match="multi-frame"):
        dicom.decode_pixels(pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm")))


# --- series built from MR_small ---------------------------------------------------------------------------

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # cross(row, col) = -x: the patient-signed normal is +x
TILTED = (1.0, 0.0, 0.0, 0.0, 0.8, -0.6)


def patient_normal(orientation) -> np.ndarray:
    """The slice normal as the cache defines it: ±cross(row, col), pointing along +x, +y or +z."""
    normal = np.cross(orientation[:3], orientation[3:])
    return -normal if normal[np.argmax(np.abs(normal))] < 0 else normal


def write_slice(folder: Path, instance: int, location: float, orientation=SAGITTAL, value: int = 0,
                size: int = 64, spacing: float = 1.0, dot: tuple[int, int] | None = None) -> None:
    """An MR_small-based file whose plane lies at `location` along its patient-signed normal (shifted
    in-plane by an amount that must not matter), filled with `value` (a bright pixel at `dot` = (x, y))."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    row_cos, col_cos = np.array(orientation[:3]), np.array(orientation[3:])
    in_plane = row_cos * (instance % 3) - col_cos * 5
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [float(v) for v in patient_normal(orientation) * location + in_plane]
    ds.InstanceNumber = instance
    ds.PixelSpacing = [spacing, spacing]
    pixels = np.full((size, size), value, dtype=np.int16)
    if dot is not None:
        pixels[dot[1], dot[0]] = 1000
    ds.Rows = ds.Columns = size
    ds.PixelData = pixels.tobytes()
    ds.save_as(folder / f"{instance}.dcm")


def test_series_splits_by_orientation_and_orders_by_position_not_instance(tmp_path):
    locations = {7: 2.0, 3: -4.0, 12: 0.0, 5: 6.0, 9: -2.0}  # instance -> location along the normal
    for instance, location in locations.items():
        write_slice(tmp_path, instance, location, value=int(location * 10) + 100)
    for instance, location in {20: 5.0, 21: -5.0}.items():
        write_slice(tmp_path, instance, location, orientation=TILTED, value=50, size=48)
    (tmp_path / "notes.dcm").write_text("not dicom")
    scan = dicom.read_series(tmp_path)
    assert [len(stack.slices) for stack in scan.stacks] == [5, 2]  # stack 0 holds the lowest instance (3)
    first = scan.stacks[0]
    assert [s.instance_number for s in first.slices] == [3, 9, 12, 7, 5]
    assert [s.location for s in first.slices] == sorted(locations.values())
    assert [int(s.pixels[0, 0]) for s in first.slices] == [60, 80, 100, 120, 160]
    assert [s.instance_number for s in scan.stacks[1].slices] == [21, 20]
    assert scan.stacks[1].slices[0].pixels.shape == (48, 48)
    assert scan.find_instance(7) == (0, 3) and scan.find_instance(20) == (1, 1)
    assert scan.find_instance(99) is None
    assert [(p.name, r.split(":")[0]) for p, r in scan.errors] == [("notes.dcm", "not a DICOM file")]


def test_stacks_run_the_same_way_through_the_patient_whatever_the_acquisition(tmp_path):
    """Two sagittal series at the same patient x, one with its rows and columns mirrored (the opposite
    cross(row, col)): both stacks run from the patient's right (-x) to the left (+x)."""
    mirrored = (0.0, -1.0, 0.0, 0.0, 0.0, -1.0)  # cross(row, col) = +x
    xs = {1: 8.0, 2: -8.0, 3: 0.0, 4: 4.0}
    for name, orientation in (("usual", SAGITTAL), ("mirrored", mirrored)):
        (tmp_path / name).mkdir()
        for instance, x in xs.items():
            write_slice(tmp_path / name, instance, x, orientation=orientation)
        stack = dicom.read_series(tmp_path / name).stacks[0]
        world_x = [float(s.position[0]) for s in stack.slices]
        assert world_x == sorted(xs.values()), name
        assert [s.location for s in stack.slices] == sorted(xs.values()), name


def test_instance_number_falls_back_to_the_file_name(tmp_path):
    write_slice(tmp_path, 17, 0.0)
    ds = pydicom.dcmread(tmp_path / "17.dcm")
    del ds.InstanceNumber
    ds.save_as(tmp_path / "23.dcm")
    ds.save_as(tmp_path / "scan.dcm")
    assert [dicom.read_slice(tmp_path / f"{name}.dcm").instance_number for name in (17, 23, "scan")] == \
        [17, 23, -1]


def test_window_is_robust_to_a_few_extreme_pixels():
    rng = np.random.default_rng(0)
    image = rng.normal(500, 50, (128, 128)).astype(np.float32)
    image[:2, :2] = 60000  # 4 hot pixels
    item = dicom.DicomSlice(Path("x"), 1, image, np.array(SAGITTAL), np.zeros(3), (1.0, 1.0))
    low, high = dicom.series_window([item])
    assert 300 < low < 400 and 600 < high < 700
    scaled = dicom.to_uint8(image, (low, high))
    assert scaled.dtype == np.uint8 and scaled.min() == 0 and scaled.max() == 255
    assert 120 < np.median(scaled) < 135


def test_crop_is_centred_on_its_point_and_sized_in_millimetres():
    image = np.zeros((100, 120), np.uint8)
    image[40, 70] = 255
    crop = dicom.crop_mm(image, 70, 40, (1.0, 1.0), 21.0, 21)  # 1 px per output pixel
    assert np.argwhere(crop == crop.max()).tolist() == [[10, 10]]
    square = np.zeros((100, 100), np.uint8)
    square[40:60, 40:60] = 200  # 20 px = 10 mm at 0.5 mm/px, 20 mm at 1 mm/px
    fine = dicom.crop_mm(square, 49.5, 49.5, (0.5, 0.5), 20.0, 40)
    coarse = dicom.crop_mm(square, 49.5, 49.5, (1.0, 1.0), 40.0, 40)
    assert (fine > 100).sum(axis=1).max() == 20 and (coarse > 100).sum(axis=1).max() == 20
    corner = dicom.crop_mm(square, 0, 0, (1.0, 1.0), 20.0, 20)
    assert (corner[:9, :9] == 0).all()  # outside the image: zero padding


def test_level_crop_channels_are_spatial_neighbours_with_edges_repeated():
    images = [np.full((50, 50), 10 * (i + 1), np.uint8) for i in range(4)]
    middle = dicom.level_crop(images, 2, 25, 25, (1.0, 1.0), 20.0, 16, 3)
    assert middle.shape == (16, 16, 3)
    assert [int(middle[8, 8, c]) for c in range(3)] == [20, 30, 40]
    edge = dicom.level_crop(images, 0, 25, 25, (1.0, 1.0), 20.0, 16, 5)
    assert [int(edge[8, 8, c]) for c in range(5)] == [10, 10, 10, 20, 30]


def test_resize_keeps_the_contract_mapping():
    image = np.zeros((60, 90), np.uint8)
    image[30:33, 45:48] = 255  # around (x, y) = (46, 31)
    small = dicom.resize(image, 30)
    y, x = np.unravel_index(np.argmax(small), small.shape)
    assert abs(x - 46 * 30 / 90) <= 1 and abs(y - 31 * 30 / 60) <= 1
