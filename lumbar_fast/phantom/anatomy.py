"""An analytic 3-D lumbar spine in patient coordinates (mm, DICOM LPS: +x left, +y posterior, +z superior).

`sample_anatomy` draws one study's shapes from its random generator; `intensity` evaluates the MR signal of
any set of world points for one sequence. Each labelled (condition, level) narrows one structure locally
(the canal, a foramen or a subarticular recess), so its severity shows at its labelled point and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lumbar_fast import rsna

#: tissue -> signal per sequence (sag_t1, T2 for sag_t2 and ax_t2), on a 0..1 scale
TISSUES: dict[str, tuple[float, float]] = {
    "muscle": (0.32, 0.26),
    "fat": (0.90, 0.62),
    "marrow": (0.62, 0.42),
    "annulus": (0.34, 0.30),
    "nucleus": (0.40, 0.82),
    "csf": (0.14, 0.95),
    "ligament": (0.16, 0.14),
    "bone": (0.50, 0.36),
    "foramen_fat": (0.95, 0.60),
}
#: narrowing fraction of each severity class at signal strength 1 (uniform range)
NARROWING: tuple[tuple[float, float], ...] = ((0.0, 0.2), (0.38, 0.55), (0.68, 0.85))
#: a narrowing is full within PLATEAU_MM of its level and gone beyond FADE_MM (levels are >= 25 mm apart)
PLATEAU_MM, FADE_MM = 2.5, 8.0
EDGE_MM = 0.8  # width of the partial-volume edge of every shape
FORAMEN_HALF_WIDTH = 5.5  # mm along x: a foramen shows on two or three sagittal slices
#: real difficulty: a narrowed canal, recess or foramen also loses this share of its own signal (CSF, fat) at
#: narrowing 1, so that the labelled point darkens steadily from the first narrowing on
EFFACEMENT = 1.0
#: draws a study's narrowing per (condition, level) from the anatomy's random stream
NarrowingDraw = Callable[[np.random.Generator], dict[tuple[str, str], float]]


@dataclass(frozen=True)
class Anatomy:
    """One study's spine: shapes, tissue contrast and the narrowing of each (condition, level)."""

    disc_z: tuple[float, ...]  # z of the five disc centres, L1/L2 first (descending)
    disc_half_height: float
    body_y: float  # centre y of the vertebral bodies
    body_half: tuple[float, float]  # half width (x), half depth (y)
    canal_y: float  # centre y of the spinal canal
    canal_half: tuple[float, float]  # half width (x), half depth (y)
    recess: tuple[float, float, float]  # |x|, y, radius of the subarticular recesses
    foramen: tuple[float, float, float]  # |x|, y, dz above the disc of the foramen centres
    foramen_radii: tuple[float, float, float]  # x, y, z semi-axes
    contrast: tuple[float, ...]  # per-tissue gain (order of TISSUES)
    narrowing: dict[tuple[str, str], float]  # (condition, level) -> fraction of the structure closed
    lordosis: float  # curvature: the spine lies lordosis * (z - mid)^2 mm further back away from its middle
    effacement: float = 0.0  # share of a narrowed structure's signal lost at narrowing 1 (0: easy phantom)

    def spine_offset(self, z: np.ndarray | float) -> np.ndarray | float:
        """Posterior shift (mm) of the curved spine at height z; the shapes above are for the straight one."""
        mid = (self.disc_z[0] + self.disc_z[-1]) / 2
        return self.lordosis * (z - mid) ** 2

    def labelled_point(self, condition: str, level: str) -> np.ndarray:
        """The world point a radiologist marks for (condition, level): canal, foramen or recess centre."""
        z = self.disc_z[rsna.LEVELS.index(level)]
        side = 1.0 if condition.startswith("left") else -1.0  # LPS: +x is the patient's left
        if condition == "spinal_canal_stenosis":
            x, y = 0.0, self.canal_y
        elif "foraminal" in condition:
            fx, y, fdz = self.foramen
            x, z = side * fx, z + fdz
        else:
            rx, y, _ = self.recess
            x = side * rx
        return np.array([x, y + self.spine_offset(z), z])


def class_narrowing(severity: dict[tuple[str, str], int], signal: float) -> NarrowingDraw:
    """The easy phantom's narrowing: uniform in its class's NARROWING range, × `signal` (capped at 0.95)."""
    def draw(rng: np.random.Generator) -> dict[tuple[str, str], float]:
        narrowing = {}
        for key, cls in severity.items():
            low, high = NARROWING[cls]
            narrowing[key] = float(min(0.95, signal * rng.uniform(low, high)))
        return narrowing
    return draw


