"""Seed-independent building blocks of the phantom renderer, computed once per image size.

Everything here is cached per ``size`` (``functools.lru_cache``) so that rendering one phantom
only slices, indexes and combines precomputed arrays:

* :func:`pixel_grid` - image-plane coordinates of the pixel centres.
* :func:`vessel_bank` - a few branching pulmonary vessel trees per lung, drawn once in the
  canonical thorax frame (see :mod:`explorer.phantom.anatomy`) and looked up per case with the
  case's own geometric transform.
* :func:`noise_bank` - white, fine-grained and smooth (patchy) random fields; a case reads
  windows of them at random offsets instead of drawing new random numbers.
* :func:`draw_polyline` / :func:`stamp_disc` - small anti-aliased drawing primitives used for
  devices, Kerley lines and plate-like atelectasis; they only touch a bounding box.

The banks are generated from fixed seeds, so the whole renderer stays deterministic.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Canonical frame covered by the vessel textures: ``u`` (in thorax half-widths) and ``v``
#: (image units, top = -1). Wider than any case can reach after its transform.
TEX_U_RANGE = (-1.8, 1.8)
TEX_V_RANGE = (-1.3, 1.3)
#: Nominal thorax half-width used to make the texture pixels square in physical units.
TEX_NOMINAL_HALF_WIDTH = 0.76
#: Number of different vessel trees per lung.
N_VESSEL_TREES = 4
_BANK_SEED = 20240611


@dataclass(frozen=True)
class PixelGrid:
    """Image-plane coordinates of pixel centres, in [-1, 1] (x to the right, y downwards).

    Attributes:
        size: Image side in pixels.
        x: Float32 array (size, size) of horizontal coordinates.
        y: Float32 array (size, size) of vertical coordinates.
        pixel: Side of one pixel in image units (``2 / size``).
    """

    size: int
    x: np.ndarray
    y: np.ndarray
    pixel: float


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> PixelGrid:
    """Return the cached coordinate grid for a square image of ``size`` pixels."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return PixelGrid(size=size, x=x, y=y, pixel=2.0 / size)


