"""Series geometry (DICOM slice planes) and rendering of the analytic spine onto them.

Every series samples its own planes (position, orientation, spacing, size); pixels are the anatomy's
intensity at each pixel's world position, so all series of a study, and every pitfall, stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lumbar_fast.phantom.anatomy import Anatomy, intensity

#: a series whose size varies takes the base size times one of these (384 -> 288, 336, 432, 480)
SIZE_FACTORS: tuple[float, ...] = (0.75, 0.875, 1.125, 1.25)
SAGITTAL_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
#: the off_centre pitfall: a sagittal stack's centre moves up to this far along x; an axial series runs on
#: up to twice this far beyond its top and bottom discs
OFF_CENTRE_MM = 12.0


@dataclass(frozen=True)
class SlicePlane:
    """One image plane: DICOM ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows, Columns."""

    position: tuple[float, float, float]
    orientation: tuple[float, ...]  # row cosine (3) then column cosine (3)
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)
    rows: int
    cols: int
    thickness: float
    stack: int  # which stack of its series this plane belongs to

    @cached_property
    def normal(self) -> np.ndarray:
        """Unit normal, cross(row cosine, column cosine) (kept: labelling asks every plane for each point)."""
        return np.cross(self.orientation[:3], self.orientation[3:])

    def world(self) -> np.ndarray:
        """World position (rows, cols, 3) of every pixel centre."""
        row_cos, col_cos = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        c = np.arange(self.cols, dtype=np.float32) * self.spacing[1]
        r = np.arange(self.rows, dtype=np.float32) * self.spacing[0]
        return (np.asarray(self.position, np.float32)
                + c[None, :, None] * row_cos.astype(np.float32)
                + r[:, None, None] * col_cos.astype(np.float32))

    def to_pixel(self, point: np.ndarray) -> tuple[float, float, float]:
        """(x = column, y = row, distance from the plane in mm) of a world point."""
        offset = point - np.asarray(self.position)
        x = float(offset @ np.asarray(self.orientation[:3])) / self.spacing[1]
        y = float(offset @ np.asarray(self.orientation[3:])) / self.spacing[0]
        return x, y, float(abs(offset @ self.normal))


def varied_size(base: int, rng: np.random.Generator) -> int:
    """A size other than `base`: base times one of SIZE_FACTORS, a multiple of 16."""
    return max(16, int(round(base * SIZE_FACTORS[int(rng.integers(len(SIZE_FACTORS)))] / 16)) * 16)


def _plane(centre: np.ndarray, row_cos: np.ndarray, col_cos: np.ndarray, fov: float, size: int,
           thickness: float, stack: int) -> SlicePlane:
    """A square plane of `size` pixels covering `fov` mm, centred on `centre`."""
    spacing = fov / size
    corner = centre - row_cos * spacing * (size - 1) / 2 - col_cos * spacing * (size - 1) / 2
    return SlicePlane(tuple(round(float(v), 4) for v in corner),
                      tuple(float(v) for v in np.concatenate([row_cos, col_cos])),
                      (round(spacing, 6), round(spacing, 6)), size, size, thickness, stack)


def sagittal_planes(anatomy: Anatomy, rng: np.random.Generator, size: int,
                    off_centre: bool = False) -> list[SlicePlane]:
    """A sagittal stack in ascending position order covering both foramina (slices along x); off centre,
    shifted along x by up to OFF_CENTRE_MM (and longer, to still cover both foramina)."""
    shift = float(rng.uniform(-OFF_CENTRE_MM, OFF_CENTRE_MM)) if off_centre else 0.0
    gap = float(rng.uniform(3.5, 4.5))
    needed = int(np.ceil(2 * (anatomy.foramen[0] + 8.0 + abs(shift)) / gap)) + 1
    count = max(needed, int(rng.integers(15, 20)))
    x_mid = float(rng.uniform(-1.5, 1.5)) + shift
    z_mid = float(np.mean(anatomy.disc_z)) + float(rng.uniform(-8, 8))
    centre_y = anatomy.canal_y - float(rng.uniform(15, 30))
    fov = float(rng.uniform(220, 260))
    row_cos, col_cos = np.array(SAGITTAL_IOP[:3]), np.array(SAGITTAL_IOP[3:])
    xs = x_mid + (np.arange(count) - (count - 1) / 2) * gap
    # the normal is -x: ascending position is descending x
    return [_plane(np.array([x, centre_y, z_mid]), row_cos, col_cos, fov, size, round(gap - 0.5, 2), 0)
            for x in xs[::-1]]


def axial_planes(anatomy: Anatomy, rng: np.random.Generator, sizes: list[int],
                 off_centre: bool = False) -> list[SlicePlane]:
    """Axial stacks in ascending position order: one stack per entry of `sizes`, together covering L1-S1.

    One stack is parallel to the axial plane; several stacks are each tilted through their own discs. Off
    centre, the series runs on up to 2·OFF_CENTRE_MM beyond its top and its bottom disc (each drawn apart).
    """
    above, below = rng.uniform(0, 2 * OFF_CENTRE_MM, size=2) if off_centre else (0.0, 0.0)
    gap = float(rng.uniform(3.5, 4.5))
    fov = float(rng.uniform(180, 230))
    centre_y = anatomy.canal_y - float(rng.uniform(10, 30))
    groups = np.array_split(np.arange(len(anatomy.disc_z)), len(sizes))
    planes: list[SlicePlane] = []
    for stack, (levels, size) in enumerate(zip(groups, sizes, strict=True)):
        top, bottom = anatomy.disc_z[levels[0]] + 14.0, anatomy.disc_z[levels[-1]] - 14.0
        top += above if stack == 0 else 0.0
        bottom -= below if stack == len(sizes) - 1 else 0.0
        tilt = 0.0 if len(sizes) == 1 else float(rng.uniform(-12, 12))
        angle = np.deg2rad(tilt)
        row_cos = np.array([1.0, 0.0, 0.0])
        col_cos = np.array([0.0, np.cos(angle), np.sin(angle)])
        normal = np.cross(row_cos, col_cos)
        count = int(np.ceil((top - bottom) / gap)) + 1
        z_mid = (top + bottom) / 2 + float(rng.uniform(-1.5, 1.5))
        hub = np.array([0.0, anatomy.canal_y, z_mid])
        for i in range(count):
            centre = hub + normal * (i - (count - 1) / 2) * gap
            centre = centre + col_cos * (centre_y - anatomy.canal_y) / np.cos(angle)
            planes.append(_plane(centre, row_cos, col_cos, fov, size, round(gap - 0.5, 2), stack))
    return planes


def render(anatomy: Anatomy, sequence: str, plane: SlicePlane, noise: float, bias: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Noisy image (rows, cols) float32 of `sequence` on `plane`; `bias` are the coefficients of a smooth
    multiplicative field over the image, `noise` the standard deviation of Rician noise."""
    image = intensity(anatomy, sequence, plane.world())
    u = np.linspace(-1, 1, plane.cols, dtype=np.float32)[None, :]
    v = np.linspace(-1, 1, plane.rows, dtype=np.float32)[:, None]
    image *= 1.0 + np.float32(bias[0]) * u + v * (np.float32(bias[1]) + np.float32(bias[2]) * u)
    real = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    imag = noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def nearest_plane(planes: list[SlicePlane], point: np.ndarray) -> tuple[int, float, float]:
    """Index, column x and row y of the plane nearest to a world point (the label's slice and pixel)."""
    best = min(range(len(planes)), key=lambda i: planes[i].to_pixel(point)[2])
    x, y, _ = planes[best].to_pixel(point)
    return best, x, y