def sample_anatomy(rng: np.random.Generator, draw_narrowing: NarrowingDraw,
                   effacement: float = 0.0) -> Anatomy:
    """Draw a spine; `draw_narrowing` gives its narrowing per (condition, level), drawn at this point of the
    random stream (so the easy phantom's draws keep their order); `effacement` as Anatomy's."""
    top = rng.uniform(60.0, 75.0)
    gaps = rng.uniform(30.0, 38.0, size=4)
    disc_z = tuple(float(z) for z in top - np.concatenate([[0.0], np.cumsum(gaps)]))
    body_half = (float(rng.uniform(19, 24)), float(rng.uniform(14, 17)))
    posterior_wall = float(rng.uniform(-4.0, 4.0))
    canal_half = (float(rng.uniform(9.0, 11.5)), float(rng.uniform(6.0, 8.0)))
    canal_y = posterior_wall + canal_half[1] + 0.5
    recess_r = float(rng.uniform(3.2, 4.2))
    recess = (canal_half[0] + recess_r * 0.45, canal_y - canal_half[1] * 0.45, recess_r)
    recess_reach = recess[0] + recess_r  # the foramina lie lateral to the recesses, never overlapping them
    foramen = (recess_reach + FORAMEN_HALF_WIDTH + float(rng.uniform(0.0, 3.0)),
               posterior_wall + float(rng.uniform(4.0, 6.0)), float(rng.uniform(2.5, 4.5)))
    foramen_radii = (FORAMEN_HALF_WIDTH, float(rng.uniform(4.0, 5.0)), float(rng.uniform(6.0, 7.5)))
    narrowing = draw_narrowing(rng)
    return Anatomy(
        disc_z=disc_z, disc_half_height=float(rng.uniform(4.0, 5.5)),
        body_y=posterior_wall - body_half[1], body_half=body_half,
        canal_y=canal_y, canal_half=canal_half, recess=recess, foramen=foramen,
        foramen_radii=foramen_radii, contrast=tuple(rng.uniform(0.9, 1.1, size=len(TISSUES))),
        narrowing=narrowing, lordosis=float(rng.uniform(0.0004, 0.0012)), effacement=effacement,
    )


def intensity(anatomy: Anatomy, sequence: str, points: np.ndarray) -> np.ndarray:
    """MR signal (about 0..1) of `sequence` at world points `points` (rows, cols, 3), noise-free."""
    column = 0 if sequence == "sag_t1" else 1
    gains = zip(TISSUES.items(), anatomy.contrast, strict=True)
    value = {name: gain * pair[column] for (name, pair), gain in gains}
    full = _Canvas(points, np.zeros(points.shape[:2], np.float32), value)
    torso_depth = (np.hypot(full.x / 140.0, (full.y + 20.0) / 115.0) - 1.0) * 115.0  # ~ mm outside the skin
    full.paint(_soft_below(torso_depth, 0.0), "fat")
    full.paint(_soft_below(torso_depth, -12.0), "muscle")
    spine = _straighten(anatomy, full)
    if spine is None:
        return full.image
    for paint_part in (_paint_bodies, _paint_posterior_elements, _paint_foramina, _paint_canal):
        paint_part(anatomy, spine)
    return full.image


class _Canvas:
    """World coordinates of a block of pixels and the image painted on it, tissue by tissue."""

    def __init__(self, points: np.ndarray, image: np.ndarray, value: dict[str, float]) -> None:
        self.points, self.image, self.value = points, image, value
        self.x, self.y, self.z = (points[..., i] for i in range(3))
        self._bounds: np.ndarray | None = None

    def paint(self, alpha: np.ndarray, tissue: str) -> None:
        """Blend `tissue` over the image with partial-volume weight `alpha`."""
        self.image += alpha * (self.value[tissue] - self.image)

    def crop(self, mask: np.ndarray) -> _Canvas | None:
        """The canvas cut to the bounding rectangle of `mask` (a view: painting it paints the image)."""
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if not len(rows):
            return None
        block = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return _Canvas(self.points[block], self.image[block], self.value)

    def region(self, x: tuple[float, float], y: tuple[float, float]) -> _Canvas | None:
        """The canvas cut to the pixels whose world (x, y) fall in the given ranges (mm), or None."""
        inside = (self.x >= x[0]) & (self.x <= x[1]) & (self.y >= y[0]) & (self.y <= y[1])
        return self.crop(inside)

    def bounds(self) -> np.ndarray:
        """(2, 3): the smallest and largest world x, y, z of the canvas (y only before straightening)."""
        if self._bounds is None:
            corners = self.points[[0, 0, -1, -1], [0, -1, 0, -1]]  # a block of a plane: its corners bound it
            self._bounds = np.stack([corners.min(axis=0), corners.max(axis=0)])
        return self._bounds

    def reaches(self, axis: int, centre: float, radius: float) -> bool:
        """Whether the canvas' extent along world axis `axis` comes within `radius` of `centre`."""
        low, high = self.bounds()[:, axis]
        return bool(low <= centre + radius and high >= centre - radius)


