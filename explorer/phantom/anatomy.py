"""Normal thoracic anatomy of the phantom world.

Coordinates
-----------
The image spans ``x, y`` in [-1, 1] (x to the right of the display, y downwards). A case's
thorax lives in a *canonical frame* obtained by shifting and rotating the image plane:

* ``xi``: horizontal, image units, 0 = patient midline, positive = patient's left
  (display right).
* ``u = xi / half_width``: horizontal in thorax half-widths; the inner rib cage is at
  ``|u| ~ 1`` at the lung bases.
* ``a = |u|``: distance from the midline towards the side of the pixel's lung.
* ``v``: vertical, image units, positive = caudal.

Attenuation model
-----------------
The renderer sums line integrals: body soft tissue (a flat-topped cylinder), minus lung air
(thickest centrally and at the bases, thinning towards the chest wall and the apex), plus bone,
vessels, lesions and metal. Heart and mediastinum *displace* lung air, which is what makes
their borders sharp against the lung. :mod:`explorer.phantom.renderer` maps the sum to display
brightness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from explorer.phantom.records import PhantomParams
from explorer.phantom.textures import N_VESSEL_TREES, draw_polyline, pixel_grid, vessel_bank

# Lung shape constants (a-units unless noted).
_A0 = 0.46  # centre of the apical dome
_RA = 0.52  # lateral radius at the transition level (grows towards the bases)
_RA_MED = 0.34  # medial radius of the apical dome
_V0 = -0.35  # level where the apical dome meets the lateral walls (image units)
_DOME_PEAK = 0.5  # a of the highest point of each hemidiaphragm
_DOME_K_LAT = 0.7  # curvature of the hemidiaphragm lateral to its peak
_DOME_K_MED = 0.5  # curvature medial to its peak
_CARINA = -0.33
# Posterior rib shape: v = top + spacing * t + acc * t^2 / 2 + slope * (a - 0.12)
#                         + (curv + curv_v * v) * max(a - 0.5, 0)^2
_RIB_SLOPE = -0.16
_RIB_CURV = 0.95
_RIB_CURV_V = -0.22
_RIB_ACC = 0.0045
_RIB_WIDTH = 0.44  # fraction of the rib period occupied by bone
_RIB_PROFILE_N = 64
_V_LUT = (-1.5, 1.5)
_V_LUT_N = 2048


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rib_profile_lut() -> np.ndarray:
    """Cross-section of a rib (0 = upper edge, 1 = lower edge): marrow plus cortical lines."""
    p = np.linspace(0.0, 1.0, _RIB_PROFILE_N, dtype=np.float64)
    body = np.sqrt(np.clip(1.0 - (2.0 * p - 1.0) ** 2, 0.0, 1.0))
    cortex = np.exp(-((p / 0.16) ** 2)) * 0.6 + np.exp(-(((1.0 - p) / 0.13) ** 2))
    return (0.5 * body + 0.5 * cortex).astype(np.float32)


_RIB_LUT = _rib_profile_lut()


def sample_params(rng: np.random.Generator) -> PhantomParams:
    """Sample the anatomy and acquisition parameters of a normal case.

    Args:
        rng: The case's anatomy random generator.

    Returns:
        Parameters with the measured fields (CTR, widths) still at zero.
    """
    tilt = float(np.clip(rng.normal(0.0, 1.6), -4.5, 4.5))
    d_right = float(rng.uniform(0.26, 0.48))
    return PhantomParams(
        center_x=float(rng.uniform(-0.04, 0.04)),
        center_y=float(rng.uniform(-0.02, 0.05)),
        tilt_deg=tilt,
        half_width=float(rng.uniform(0.76, 0.86)),
        apex_level=float(rng.uniform(-0.84, -0.76)),
        diaphragm_right=d_right,
        diaphragm_left=d_right + float(rng.uniform(0.02, 0.07)),
        target_ctr=float(rng.uniform(0.40, 0.475)),  # a normal heart
        mediastinum_scale=float(rng.uniform(0.9, 1.12)),
        soft_tissue=float(rng.uniform(0.9, 1.15)),
        breast_shadows=bool(rng.random() < 0.4),
        gastric_bubble=bool(rng.random() < 0.7),
        contrast=float(rng.uniform(0.88, 1.12)),
        brightness=float(rng.uniform(-0.05, 0.05)),
        gamma=float(rng.uniform(0.82, 1.2)),
        noise_sigma=float(rng.uniform(0.008, 0.028)),
        blur_sigma=float(rng.uniform(0.35, 0.85)),
    )


@dataclass
class Geometry:
    """Mutable working copy of a case's geometry; findings adjust it before the scene is built.

    Attributes mirror :class:`PhantomParams` plus structure details sampled per case.
    """

    cx: float
    cy: float
    tilt: float  # radians
    w: float
    apex: float
    dome_right: float
    dome_left: float
    target_ctr: float
    heart_left_frac: float  # fraction of the heart width left of the midline
    heart_height: float  # height of the cardiac silhouette per unit width (roughly)
    heart_round: float  # superellipse power of the upper heart borders (larger = rounder)
    heart_shift: float  # extra horizontal heart/mediastinum shift (xi units)
    med_scale: float
    med_extra: float  # enlarged cardiomediastinum: extra half-width (image units)
    med_lobulation: float
    soft: float
    breasts: bool
    bubble: bool
    rib_top: float
    rib_spacing: float
    clavicle_level: float
    vessel_right: int
    vessel_left: int
    rib_fracture: tuple[int, int, float, float, float] | None = None  # side, rib, a, shift, gap

    @classmethod
    def from_params(cls, p: PhantomParams, rng: np.random.Generator) -> Geometry:
        """Expand sampled parameters into a working geometry (uses ``rng`` for details)."""
        return cls(
            cx=p.center_x,
            cy=p.center_y,
            tilt=math.radians(p.tilt_deg),
            w=p.half_width,
            apex=p.apex_level,
            dome_right=p.diaphragm_right,
            dome_left=p.diaphragm_left,
            target_ctr=p.target_ctr,
            heart_left_frac=float(rng.uniform(0.62, 0.72)),
            heart_height=float(rng.uniform(0.42, 0.5)),
            heart_round=float(rng.uniform(1.4, 1.8)),
            heart_shift=0.0,
            med_scale=p.mediastinum_scale,
            med_extra=0.0,
            med_lobulation=0.0,
            soft=p.soft_tissue,
            breasts=p.breast_shadows,
            bubble=p.gastric_bubble,
            rib_top=p.apex_level - float(rng.uniform(0.0, 0.05)),
            rib_spacing=float(rng.uniform(0.088, 0.1)),
            clavicle_level=p.apex_level + float(rng.uniform(0.14, 0.22)),
            vessel_right=int(rng.integers(0, N_VESSEL_TREES)),
            vessel_left=int(rng.integers(0, N_VESSEL_TREES)),
        )

    def dome_at(self, side: int, a: float) -> float:
        """Diaphragm height at distance ``a`` from the midline on ``side`` (+1 left, -1 right)."""
        d = self.dome_left if side > 0 else self.dome_right
        k = _DOME_K_LAT if a > _DOME_PEAK else _DOME_K_MED
        return d + k * (a - _DOME_PEAK) ** 2

    def to_image(self, xi: np.ndarray | float, v: np.ndarray | float) -> tuple:
        """Canonical (xi, v) to image (x, y)."""
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        return self.cx + xi * c - v * s, self.cy + xi * s + v * c

    def lateral_wall(self, v: float) -> float:
        """a of the lateral lung border at height ``v`` (approximate, for placement)."""
        ra = _RA + 0.12 * max(v - _V0, 0.0)
        rv = _V0 - self.apex
        dv = min(v - _V0, 0.0) / rv
        if abs(dv) >= 1.0:
            return _A0
        return _A0 + ra * math.sqrt(1.0 - dv * dv)


class Scene:
    """Per-pixel fields of one case (internal working state of the renderer).

    Built from a :class:`Geometry`; findings then write opacities, masks and extra
    attenuation into it, and the renderer composes the image.
    """

    def __init__(self, geom: Geometry, size: int) -> None:
        self.geom = geom
        self.size = size
        grid = pixel_grid(size)
        self.pixel = grid.pixel
        c, s = math.cos(geom.tilt), math.sin(geom.tilt)
        dx = grid.x - np.float32(geom.cx)
        dy = grid.y - np.float32(geom.cy)
        self.xi = (dx * np.float32(c) + dy * np.float32(s)).astype(np.float32)
        self.v = (dy * np.float32(c) - dx * np.float32(s)).astype(np.float32)
        self.u = self.xi * np.float32(1.0 / geom.w)
        # Many contours depend on the height v only: they are evaluated on a fine 1-D grid and
        # looked up per pixel (much cheaper than evaluating them on the whole image).
        self.v_grid = np.linspace(_V_LUT[0], _V_LUT[1], _V_LUT_N, dtype=np.float32)
        vi = (self.v - np.float32(_V_LUT[0])) * np.float32((_V_LUT_N - 1) / (_V_LUT[1] - _V_LUT[0]))
        self.v_index = np.clip(vi + np.float32(0.5), 0, _V_LUT_N - 1).astype(np.int32)
        self.a = np.abs(self.u)
        self.left = self.u > 0  # patient's left = display right
        # Layers written by anatomy and findings.
        self.opacity = np.zeros((size, size), np.float32)  # fraction of lung air replaced
        self.extra = np.zeros((size, size), np.float32)  # added attenuation (lesions etc.)
        self.metal = np.zeros((size, size), np.float32)
        self.air_extra = np.zeros((size, size), np.float32)  # extra air (pneumothorax)
        self.vessel_gate = np.ones((size, size), np.float32)
        self.airway = np.zeros((size, size), np.float32)
        self.fracture_region: np.ndarray | None = None
        self._bones: np.ndarray | None = None
        self._lung_fields()
        self._heart_and_mediastinum()

    def lut(self, values: np.ndarray, box: tuple[slice, slice] | None = None) -> np.ndarray:
        """Look up a function of ``v`` sampled on :attr:`v_grid` at every pixel (of ``box``)."""
        idx = self.v_index if box is None else self.v_index[box]
        return values.take(idx)

    def box(self, xi0: float, xi1: float, v0: float, v1: float) -> tuple[slice, slice]:
        """Pixel bounding box (row and column slices) of a canonical rectangle."""
        g = self.geom
        xs, ys = g.to_image(np.array([xi0, xi1, xi0, xi1]), np.array([v0, v0, v1, v1]))
        half = 0.5 * self.size
        c0 = int(np.clip(np.floor((xs.min() + 1.0) * half) - 1, 0, self.size))
        c1 = int(np.clip(np.ceil((xs.max() + 1.0) * half) + 1, 0, self.size))
        r0 = int(np.clip(np.floor((ys.min() + 1.0) * half) - 1, 0, self.size))
        r1 = int(np.clip(np.ceil((ys.max() + 1.0) * half) + 1, 0, self.size))
        return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))

    # --- lungs ---------------------------------------------------------------------------------

    def _lung_fields(self) -> None:
        g = self.geom
        a, v = self.a, self.v
        dome0 = np.where(self.left, np.float32(g.dome_left), np.float32(g.dome_right))
        da = a - np.float32(_DOME_PEAK)
        k = np.where(da > 0, np.float32(_DOME_K_LAT), np.float32(_DOME_K_MED))
        self.dome = dome0 + k * da * da
        ra = np.float32(_RA) + np.float32(0.12) * np.maximum(v - np.float32(_V0), 0)
        lateral = a > np.float32(_A0)
        ra_side = np.where(lateral, ra, np.float32(_RA_MED))
        rv = np.float32(_V0 - g.apex)
        p = (a - np.float32(_A0)) / ra_side
        q = np.minimum(v - np.float32(_V0), 0) / rv
        r = np.sqrt(p * p + q * q)
        # Distance (a-units) inside the lateral/apical pleural surface; the radius used to turn
        # the normalised radius into a distance blends smoothly across the apex.
        blend = np.clip((a - np.float32(_A0 - 0.12)) * np.float32(1 / 0.24), 0.0, 1.0)
        self.dlat = (1.0 - r) * (np.float32(_RA_MED) + (ra - np.float32(_RA_MED)) * blend)
        self.ddia = self.dome - v
        t = np.minimum(self.dlat * np.float32(g.w / 0.12), self.ddia * np.float32(1.0 / 0.045))
        self.lung = np.sqrt(np.clip(t, 0.0, 1.0))
        vf = np.clip((v - np.float32(g.apex)) * np.float32(1.0 / 0.65), 0.0, 1.0)
        self.lung *= np.float32(0.55) + np.float32(0.45) * vf
        self.in_lung = (self.dlat > 0) & (self.ddia > 0)

    # --- heart & mediastinum -----------------------------------------------------------------

    def heart_field(self, width: float) -> np.ndarray:
        """Heart occupancy (0..1) for a cardiac silhouette ``width`` image units wide.

        The silhouette sits on the diaphragm: the left border (left ventricle) bulges from the
        pulmonary trunk down to the apex just above the left dome, the right border (right
        atrium) bulges lower and less. Above its top the heart merges into the mediastinum.
        """
        g = self.geom
        vg = self.v_grid
        l_max = g.heart_left_frac * width
        r_max = width - l_max
        top = 0.5 * (g.dome_left + g.dome_right) - g.heart_height * (0.6 + 0.6 * width)
        apex_v = g.dome_at(1, l_max / g.w) - 0.06
        rv_c = g.dome_at(-1, r_max / g.w) - 0.12
        power = g.heart_round

        def bulge(centre: float, up: float, low: float) -> np.ndarray:
            # Superelliptic rise from the top (power 1 = straight, 2 = circular), elliptic turn
            # towards the diaphragm.
            t = vg - np.float32(centre)
            up_t = np.clip(-t / up, 0.0, 1.0)
            upper = np.clip(1.0 - up_t**power, 0.0, 1.0) ** (1.0 / power)
            low_t = np.clip(t / low, 0.0, 1.0)
            return np.where(t < 0, upper, np.sqrt(1.0 - low_t * low_t)).astype(np.float32)

        left = np.float32(0.15) + np.float32(l_max - 0.15) * bulge(apex_v, apex_v - top, 0.09)
        right = np.float32(0.15) + np.float32(r_max - 0.15) * bulge(rv_c, rv_c - top - 0.08, 0.14)
        ramp = np.clip((vg - np.float32(top)) * np.float32(1.0 / 0.06), 0.0, 1.0)
        box = self.box(-r_max - 0.05 + g.heart_shift, l_max + 0.05 + g.heart_shift, top - 0.02, 1.5)
        xi = self.xi[box] - np.float32(g.heart_shift)
        edge = np.float32(1.0 / 0.012)
        h = np.clip((self.lut(left, box) - xi) * edge, 0.0, 1.0)
        h *= np.clip((xi + self.lut(right, box)) * edge, 0.0, 1.0)
        h *= self.lut(ramp * np.float32(0.93), box)
        out = np.zeros_like(self.v)
        out[box] = h
        return out

    def _heart_width(self, heart: np.ndarray) -> float:
        mask = (heart > 0.45) & (self.ddia > -0.01)
        cols = np.flatnonzero(mask.any(axis=0))
        return float(cols[-1] - cols[0] + 1) if cols.size else 0.0

    def thoracic_width_px(self) -> float:
        """Inner thoracic width in pixels (widest separation of the lateral lung borders)."""
        g = self.geom
        v_base = max(g.dome_left, g.dome_right) + 0.12
        a_lat = g.lateral_wall(v_base)
        return 2.0 * a_lat * g.w / self.pixel

    def _heart_and_mediastinum(self) -> None:
        g = self.geom
        thor = self.thoracic_width_px()
        heart = self.heart_field(g.target_ctr * thor * self.pixel)
        self.heart = heart
        self.heart_mask = (heart > 0.45) & (self.ddia > -0.01) & (self.v > np.float32(-0.55))
        self.thoracic_px = thor
        self.heart_px = self._heart_width(heart)
        # Upper mediastinum: right border (SVC), left border with aortic knob and pulmonary trunk.
        vg = self.v_grid
        ms = np.float32(g.med_scale)
        knob = np.float32(-0.43)
        right = ms * (np.float32(0.12) + np.float32(0.055) * _smoothstep((vg + 0.62) * 6.0))
        left = ms * np.float32(0.12) + np.float32(0.085) * np.exp(-(((vg - knob) / 0.065) ** 2))
        # Pulmonary trunk and left atrial appendage, merging into the left heart border.
        left += np.float32(0.045) * _smoothstep((vg + np.float32(0.33)) * 10.0)
        if g.med_extra > 0:
            bulge = np.float32(g.med_extra) * _smoothstep((vg + 0.72) * 5.0)
            bulge *= 1.0 - _smoothstep((vg - np.float32(_CARINA + 0.22)) * 6.0)
            lob = 1.0 + np.float32(g.med_lobulation) * np.sin((vg + np.float32(0.7)) * 12.0)
            right = right + bulge * lob
            left = left + bulge * np.float32(0.85) * (2.0 - lob)
        lim = float(max(right.max(), left.max())) + 0.05
        box = self.box(-lim + g.heart_shift, lim + g.heart_shift, -1.5, 1.5)
        xi = self.xi[box] - np.float32(g.heart_shift)
        edge = np.float32(1.0 / 0.012)
        med = np.clip((xi + self.lut(right, box)) * edge, 0.0, 1.0)
        med *= np.clip((self.lut(left, box) - xi) * edge, 0.0, 1.0)
        # Descending aorta: faint left paravertebral stripe below the knob.
        desc = np.clip((np.float32(0.03) - np.abs(xi - np.float32(0.05))) * edge, 0.0, 1.0)
        desc *= self.lut((vg > knob).astype(np.float32) * np.float32(0.35), box)
        self.med = np.zeros_like(self.v)
        self.med[box] = np.maximum(med, desc)

    # --- composition helpers -----------------------------------------------------------------

    def lung_air(self) -> np.ndarray:
        """Lung air thickness after heart/mediastinum displacement (before findings)."""
        return self.lung * (1.0 - self.heart) * (1.0 - self.med)

    def body(self) -> np.ndarray:
        """Soft-tissue thickness (0..1): torso, shoulders and neck; air outside the body."""
        a, v, vg = self.a, self.v, self.v_grid
        half = 0.5 + 1.1 * _smoothstep((vg - np.float32(self.geom.apex - 0.22)) * (1.0 / 0.3))
        half -= 0.22 * _smoothstep((vg - np.float32(self.geom.apex + 0.1)) * (1.0 / 0.3))
        rho = a * self.lut(1.0 / half)
        rho2 = rho * rho
        t = np.clip(1.0 - rho2 * rho2, 0.0, 1.0)
        t = np.sqrt(t) * np.float32(self.geom.soft)
        # Abdomen below the diaphragm is a little thicker than the chest.
        t *= 1.0 + np.float32(0.08) * np.clip((v - self.dome) * np.float32(8.0), 0.0, 1.0)
        return t

    def bones(self) -> np.ndarray:
        """Additive bone attenuation: spine, ribs, clavicles, humeral heads (computed once)."""
        if self._bones is None:
            self._bones = self._compute_bones()
        return self._bones

    def _compute_bones(self) -> np.ndarray:
        out = self._ribs()
        out += self._spine()
        out += self._clavicles()
        out += self._humeral_heads()
        return out

    def _humeral_heads(self) -> np.ndarray:
        g = self.geom
        out = np.zeros_like(self.v)
        radius = 0.13
        for side in (-1.0, 1.0):
            cx = side * 1.42 * g.w
            cy = g.clavicle_level + 0.03
            box = self.box(cx - radius, cx + radius, cy - radius, cy + radius)
            if box[0].start >= box[0].stop or box[1].start >= box[1].stop:
                continue
            dx = self.xi[box] - np.float32(cx)
            dy = self.v[box] - np.float32(cy)
            d2 = (dx * dx + dy * dy) * np.float32(1 / radius**2)
            sphere = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
            out[box] += (
                sphere * np.float32(0.6) + np.float32(0.5) * (sphere > 0) * d2
            ) * np.float32(0.3)
        return out

    def _rib_coordinate(self) -> tuple[np.ndarray, np.ndarray]:
        """Fractional posterior-rib index ``t`` (rib k spans [k, k + width)) and height above
        the first rib."""
        g = self.geom
        a, v = self.a, self.v
        k = np.float32(_RIB_CURV) + np.float32(_RIB_CURV_V) * v
        lat = np.maximum(a - np.float32(0.5), 0)
        c = np.float32(_RIB_SLOPE) * (a - np.float32(0.12)) + k * lat * lat
        vr = v - c - np.float32(g.rib_top)
        sp0, acc = np.float32(g.rib_spacing), np.float32(_RIB_ACC)
        t = (np.sqrt(np.maximum(sp0 * sp0 + 2.0 * acc * vr, 0.0)) - sp0) / acc
        return t, vr

    def _ribs(self) -> np.ndarray:
        g = self.geom
        a = self.a
        t, vr = self._rib_coordinate()
        width = np.float32(_RIB_WIDTH)
        out = self._rib_band(t, width)
        if g.rib_fracture is not None:
            out = self._fracture(out, t, width)
        env = np.clip((a - np.float32(0.07)) * np.float32(10.0), 0.0, 1.0)
        env *= np.clip((self.dlat + np.float32(0.06)) * np.float32(30.0), 0.0, 1.0)
        env *= (vr > 0) & (t < 12.0)
        amp = np.float32(0.17) + np.float32(0.08) * np.clip(a - np.float32(0.55), 0.0, 0.5)
        # Behind the heart and under the diaphragm the ribs are barely seen (scatter, overlap).
        amp = amp * (1.0 - np.float32(0.6) * self.heart)
        amp *= 1.0 - np.float32(0.5) * np.clip(-self.ddia * np.float32(10.0), 0.0, 1.0)
        out *= env * amp
        # Anterior ribs: fainter, sloping down towards the midline, ending at the cartilages.
        lat = np.clip(np.float32(1.05) - a, 0.0, None)
        va = self.v - np.float32(0.3) * lat - np.float32(g.clavicle_level + 0.02)
        ta = va * np.float32(1.0 / 0.17)
        frac = ta - np.floor(ta)
        band = np.clip(np.minimum(frac, 0.5 - frac) * np.float32(25.0), 0.0, 1.0)
        band *= (ta > 0) & (ta < 6.0)
        band *= np.clip((a - np.float32(0.42)) * np.float32(6.0), 0.0, 1.0)
        band *= np.clip((self.dlat + np.float32(0.08)) * np.float32(40.0), 0.0, 1.0)
        out += band * np.float32(0.08)
        return out

    @staticmethod
    def _rib_band(t: np.ndarray, width: np.float32) -> np.ndarray:
        frac = t - np.floor(t)
        idx = (frac * np.float32((_RIB_PROFILE_N - 1) / width)).astype(np.int32)
        inside = idx < _RIB_PROFILE_N
        np.minimum(idx, _RIB_PROFILE_N - 1, out=idx)
        return _RIB_LUT[idx] * inside

    def _fracture(self, out: np.ndarray, t: np.ndarray, width: np.float32) -> np.ndarray:
        side, rib, a_f, shift, gap = self.geom.rib_fracture  # type: ignore[misc]
        on_side = self.left if side > 0 else ~self.left
        frac_t = t - np.floor(t)
        # A slightly oblique fracture line across the rib.
        a_line = np.float32(a_f) + np.float32(0.05) * (frac_t - 0.5)
        this_rib = (np.floor(t) == rib) & (frac_t < width)
        remove = on_side & this_rib & (self.a > a_line - np.float32(gap / 2))
        out = np.where(remove, np.float32(0.0), out)
        t2 = t - np.float32(shift)
        frag = on_side & (np.floor(t2) == rib) & (self.a > a_line + np.float32(gap / 2))
        frag &= (t2 - np.floor(t2)) < width
        out = np.where(frag, self._rib_band(t2, width), out)
        # Where the sign is: both fragment ends and the gap between them.
        near = np.abs(self.a - a_line) < np.float32(0.07)
        self.fracture_region = (this_rib | frag) & near & on_side
        return out

    def _spine(self) -> np.ndarray:
        g = self.geom
        vg = self.v_grid
        box = self.box(-0.1, 0.1, -1.5, 1.5)
        hw = np.float32(0.066) + np.float32(0.012) * np.clip(vg + 1.0, 0.0, 2.0)
        q = self.xi[box] * self.lut(1.0 / hw, box)
        across = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
        tv = (vg - np.float32(g.rib_top - 0.05)) * np.float32(1.0 / (g.rib_spacing * 1.12))
        fv = tv - np.floor(tv)
        body_v = np.where(fv > 0.86, np.float32(0.72), np.float32(1.0))
        body_v += np.exp(-(((fv - np.float32(0.82)) / 0.04) ** 2)) * np.float32(0.25)
        # Pedicles: small cortical rings on each side of the vertebral body.
        pq = (np.abs(q) - np.float32(0.62)) * np.float32(1.0 / 0.2)
        pv = self.lut((fv - np.float32(0.38)) * np.float32(1.0 / 0.18), box)
        ring = np.exp(-(((pq * pq + pv * pv) - 1.0) ** 2) * np.float32(4.0)) * np.float32(0.35)
        spinous_v = np.exp(-(((fv - 0.62) / 0.12) ** 2)).astype(np.float32) * np.float32(0.25)
        spinous = np.exp(-((q * 5.0) ** 2)) * self.lut(spinous_v, box)
        part = across * self.lut(body_v, box) + ring + spinous
        out = np.zeros_like(self.v)
        out[box] = part * np.float32(0.085) * (across > 0)
        return out

    def _clavicles(self) -> np.ndarray:
        g = self.geom
        lim = 1.4 * g.w
        box = self.box(-lim, lim, g.clavicle_level - 0.3, g.clavicle_level + 0.08)
        a, v = self.a[box], self.v[box]
        # Medial (sternal) end beside the trachea, rising laterally with a gentle S-curve.
        ma = a - np.float32(0.17)
        centre = np.float32(g.clavicle_level) - np.float32(0.11) * ma
        centre -= np.float32(0.12) * np.maximum(ma - np.float32(0.72), 0)
        centre += np.float32(0.03) * np.sin(np.clip(ma, 0.0, 1.1) * np.float32(math.pi / 0.55))
        half = np.float32(0.033) + np.float32(0.012) * np.exp(-((ma / 0.1) ** 2))
        d = (v - centre) / half
        across = np.clip(1.0 - d * d, 0.0, 1.0)
        prof = np.sqrt(across) * np.float32(0.75) + np.float32(0.35) * across * d * d * 2.2
        extent = np.clip(ma * np.float32(40.0), 0.0, 1.0)
        extent *= np.clip((np.float32(1.32) - a) * np.float32(12.0), 0.0, 1.0)
        out = np.zeros_like(self.v)
        out[box] = prof * extent * np.float32(0.42)
        return out

    def airways(self) -> np.ndarray:
        """Air in the trachea and main bronchi (subtracted from the attenuation)."""
        g = self.geom
        layer = self.airway
        shift = g.heart_shift * 0.6
        pts = [(-0.012 + shift * 0.3, -1.1), (-0.016 + shift * 0.6, -0.6), (shift, _CARINA)]
        xy = np.array([g.to_image(x, y) for x, y in pts])
        draw_polyline(layer, xy, 0.038, 0.3, profile="flat")
        for end, mid in (((-0.15, -0.17), (-0.08, -0.26)), ((0.17, -0.22), (0.09, -0.29))):
            bpts = [(shift, _CARINA), (mid[0] + shift, mid[1]), (end[0] + shift, end[1])]
            xy = np.array([g.to_image(x, y) for x, y in bpts])
            draw_polyline(layer, xy, 0.026, 0.22, profile="flat")
        return layer

    def hila(self) -> np.ndarray:
        """Hilar vascular density plus the looked-up vessel trees (both 0..~1)."""
        g = self.geom
        bank = vessel_bank(self.size)
        idx = bank.lookup_index(self.u - np.float32(g.heart_shift / g.w), self.v)
        ves = np.maximum(
            bank.right[g.vessel_right].ravel().take(idx), bank.left[g.vessel_left].ravel().take(idx)
        ).reshape(self.size, self.size)
        for sx, sy, amp in ((-0.23, -0.1, 0.5), (0.21, -0.2, 0.65)):
            dx = (self.xi - np.float32(sx + g.heart_shift)) * np.float32(1 / 0.065)
            dy = (self.v - np.float32(sy)) * np.float32(1 / 0.11)
            ves += np.float32(amp) * np.exp(-(dx * dx + dy * dy))
        return ves

    def breasts(self) -> np.ndarray:
        """Breast shadows over the lower zones (zero when the case has none)."""
        g = self.geom
        if not g.breasts:
            return np.zeros_like(self.v)
        base = 0.5 * (g.dome_left + g.dome_right)
        p = (self.a - np.float32(0.78)) * np.float32(1 / 0.42)
        q = (self.v - np.float32(base - 0.14)) * np.float32(1 / 0.28)
        e = np.sqrt(np.clip(1.0 - p * p - q * q, 0.0, 1.0))
        fade = np.clip((self.v - np.float32(base - 0.3)) * np.float32(4.0), 0.0, 1.0)
        return e * fade * np.float32(0.14)

    def gastric_bubble(self) -> np.ndarray:
        """Air bubble in the gastric fundus, under the left hemidiaphragm."""
        g = self.geom
        out = np.zeros_like(self.v)
        if not g.bubble:
            return out
        top = g.dome_at(1, 0.55) + 0.05
        p = (self.xi - np.float32(0.55 * g.w)) * np.float32(1 / 0.09)
        q = (self.v - np.float32(top + 0.05)) * np.float32(1 / 0.055)
        e = np.clip(1.0 - p * p - q * q, 0.0, 1.0)
        e *= self.v < np.float32(top + 0.065)  # air-fluid level
        out += np.sqrt(e) * np.float32(0.3)
        return out
