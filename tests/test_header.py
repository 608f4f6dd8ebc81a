"""The header checks (lumbar_fast/header.py): every malformation of tests/malformations.py is refused with its
own reason, and property-based checks of the geometry tolerances and the pixel-data size rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from lumbar_fast import dicom, header
from tests.malformations import MALFORMATIONS

MR_SMALL = Path(get_testdata_file("MR_small.dcm", download=False))
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of each bad value it reads


def dataset(orientation=SAGITTAL, spacing=(0.5, 0.5), position=(1.0, 2.0, 3.0)) -> pydicom.Dataset:
    """A geometry-only dataset (check_geometry reads nothing else)."""
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [f"{v:.10g}" for v in orientation]
    ds.PixelSpacing = [f"{v:.10g}" for v in spacing]
    ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
    return ds


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """A rotation matrix from three Euler angles (radians)."""
    def axis(k: int, angle: float) -> np.ndarray:
        i, j = [n for n in range(3) if n != k]
        m = np.eye(3)
        m[i, i] = m[j, j] = np.cos(angle)
        m[i, j], m[j, i] = -np.sin(angle), np.sin(angle)
        return m
    return axis(2, a) @ axis(1, b) @ axis(0, c)


ANGLES = st.floats(-np.pi, np.pi, allow_nan=False)


def test_the_malformations_are_distinct():
    assert len({m.name for m in MALFORMATIONS}) == len(MALFORMATIONS) >= 60


def test_the_untouched_file_reads():
    item = dicom.read_slice(MR_SMALL)
    assert item.pixels.shape == (64, 64) and item.spacing[0] > 0


@pytest.mark.parametrize("malformation", MALFORMATIONS, ids=lambda m: m.name)
def test_each_malformation_is_refused_with_its_reason(malformation, tmp_path):
    target = tmp_path / "1.dcm"
    target.write_bytes(MR_SMALL.read_bytes())
    malformation.damage(target)
    with pytest.raises(dicom.DicomReadError, match=malformation.reason) as caught:
        dicom.read_slice(target)
    assert len(str(caught.value).splitlines()) == 1


def test_rle_rows_are_checked_against_the_segment_length(tmp_path):
    """RLE records no image size: a Rows too small would silently drop the last rows."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm", download=False))
    ds.Rows -= 7
    ds.save_as(tmp_path / "1.dcm")
    message = "RLE segments of 4096 bytes, but Rows 57 × Columns 64 need 3648"
    with pytest.raises(dicom.DicomReadError, match=message):
        dicom.read_slice(tmp_path / "1.dcm")


@settings(max_examples=200, deadline=None)
@given(ANGLES, ANGLES, ANGLES, st.integers(4, 8), st.floats(0.01, 50), st.floats(0.01, 50),
       st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3))
def test_any_rotation_rounded_like_a_scanner_is_accepted(a, b, c, decimals, dy, dx, position):
    matrix = rotation(a, b, c)
    orientation = np.round(np.concatenate([matrix[:, 0], matrix[:, 1]]), decimals)
    geometry = header.check_geometry(dataset(orientation, (dy, dx), position))
    np.testing.assert_allclose(geometry.orientation, orientation, atol=1e-9)
    np.testing.assert_allclose(geometry.position, position, rtol=1e-9, atol=1e-9)
    assert geometry.spacing == pytest.approx((dy, dx), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(ANGLES, ANGLES, ANGLES, st.floats(0.0, 3.0).filter(lambda s: abs(s - 1) > 1.5 * header.UNIT_TOLERANCE),
       st.booleans())
def test_orientation_vectors_off_unit_length_are_refused(a, b, c, scale, row):
    matrix = rotation(a, b, c)
    vectors = [matrix[:, 0] * (scale if row else 1), matrix[:, 1] * (1 if row else scale)]
    with pytest.raises(header.DicomReadError, match=f"{'row' if row else 'column'} cosines have length"):
        header.check_geometry(dataset(np.concatenate(vectors)))


@settings(max_examples=100, deadline=None)
@given(ANGLES, ANGLES, ANGLES, st.floats(0.8, 89.0), st.booleans())
def test_orientation_vectors_off_orthogonal_are_refused(a, b, c, degrees, sign):
    """A column vector turned towards the row vector by more than the tolerance's angle (0.57°)."""
    matrix = rotation(a, b, c)
    angle = np.radians(90 - degrees if sign else 90 + degrees)
    column = np.cos(angle) * matrix[:, 0] + np.sin(angle) * matrix[:, 1]
    with pytest.raises(header.DicomReadError, match="not orthogonal"):
        header.check_geometry(dataset(np.concatenate([matrix[:, 0], column])))


BAD_NUMBERS = st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=100, deadline=None)
@given(BAD_NUMBERS, st.floats(0.01, 50), st.booleans())
def test_pixel_spacing_must_be_positive_and_finite(bad, good, first):
    spacing = (bad, good) if first else (good, bad)
    with pytest.raises(header.DicomReadError, match=r"invalid \(0028,0030\) 'Pixel Spacing': .* is not"):
        header.check_geometry(dataset(spacing=spacing))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 1024), st.integers(1, 1024), st.sampled_from([1, 3]), st.sampled_from([8, 16]),
       st.integers(-3, 3), st.booleans())
def test_pixel_data_must_hold_one_frame_then_only_zero_padding(rows, columns, samples, bits, error, zeros):
    image = header.ImageHeader(pydicom.uid.ExplicitVRLittleEndian, rows, columns, samples,
                               "MONOCHROME2" if samples == 1 else "RGB", bits, bits, False, 1.0, 0.0)
    expected = rows * columns * samples * bits // 8
    frame = bytes(range(256)) * (expected // 256) + bytes(expected % 256)
    data = frame[:expected + error] if error <= 0 else frame + (bytes(error) if zeros else b"\1" * error)
    if error == 0 or (error > 0 and zeros):
        header.check_size(data, image)
    else:
        message = f"{len(data)} bytes, but Rows {rows} × Columns {columns} .* need {expected}"
        with pytest.raises(header.DicomReadError, match=message + ("$" if error < 0 else ", and the")):
            header.check_size(data, image)


def test_a_zero_padded_file_reads_as_its_unpadded_twin(tmp_path):
    """Trailing zero padding, even a whole frame's worth, is dropped; the slice equals the original's."""
    ds = pydicom.dcmread(MR_SMALL)
    ds.PixelData = ds.PixelData + bytes(len(ds.PixelData))
    ds.save_as(tmp_path / "padded.dcm")
    np.testing.assert_array_equal(dicom.read_slice(tmp_path / "padded.dcm").pixels,
                                  dicom.read_slice(MR_SMALL).pixels)


def test_frame_bytes_follow_pydicom_for_packed_and_subsampled_pixels():
    from pydicom.pixels.utils import get_expected_length

    for photometric, samples, bits in (("MONOCHROME2", 1, 1), ("YBR_FULL_422", 3, 8), ("RGB", 3, 8),
                                       ("MONOCHROME1", 1, 16)):
        ds = pydicom.Dataset()
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 5, 7, samples, bits
        ds.PhotometricInterpretation = photometric
        image = header.ImageHeader(pydicom.uid.ExplicitVRLittleEndian, 5, 7, samples, photometric, bits, bits,
                                   False, 1.0, 0.0)
        assert image.frame_bytes == get_expected_length(ds, unit="bytes"), photometric