def _straighten(anatomy: Anatomy, full: _Canvas) -> _Canvas | None:
    """The pixels around the spine, with y shifted so that the curved spine becomes the straight one."""
    x_range, (front, back) = _spine_box(anatomy)
    low, high = (full.bounds()[:, 2] - (anatomy.disc_z[0] + anatomy.disc_z[-1]) / 2)
    largest_shift = anatomy.lordosis * max(low * low, high * high)
    near = full.region(x_range, (front, back + largest_shift))  # the shift is posterior (+y) everywhere
    if near is None:
        return None
    straight = near.points.copy()
    straight[..., 1] -= anatomy.spine_offset(straight[..., 2])
    return _Canvas(straight, near.image, near.value).region(x_range, (front, back))


def _spine_box(anatomy: Anatomy) -> tuple[tuple[float, float], tuple[float, float]]:
    """World (x, y) ranges of the spine, from the front of the bodies to the spinous processes."""
    half_width = max(anatomy.body_half[0], anatomy.canal_half[0] + 28.0) + 3.0
    front = anatomy.body_y - anatomy.body_half[1] - 3.0
    back = anatomy.canal_y + anatomy.canal_half[1] + 35.0
    return (-half_width, half_width), (front, back)


def _paint_bodies(anatomy: Anatomy, spine: _Canvas) -> None:
    """Vertebral bodies with the discs between them."""
    bx, by = anatomy.body_half
    c = spine.region((-bx - 2, bx + 2), (anatomy.body_y - by - 2, anatomy.body_y + by + 2))
    if c is None:
        return
    body = _ellipse(c.x, c.y - anatomy.body_y, bx, by)
    c.paint(body, "marrow")
    height = anatomy.disc_half_height
    disc = np.zeros_like(body)
    for disc_z in anatomy.disc_z:
        if c.reaches(2, disc_z, height + EDGE_MM):
            disc += _soft_below(np.abs(c.z - disc_z), height)
    disc *= body
    c.paint(disc, "annulus")
    c.paint(disc * _ellipse(c.x, c.y - anatomy.body_y, bx * 0.6, by * 0.55), "nucleus")


def _paint_posterior_elements(anatomy: Anatomy, spine: _Canvas) -> None:
    """Bone behind and beside the canal: laminae and spinous processes, pedicles and facets."""
    cx, cy = anatomy.canal_half
    behind = anatomy.canal_y + cy
    c = spine.region((-6.0, 6.0), (behind - 1.0, behind + 33.0))
    if c is not None:
        c.paint(_box(c.x, c.y - behind - 16.0, 5.0, 16.0), "bone")
    centre_y, half_y = anatomy.canal_y + 2.0, cy + 3.0
    c = spine.region((-cx - 28.0, cx + 28.0), (centre_y - half_y - 1.0, centre_y + half_y + 1.0))
    if c is not None:
        c.paint(_box(np.abs(c.x) - (cx + 14.0), c.y - centre_y, 13.0, half_y), "bone")


def _paint_foramina(anatomy: Anatomy, spine: _Canvas) -> None:
    """Fat-filled foramina between the pedicles; narrowing closes each from below and from the front."""
    fx, fy, fdz = anatomy.foramen
    rx, ry, rz = anatomy.foramen_radii
    for side, condition in ((1.0, rsna.CONDITIONS[1]), (-1.0, rsna.CONDITIONS[2])):
        c = spine.region((side * fx - rx - 1.0, side * fx + rx + 1.0), (fy - ry - 1.0, fy + ry + 1.0))
        if c is None:
            continue
        for level, disc_z in zip(rsna.LEVELS, anatomy.disc_z, strict=True):
            n = anatomy.narrowing.get((condition, level), 0.0)
            centre_z = disc_z + fdz + rz * n
            if not c.reaches(2, centre_z, rz + EDGE_MM):
                continue
            alpha = _ellipsoid(c.x - side * fx, c.y - fy - ry * n * 0.5, c.z - centre_z,
                               rx, ry * (1.0 - 0.5 * n), rz * (1.0 - n))
            below = np.clip(1.0 - (c.z - centre_z) / max(rz * (1.0 - n), 1e-3), 0.0, 1.0)
            c.paint(_effaced(anatomy, alpha, n * below), "foramen_fat")  # effaced from below, by the disc