# --- vessel trees ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VesselBank:
    """Pre-drawn vessel trees in the canonical frame.

    Attributes:
        right: Float32 array (N_VESSEL_TREES, nv, nu); trees of the patient's right lung.
        left: Same for the patient's left lung.
        nu: Texture width in texels.
        nv: Texture height in texels.
    """

    right: np.ndarray
    left: np.ndarray
    nu: int
    nv: int

    def lookup_index(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Flat texel index (nearest neighbour) for canonical coordinates ``u``, ``v``."""
        su = self.nu / (TEX_U_RANGE[1] - TEX_U_RANGE[0])
        sv = self.nv / (TEX_V_RANGE[1] - TEX_V_RANGE[0])
        iu = ((u - TEX_U_RANGE[0]) * su).astype(np.int32)
        iv = ((v - TEX_V_RANGE[0]) * sv).astype(np.int32)
        np.clip(iu, 0, self.nu - 1, out=iu)
        np.clip(iv, 0, self.nv - 1, out=iv)
        iv *= self.nu
        iv += iu
        return iv


def _segment_distance(
    px: np.ndarray, py: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """Euclidean distance from points (px, py) to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    ll = dx * dx + dy * dy
    if ll < 1e-12:
        return np.hypot(px - x0, py - y0)
    t = ((px - x0) * dx + (py - y0) * dy) / ll
    np.clip(t, 0.0, 1.0, out=t)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def _draw_tube(
    canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float, amp: float
) -> None:
    """Max-composite a cylinder-profile tube (texel units) onto ``canvas`` in place."""
    r = max(radius, 0.6)
    gain = amp * min(1.0, radius / 0.6)
    h, w = canvas.shape
    c0 = max(int(min(x0, x1) - r - 1), 0)
    c1 = min(int(max(x0, x1) + r + 2), w)
    r0 = max(int(min(y0, y1) - r - 1), 0)
    r1 = min(int(max(y0, y1) + r + 2), h)
    if c0 >= c1 or r0 >= r1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    d = _segment_distance(xx + 0.5, yy + 0.5, x0, y0, x1, y1)
    prof = np.clip(1.0 - (d / r) ** 2, 0.0, 1.0) * gain
    np.maximum(canvas[r0:r1, c0:c1], prof, out=canvas[r0:r1, c0:c1])


def _grow_tree(
    canvas: np.ndarray,
    rng: np.random.Generator,
    start: tuple[float, float],
    lateral: float,
    texel: float,
) -> None:
    """Draw one lung's vessel tree, radiating from the hilum ``start`` (texel coordinates).

    Args:
        canvas: Texture to draw into.
        rng: Random generator (fixed-seed bank generator).
        start: Hilum position in texels (column, row).
        lateral: -1 when lateral is towards smaller columns (patient right), +1 otherwise.
        texel: Texel side in physical image units.
    """
    # Trunk directions: angle 0 = straight lateral, -90 = up, +90 = down.
    base = np.array([-100.0, -72.0, -45.0, -18.0, 10.0, 38.0, 64.0, 92.0])
    stack: list[tuple[float, float, float, float, float, int]] = []
    for ang in base + rng.uniform(-8, 8, size=base.size):
        lower = ang > 0
        length = rng.uniform(0.12, 0.16) / texel
        radius = (rng.uniform(0.011, 0.014) if lower else rng.uniform(0.008, 0.011)) / texel
        stack.append((start[0], start[1], float(ang), length, radius, 0))
    while stack:
        x0, y0, ang, length, radius, depth = stack.pop()
        # Slightly curved vessel: two half-segments with a small bend.
        bend = rng.normal(0.0, 11.0)
        xm, ym = x0, y0
        for part, a_deg in enumerate((ang, ang + bend)):
            rad = np.deg2rad(a_deg)
            x1 = xm + lateral * np.cos(rad) * length * 0.5
            y1 = ym + np.sin(rad) * length * 0.5
            taper = radius * (1.0 - 0.08 * part)
            # Contrast grows slower than the calibre, so distal vessels stay faintly visible.
            _draw_tube(canvas, xm, ym, x1, y1, taper, taper**0.35)
            xm, ym = x1, y1
        if depth >= 7 or radius < 0.002 / texel:
            continue
        # Monopodial branching: a main continuation and a thinner side branch.
        sign = 1.0 if rng.random() < 0.5 else -1.0
        main_ang = ang + bend + sign * rng.uniform(3, 14)
        side_ang = ang + bend - sign * rng.uniform(24, 46)
        # Keep branches pointing away from the mediastinum.
        main_ang = float(np.clip(main_ang, -125, 120))
        side_ang = float(np.clip(side_ang, -125, 120))
        stack.append((xm, ym, main_ang, length * rng.uniform(0.8, 0.9), radius * 0.8, depth + 1))
        stack.append((xm, ym, side_ang, length * rng.uniform(0.55, 0.72), radius * 0.62, depth + 1))


@functools.lru_cache(maxsize=4)
def vessel_bank(size: int) -> VesselBank:
    """Return the cached vessel trees for images of ``size`` pixels.

    The texel is one image pixel (``2 / size`` image units) in both directions for a thorax of
    nominal half-width, so that the lookup is close to one texel per pixel.
    """
    texel = 2.0 / size
    span_u = TEX_U_RANGE[1] - TEX_U_RANGE[0]
    span_v = TEX_V_RANGE[1] - TEX_V_RANGE[0]
    nu = round(span_u * TEX_NOMINAL_HALF_WIDTH / texel)
    nv = round(span_v / texel)
    rng = np.random.default_rng(_BANK_SEED)

    def to_texel(u: float, v: float) -> tuple[float, float]:
        return ((u - TEX_U_RANGE[0]) / span_u * nu, (v - TEX_V_RANGE[0]) / span_v * nv)

    right = np.zeros((N_VESSEL_TREES, nv, nu), dtype=np.float32)
    left = np.zeros((N_VESSEL_TREES, nv, nu), dtype=np.float32)
    for k in range(N_VESSEL_TREES):
        _grow_tree(right[k], rng, to_texel(-0.3, -0.1), -1.0, texel)
        _grow_tree(left[k], rng, to_texel(0.3, -0.14), 1.0, texel)
    for arr in (right, left):
        for k in range(N_VESSEL_TREES):
            arr[k] = ndimage.gaussian_filter(arr[k], 0.8 * size / 224)
    peak = max(float(right.max()), float(left.max()), 1e-6)
    # Compress the dynamic range so that peripheral vessels stay (faintly) visible.
    np.power(right / peak, 0.6, out=right)
    np.power(left / peak, 0.6, out=left)
    right.setflags(write=False)
    left.setflags(write=False)
    logger.debug("vessel bank for size %d: %d trees of %dx%d texels", size, N_VESSEL_TREES, nv, nu)
    return VesselBank(right=right, left=left, nu=nu, nv=nv)


# --- noise ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseBank:
    """Random fields twice the image size; a case reads ``size x size`` windows of them.

    Attributes:
        white: Standard normal white noise.
        fine: Noise smoothed over about one pixel, unit standard deviation.
        smooth: Stack of 3 smooth fields (blobs of roughly a tenth of the image), unit std.
    """

    white: np.ndarray
    fine: np.ndarray
    smooth: np.ndarray

    def window(self, field: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random ``size x size`` window (a view, possibly flipped) of ``field``."""
        h, w = field.shape[-2:]
        r = int(rng.integers(0, h - size + 1))
        c = int(rng.integers(0, w - size + 1))
        win = field[..., r : r + size, c : c + size]
        if rng.random() < 0.5:
            win = win[..., ::-1, :]
        if rng.random() < 0.5:
            win = win[..., :, ::-1]
        return win


@functools.lru_cache(maxsize=4)
def noise_bank(size: int) -> NoiseBank:
    """Return the cached noise fields for images of ``size`` pixels."""
    rng = np.random.default_rng(_BANK_SEED + 1)
    n = 2 * size
    white = rng.standard_normal((n, n), dtype=np.float32)
    fine = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 0.9 * size / 224)
    fine /= fine.std()
    smooth = np.empty((3, n, n), dtype=np.float32)
    for k, frac in enumerate((0.035, 0.05, 0.075)):
        f = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), frac * size)
        smooth[k] = f / f.std()
    for arr in (white, fine, smooth):
        arr.setflags(write=False)
    return NoiseBank(white=white, fine=fine, smooth=smooth)


# --- drawing primitives (image units) ---------------------------------------------------------


def _to_pixel(x: float, size: int) -> float:
    """Image coordinate in [-1, 1] to pixel coordinate (pixel centres at k + 0.5)."""
    return (x + 1.0) * 0.5 * size


def draw_polyline(
    layer: np.ndarray,
    points: np.ndarray,
    radius: float,
    value: float,
    *,
    profile: str = "tube",
) -> None:
    """Max-composite an anti-aliased polyline onto ``layer`` in place.

    Args:
        layer: Float32 square image (size x size).
        points: Array (n, 2) of (x, y) image coordinates in [-1, 1].
        radius: Half-width of the line in image units.
        value: Peak value written at the centre line.
        profile: ``"tube"`` (cylinder: bright centre, soft edges), ``"wall"`` (hollow tube: bright
            edges, fainter lumen) or ``"flat"`` (uniform with a one-pixel anti-aliased edge).
    """
    size = layer.shape[0]
    scale = 0.5 * size
    pts = (np.asarray(points, dtype=np.float64) + 1.0) * scale
    r = max(radius * scale, 0.55)
    gain = value * min(1.0, radius * scale / 0.55)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        c0 = max(int(min(x0, x1) - r - 1), 0)
        c1 = min(int(max(x0, x1) + r + 2), size)
        r0 = max(int(min(y0, y1) - r - 1), 0)
        r1 = min(int(max(y0, y1) + r + 2), size)
        if c0 >= c1 or r0 >= r1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        d = _segment_distance(xx + 0.5, yy + 0.5, x0, y0, x1, y1) / r
        if profile == "tube":
            prof = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
        elif profile == "wall":
            prof = np.clip(1.0 - d * d, 0.0, 1.0) ** 0.5 * (0.45 + 0.55 * np.clip(d, 0, 1) ** 2)
        else:
            prof = np.clip((1.0 - d) * r + 0.5, 0.0, 1.0)
        np.maximum(layer[r0:r1, c0:c1], prof * gain, out=layer[r0:r1, c0:c1])


def stamp_disc(
    layer: np.ndarray, cx: float, cy: float, radius: float, value: float, *, soft: float = 0.0
) -> None:
    """Max-composite a filled disc (centre and radius in image units) onto ``layer``.

    Args:
        layer: Float32 square image.
        cx: Centre x in image units.
        cy: Centre y in image units.
        radius: Radius in image units.
        value: Value inside the disc.
        soft: Width of a linear edge ramp in image units (0 = one-pixel anti-aliasing).
    """
    size = layer.shape[0]
    scale = 0.5 * size
    px, py, r = _to_pixel(cx, size), _to_pixel(cy, size), radius * scale
    ramp = max(soft * scale, 1.0)
    c0, c1 = max(int(px - r - ramp - 1), 0), min(int(px + r + ramp + 2), size)
    r0, r1 = max(int(py - r - ramp - 1), 0), min(int(py + r + ramp + 2), size)
    if c0 >= c1 or r0 >= r1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    d = np.hypot(xx + 0.5 - px, yy + 0.5 - py)
    prof = np.clip((r - d) / ramp + 0.5, 0.0, 1.0) * value
    np.maximum(layer[r0:r1, c0:c1], prof, out=layer[r0:r1, c0:c1])