def _paint_canal(anatomy: Anatomy, spine: _Canvas) -> None:
    """The thecal sac and subarticular recesses; spinal narrowing closes the sac from behind at each disc."""
    cx, cy = anatomy.canal_half
    reach = cx + 1.5 * anatomy.recess[2] + 2.0
    c = spine.region((-reach, reach), (anatomy.canal_y - cy - 3.0, anatomy.canal_y + cy + 3.0))
    if c is None:
        return
    c.paint(_ellipse(c.x, c.y - anatomy.canal_y, cx + 1.5, cy + 1.5), "ligament")
    spinal = _level_profile(anatomy, "spinal_canal_stenosis", c)
    sac = _ellipse(c.x, c.y - (anatomy.canal_y - cy * spinal), cx, cy * (1.0 - spinal))
    c.paint(_effaced(anatomy, sac, spinal), "csf")
    rx, ry, rr = anatomy.recess
    for side, condition in ((1.0, rsna.CONDITIONS[3]), (-1.0, rsna.CONDITIONS[4])):
        n = _level_profile(anatomy, condition, c)
        shift = rr * n  # the recess retreats towards the midline as it closes
        recess = _ellipse(c.x - side * (rx - shift), c.y - ry, rr * (1.0 - n), rr * (1.0 - n))
        c.paint(_effaced(anatomy, recess, n), "csf")


def _effaced(anatomy: Anatomy, alpha: np.ndarray, narrowing: np.ndarray | float) -> np.ndarray:
    """A narrowed structure's paint weight with its own signal faded by effacement × narrowing (real
    difficulty: the centre of the labelled point darkens from the first narrowing on); unchanged when 0."""
    if not anatomy.effacement:
        return alpha
    return alpha * (1.0 - anatomy.effacement * narrowing)


def _level_profile(anatomy: Anatomy, condition: str, c: _Canvas) -> np.ndarray:
    """Narrowing of `condition` at each pixel's z: each level's value near its disc, 0 between levels."""
    profile = np.zeros(c.z.shape, np.float32)
    for level, disc_z in zip(rsna.LEVELS, anatomy.disc_z, strict=True):
        n = anatomy.narrowing.get((condition, level), 0.0)
        if n and c.reaches(2, disc_z, FADE_MM):
            profile += n * _bump(np.abs(c.z - disc_z))
    return profile


def _bump(distance: np.ndarray) -> np.ndarray:
    """1 within PLATEAU_MM, a cosine fall to 0 at FADE_MM."""
    t = np.clip((distance - PLATEAU_MM) / (FADE_MM - PLATEAU_MM), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _soft_below(distance: np.ndarray, limit: float) -> np.ndarray:
    """Partial-volume membership of `distance <= limit`."""
    return np.clip(0.5 - (distance - limit) / EDGE_MM, 0.0, 1.0).astype(np.float32)


def _ellipse(u: np.ndarray, v: np.ndarray, a, b) -> np.ndarray:
    """Membership of the ellipse (u/a)^2 + (v/b)^2 <= 1 (a, b may be arrays), with a soft edge."""
    a = np.maximum(a, 1e-3)
    b = np.maximum(b, 1e-3)
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return _soft_below((q - 1.0) * np.minimum(a, b), 0.0)


def _ellipsoid(u, v, w, a, b, c) -> np.ndarray:
    """Membership of an axis-aligned ellipsoid, with a soft edge."""
    scale = max(min(a, b, c), 1e-3)
    q = np.sqrt((u / a) ** 2 + (v / max(b, 1e-3)) ** 2 + (w / max(c, 1e-3)) ** 2)
    return _soft_below((q - 1.0) * scale, 0.0)


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    """Membership of the rectangle |u| <= half_u, |v| <= half_v, with soft edges."""
    return _soft_below(np.abs(u), half_u) * _soft_below(np.abs(v), half_v)
