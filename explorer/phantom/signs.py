"""Radiographic signs of the phantom findings.

Each finding has two hooks, both driven by the finding's own random generator (so adding or
removing one finding never changes how another one looks):

* ``adjust(spec, geom, rng)`` runs before the scene is built and may change the anatomy
  (a bigger heart, a wider mediastinum, volume loss, the broken rib);
* ``draw(spec, scene, rng)`` writes opacity / extra attenuation / metal into the
  :class:`~explorer.phantom.anatomy.Scene` and returns the boolean mask of the sign.

Laterality ``"right"`` is the patient's right (display left, ``scene.left`` False).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from explorer.phantom.anatomy import _CARINA, Geometry, Scene
from explorer.phantom.records import DEVICE_KINDS, FindingSpec
from explorer.phantom.textures import (
    N_VESSEL_TREES,
    draw_polyline,
    noise_bank,
    stamp_disc,
    vessel_bank,
)

_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def ordinal(n: int) -> str:
    """English ordinal of a positive integer (1st, 2nd, 3rd, 4th, ...)."""
    return _ORDINALS.get(n, f"{n}th")


@dataclass(frozen=True)
class Drawn:
    """What drawing a finding produced.

    Attributes:
        mask: Boolean mask of the sign.
        location: Short anatomical phrase or ``None``.
        details: Extra descriptors.
    """

    mask: np.ndarray
    location: str | None = None
    details: tuple[str, ...] = ()


def _sides(laterality: str | None) -> tuple[int, ...]:
    """+1 = patient left, -1 = patient right."""
    if laterality == "left":
        return (1,)
    if laterality == "right":
        return (-1,)
    return (-1, 1)


def _side_mask(scene: Scene, side: int) -> np.ndarray:
    return scene.left if side > 0 else ~scene.left


def _add_opacity(scene: Scene, op: np.ndarray) -> None:
    """Combine an opacity (fraction of lung air replaced) into the scene."""
    scene.opacity = 1.0 - (1.0 - scene.opacity) * (1.0 - op)


def _smooth_noise(scene: Scene, rng: np.random.Generator, which: int) -> np.ndarray:
    bank = noise_bank(scene.size)
    return bank.window(bank.smooth[which], rng, scene.size)


def _blob(scene: Scene, xi: float, v: float, rx: float, ry: float) -> np.ndarray:
    dx = (scene.xi - np.float32(xi)) * np.float32(1.0 / rx)
    dy = (scene.v - np.float32(v)) * np.float32(1.0 / ry)
    return np.exp(-(dx * dx + dy * dy))


def _curve(points: list[tuple[float, float]], n: int = 24) -> np.ndarray:
    """Smooth (Catmull-Rom) curve through canonical points, ``n`` samples per span."""
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(p[-2][None, :])
    return np.vstack(out)


def _to_image(geom: Geometry, pts: np.ndarray) -> np.ndarray:
    x, y = geom.to_image(pts[:, 0], pts[:, 1])
    return np.stack([x, y], axis=1)


# --- cardiomegaly ----------------------------------------------------------------------------


def _adjust_cardiomegaly(spec: FindingSpec, geom: Geometry, rng: np.random.Generator) -> None:
    lo, hi = {"mild": (0.54, 0.58), "moderate": (0.59, 0.64), "large": (0.65, 0.71)}[
        spec.severity or "moderate"
    ]
    geom.target_ctr = float(rng.uniform(lo, hi))
    geom.heart_left_frac = min(geom.heart_left_frac + 0.03, 0.76)
    geom.heart_height *= 1.05
    geom.heart_round = float(rng.uniform(1.9, 2.4))


def _draw_cardiomegaly(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    return Drawn(mask=scene.heart_mask.copy())


# --- enlarged cardiomediastinum --------------------------------------------------------------


def _adjust_ecm(spec: FindingSpec, geom: Geometry, rng: np.random.Generator) -> None:
    lo, hi = {"mild": (0.05, 0.07), "moderate": (0.08, 0.11), "large": (0.12, 0.16)}[
        spec.severity or "moderate"
    ]
    geom.med_extra = float(rng.uniform(lo, hi))
    geom.med_lobulation = float(rng.uniform(0.0, 0.25))


def _draw_ecm(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    v = scene.v
    mask = (scene.med > 0.5) & (v > -0.7) & (v < np.float32(_CARINA + 0.2)) & (scene.heart < 0.45)
    return Drawn(mask=mask, location="superior mediastinum")


# --- pleural effusion ------------------------------------------------------------------------


def _draw_effusion(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    mask = np.zeros_like(scene.left)
    for side in _sides(spec.laterality):
        sev = spec.severity or "moderate"
        peak = geom.dome_left if side > 0 else geom.dome_right
        cp = geom.dome_at(side, 1.0)
        # Fluid level medially and laterally (the meniscus rises towards the chest wall).
        if sev == "small":
            lat, med = cp - float(rng.uniform(0.08, 0.12)), cp
        elif sev == "moderate":
            lat, med = peak - float(rng.uniform(0.16, 0.24)), peak - float(rng.uniform(0.0, 0.04))
        else:
            lat, med = peak - float(rng.uniform(0.42, 0.55)), peak - float(rng.uniform(0.22, 0.3))
        rise = np.clip((scene.a - np.float32(0.2)) * np.float32(1 / 0.85), 0.0, 1.0)
        rise = rise * rise * rise
        top = np.float32(med) + np.float32(lat - med) * rise
        soft = np.float32(0.03 + 0.03 * (sev == "large"))
        fluid = np.clip((scene.v - top) / soft, 0.0, 1.0)
        fluid *= _side_mask(scene, side) & (scene.dlat > -0.02)
        _add_opacity(scene, fluid * np.float32(0.95))
        scene.vessel_gate *= 1.0 - fluid
        # Fluid also adds a little density where the lung was thin (lateral periphery).
        scene.extra += fluid * np.float32(0.04)
        mask |= (fluid > 0.5) & (scene.dlat > 0) & (scene.ddia > 0)
    return Drawn(mask=mask, location="base")


# --- pneumothorax -----------------------------------------------------------------------------


def _draw_pneumothorax(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    side = _sides(spec.laterality)[0]
    sev = spec.severity or "moderate"
    depth = {"small": (0.05, 0.08), "moderate": (0.09, 0.14), "large": (0.16, 0.24)}[sev]
    d_top = float(rng.uniform(*depth))
    v_end = {
        "small": geom.apex + float(rng.uniform(0.3, 0.45)),
        "moderate": float(rng.uniform(-0.05, 0.12)),
        "large": geom.dome_at(side, 1.0) + 0.02,
    }[sev]
    span = max(v_end - geom.apex, 0.1)
    taper = np.clip((np.float32(v_end) - scene.v) * np.float32(1.0 / span), 0.0, 1.0)
    gap = np.float32(d_top) * np.sqrt(taper)
    dist = scene.dlat * np.float32(geom.w)  # image units inside the chest wall
    on_side = _side_mask(scene, side) & (scene.ddia > 0)
    px = np.float32(scene.pixel)
    space = np.clip((gap - dist) / px + 0.5, 0.0, 1.0) * on_side * (dist > -px)
    # Lateral and apical only: medially the air reaches no lower than the apical cap.
    lateral = np.clip((scene.a - np.float32(0.32)) * np.float32(1 / 0.08), 0.0, 1.0)
    cap = np.clip((np.float32(geom.apex + 0.2) - scene.v) * np.float32(1 / 0.05), 0.0, 1.0)
    space *= np.maximum(lateral, cap)
    # The pleural space is pure air: darker than lung and without any markings.
    scene.air_extra += space * np.float32(0.4) * (scene.lung + np.float32(0.5))
    scene.vessel_gate *= 1.0 - space
    # Thin white visceral pleural line along the retracted lung edge.
    # At least a pixel wide so that it survives a 160 px image.
    lw = np.float32(max(0.0055, 0.6 * scene.pixel))
    line = np.exp(-(((dist - gap) / lw) ** 2)) * (gap > 2 * px) * on_side
    line *= np.maximum(lateral, cap)
    scene.extra += line * np.float32(0.22)
    # The collapsed lung is a little denser.
    collapse = {"small": 0.0, "moderate": 0.08, "large": 0.22}[sev]
    if collapse:
        _add_opacity(scene, (1.0 - space) * on_side * np.float32(collapse))
    mask = (space > 0.5) & (scene.dlat > 0)
    return Drawn(mask=mask, location="apical" if sev == "small" else "apicolateral")


# --- consolidation ----------------------------------------------------------------------------

_FISSURE = -0.06  # horizontal fissure level on the right


def _lobe_centre(
    geom: Geometry, side: int, lobe: str, rng: np.random.Generator
) -> tuple[float, float]:
    """A random (a, v) inside a lobe's territory."""
    if lobe == "upper":
        return float(rng.uniform(0.4, 0.75)), float(rng.uniform(geom.apex + 0.2, _FISSURE - 0.1))
    if lobe == "middle":
        return float(rng.uniform(0.3, 0.5)), float(rng.uniform(_FISSURE + 0.1, _FISSURE + 0.2))
    a = float(rng.uniform(0.45, 0.8))
    return a, geom.dome_at(side, a) - float(rng.uniform(0.1, 0.18))


def _lobe_region(scene: Scene, side: int, lobe: str, noise: np.ndarray) -> np.ndarray:
    """Soft territory of a lobe (0..1) on one side (``noise`` roughens unbounded margins)."""
    geom = scene.geom
    v, a = scene.v, scene.a
    on = _side_mask(scene, side) & (scene.dlat > 0)
    if lobe == "upper":
        if side < 0:  # sharp inferior border along the horizontal fissure
            reg = np.clip((np.float32(_FISSURE) - v) * np.float32(150.0), 0.0, 1.0)
        else:
            reg = np.clip((np.float32(0.02) - v) * np.float32(8.0), 0.0, 1.0)
    elif lobe == "middle":
        reg = np.clip((v - np.float32(_FISSURE)) * np.float32(150.0), 0.0, 1.0)
        reg *= np.clip((np.float32(0.62) - a) * np.float32(8.0), 0.0, 1.0)
        reg *= np.clip((scene.ddia - np.float32(0.04)) * np.float32(10.0), 0.0, 1.0)
    else:
        # No fissure seen en face: an ill-defined upper margin.
        dome = np.float32(geom.dome_left if side > 0 else geom.dome_right)
        top = dome - np.float32(0.32) + np.float32(0.05) * noise
        reg = np.clip((v - top) * np.float32(5.0), 0.0, 1.0)
        reg *= np.clip((a - np.float32(0.2)) * np.float32(6.0), 0.0, 1.0)
    return reg * on * np.clip(scene.ddia * np.float32(40.0), 0.0, 1.0)


def _draw_consolidation(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    sev = spec.severity or "moderate"
    mask = np.zeros_like(scene.left)
    sides = _sides(spec.laterality)
    lobes = []
    bronchograms = (
        sev == "large" and rng.random() < 0.75 or sev == "moderate" and rng.random() < 0.3
    )
    for k, side in enumerate(sides):
        if len(sides) == 2:
            lobe = "lower"
        elif side < 0:
            lobe = str(rng.choice(["upper", "middle", "lower"], p=[0.3, 0.25, 0.45]))
        else:
            lobe = str(rng.choice(["upper", "lower"], p=[0.4, 0.6]))
        lobes.append(lobe)
        noise = _smooth_noise(scene, rng, k % 2)
        region = _lobe_region(scene, side, lobe, noise)
        if sev == "large":
            op = region * np.clip(np.float32(0.9) + np.float32(0.1) * noise, 0.0, 1.0)
        else:
            # Overlapping fuzzy blobs around one or two centres, their density and margins
            # roughened by noise: ill-defined rather than round.
            n_centres = 1 if sev == "mild" else 2
            sub = (0.05, 0.08) if sev == "mild" else (0.07, 0.11)
            field = np.zeros_like(scene.v)
            for _ in range(n_centres):
                a_c, v_c = _lobe_centre(geom, side, lobe, rng)
                for _ in range(3):
                    xi = side * a_c * geom.w + float(rng.normal(0.0, 0.035))
                    vv = v_c + float(rng.normal(0.0, 0.03))
                    r = float(rng.uniform(*sub))
                    field = np.maximum(field, _blob(scene, xi, vv, r * 1.15, r))
            rough = field * (np.float32(1.0) + np.float32(0.35) * noise)
            patch = np.clip(rough * np.float32(1.4) - np.float32(0.3), 0.0, 1.0)
            if not (patch > 0.5).any():  # extreme noise: fall back to the smooth blobs
                patch = np.clip(field * np.float32(1.4) - np.float32(0.3), 0.0, 1.0)
            op = patch * np.clip(region * np.float32(1.5), 0.0, 1.0)
            op *= np.float32(0.75 if sev == "mild" else 0.88)
        if bronchograms:
            bank = vessel_bank(scene.size)
            tree = (
                bank.right[(geom.vessel_right + 1) % N_VESSEL_TREES]
                if side < 0
                else bank.left[(geom.vessel_left + 1) % N_VESSEL_TREES]
            )
            idx = bank.lookup_index(scene.u, scene.v)
            lumen = tree.ravel().take(idx).reshape(scene.v.shape)
            lumen = np.clip(lumen * np.float32(2.0), 0.0, 1.0) * np.clip((op - 0.5) * 4.0, 0.0, 1.0)
            scene.vessel_gate *= 1.0 - op
            op = op * (1.0 - np.float32(0.25) * lumen)
        else:
            scene.vessel_gate *= 1.0 - op
        _add_opacity(scene, op)
        scene.extra += op * np.float32(0.03)
        mask |= (op > 0.3) & (scene.ddia > 0)
    details = ("air bronchograms",) if bronchograms else ()
    return Drawn(mask=mask, location="lower" if len(set(lobes)) > 1 else lobes[0], details=details)


# --- atelectasis ------------------------------------------------------------------------------


def _adjust_atelectasis(spec: FindingSpec, geom: Geometry, rng: np.random.Generator) -> None:
    sev = spec.severity or "mild"
    if sev == "mild":
        return
    lift = float(rng.uniform(0.02, 0.035) if sev == "moderate" else rng.uniform(0.05, 0.08))
    for side in _sides(spec.laterality):
        if side > 0:
            geom.dome_left -= lift
        else:
            geom.dome_right -= lift
    if sev == "large" and spec.laterality in ("left", "right"):
        geom.heart_shift += (0.025 if spec.laterality == "left" else -0.025) * float(
            rng.uniform(0.8, 1.4)
        )


def _draw_atelectasis(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    sev = spec.severity or "mild"
    layer = np.zeros_like(scene.v)
    location, details = "basal", ()
    for k, side in enumerate(_sides(spec.laterality)):
        if sev == "mild":
            details = ("plate-like",)
            for _ in range(int(rng.integers(1, 3))):
                a_c = float(rng.uniform(0.45, 0.8))
                v_c = geom.dome_at(side, a_c) - float(rng.uniform(0.07, 0.16))
                half = float(rng.uniform(0.08, 0.13))
                ang = math.radians(float(rng.uniform(-12, 12)))
                xi_c = side * a_c * geom.w
                pts = _curve(
                    [
                        (xi_c - half * math.cos(ang), v_c - half * math.sin(ang)),
                        (xi_c, v_c + float(rng.uniform(-0.015, 0.015))),
                        (xi_c + half * math.cos(ang), v_c + half * math.sin(ang)),
                    ],
                    6,
                )
                draw_polyline(layer, _to_image(geom, pts), float(rng.uniform(0.013, 0.019)), 0.6)
        elif sev == "moderate":
            details = ("volume loss",)
            dome = np.float32(geom.dome_left if side > 0 else geom.dome_right)
            noise = _smooth_noise(scene, rng, 2 - k)
            band = np.clip((scene.v - (dome - np.float32(0.13))) * np.float32(12.0), 0.0, 1.0)
            band *= np.clip((scene.a - np.float32(0.15)) * np.float32(6), 0, 1)
            band *= np.clip((np.float32(0.8) - scene.a) * np.float32(6), 0, 1)
            streak = np.clip(np.float32(0.7) + np.float32(0.3) * noise, 0.0, 1.0)
            layer = np.maximum(layer, band * streak * _side_mask(scene, side) * np.float32(0.7))
            # Thick streaks converging towards the hilum (segmental collapse).
            for _ in range(2):
                a_c = float(rng.uniform(0.4, 0.75))
                v_c = geom.dome_at(side, a_c) - float(rng.uniform(0.03, 0.08))
                ang = math.radians(float(rng.uniform(15, 35)))
                half = float(rng.uniform(0.06, 0.1))
                xi_c = side * a_c * geom.w
                pts = np.array(
                    [
                        (xi_c - side * half * math.cos(ang), v_c - half * math.sin(ang)),
                        (xi_c + side * half * math.cos(ang), v_c + half * math.sin(ang)),
                    ]
                )
                draw_polyline(layer, _to_image(geom, pts), float(rng.uniform(0.018, 0.026)), 0.75)
        else:
            details = ("volume loss",)
            if side > 0 or rng.random() < 0.5:
                location = "lower"
                # Collapsed lower lobe: triangle behind the heart, lateral edge from hilum to dome.
                dome = geom.dome_at(side, 0.45)
                t = np.clip((scene.v - np.float32(-0.1)) * np.float32(1.0 / (dome + 0.1)), 0, 1)
                edge = np.float32(0.1) + t * np.float32(0.33)
                tri = np.clip((edge - scene.a) * np.float32(40.0), 0.0, 1.0)
                tri *= (scene.v > -0.1) & _side_mask(scene, side)
                tri *= np.clip(scene.ddia * np.float32(40.0), 0.0, 1.0)
                layer = np.maximum(layer, tri * np.float32(0.9))
                scene.extra += tri * np.float32(0.08)
            else:
                location = "upper"
                # Collapsed upper lobe: dense apex bounded below by the elevated fissure.
                fis = np.float32(-0.12) - (scene.a - np.float32(0.2)) * np.float32(0.45)
                tri = np.clip((fis - scene.v) * np.float32(40.0), 0.0, 1.0)
                tri *= _side_mask(scene, side) & (scene.a > 0.1)
                layer = np.maximum(layer, tri * np.float32(0.88))
    layer *= scene.dlat > -0.01
    _add_opacity(scene, layer)
    scene.extra += layer * np.float32(0.02)
    mask = (layer > 0.3) & (scene.ddia > 0) & (scene.dlat > 0)
    return Drawn(mask=mask, location=location, details=details)


# --- pulmonary edema --------------------------------------------------------------------------


def _draw_edema(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    sev = spec.severity or "moderate"
    strength, reach = {"mild": (0.45, 0.22), "moderate": (0.65, 0.27), "large": (0.88, 0.33)}[sev]
    noise = _smooth_noise(scene, rng, 0)
    haze = np.zeros_like(scene.v)
    for side in (-1, 1):
        hx = side * 0.26 * geom.w / 0.8 + geom.heart_shift
        blob = _blob(scene, hx, -0.06, reach * 1.15, reach * 1.5)
        haze = np.maximum(haze, blob * _side_mask(scene, side))
    spare = np.clip(scene.dlat * np.float32(geom.w / 0.1), 0.0, 1.0)  # spare the periphery
    op = haze * spare * np.clip(np.float32(0.8) + np.float32(0.25) * noise, 0.0, 1.0)
    op *= np.float32(strength)
    _add_opacity(scene, op)
    scene.vessel_gate *= 1.0 - np.float32(0.6) * op
    mask = (op > 0.5 * strength) & scene.in_lung
    details: tuple[str, ...] = ()
    if sev != "large" and rng.random() < 0.75:
        details = ("Kerley lines",)
        lines = np.zeros_like(scene.v)
        for side in (-1, 1):
            for _ in range(int(rng.integers(4, 8))):
                v_c = geom.dome_at(side, 0.95) - float(rng.uniform(0.05, 0.26))
                a_wall = geom.lateral_wall(v_c)
                length = float(rng.uniform(0.03, 0.06))
                x0 = side * (a_wall * geom.w - 0.004)
                pts = np.array(
                    [(x0, v_c), (x0 - side * length, v_c + float(rng.uniform(-0.006, 0.006)))]
                )
                draw_polyline(lines, _to_image(geom, pts), 0.005, 1.0)
        lines *= scene.in_lung
        scene.extra += lines * np.float32(0.14)
        mask |= lines > 0.3
    return Drawn(mask=mask, location="perihilar", details=details)


# --- nodule / mass ----------------------------------------------------------------------------


def _draw_nodule(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    side = _sides(spec.laterality)[0]
    large = spec.severity == "large"
    # 1 cm is about 0.055 image units: nodules 1.3-2.0 cm, masses 3.2-4.8 cm across.
    radius = float(rng.uniform(0.088, 0.13) if large else rng.uniform(0.036, 0.055))
    zone = str(rng.choice(["upper", "mid", "lower"], p=[0.45, 0.35, 0.2]))
    lob_amp = float(rng.uniform(0.04, 0.1)) if large else 0.0
    lob_phase = float(rng.uniform(0, 2 * math.pi))
    a_c = v_c = 0.0
    for _attempt in range(30):
        a_c = float(rng.uniform(0.35, 0.85))
        v_lo, v_hi = {
            "upper": (geom.apex + 0.12, -0.25),
            "mid": (-0.25, 0.02),
            "lower": (0.02, geom.dome_at(side, a_c) - 0.05),
        }[zone]
        v_c = float(rng.uniform(v_lo, max(v_hi, v_lo + 0.01)))
        x, y = geom.to_image(side * a_c * geom.w, v_c)
        col = int(np.clip((x + 1) * scene.size / 2, 0, scene.size - 1))
        row = int(np.clip((y + 1) * scene.size / 2, 0, scene.size - 1))
        wall = scene.dlat[row, col] * geom.w
        if (
            wall > radius + 0.03
            and scene.ddia[row, col] > radius + 0.04
            and scene.heart[row, col] < 0.1
            and scene.med[row, col] < 0.1
        ):
            break
    else:  # fall back to a safe mid-lung position
        zone, a_c, v_c = "mid", 0.6, -0.2
    xi_c = side * a_c * geom.w
    rel_x = scene.xi - np.float32(xi_c)
    rel_y = scene.v - np.float32(v_c)
    r = np.hypot(rel_x, rel_y)
    if lob_amp:
        theta = np.arctan2(rel_y, rel_x)
        rad = np.float32(radius) * (1.0 + np.float32(lob_amp) * np.cos(3 * theta + lob_phase))
    else:
        rad = np.float32(radius)
    q = np.clip(1.0 - (r / rad) ** 2, 0.0, 1.0)
    sphere = np.sqrt(q)
    edge = np.clip((rad - r) / np.float32(scene.pixel) + 0.5, 0.0, 1.0)
    scene.extra += np.maximum(sphere, edge * 0.35) * np.float32(0.06 + 0.9 * radius)
    _add_opacity(scene, sphere * np.float32(0.45 if large else 0.42))
    mask = r < rad
    return Drawn(mask=mask, location=zone)


# --- rib fracture -----------------------------------------------------------------------------

#: Share of rib fractures drawn with an adjacent extrapleural haematoma.
HEMATOMA_FRACTION = 0.8


def _adjust_fracture(spec: FindingSpec, geom: Geometry, rng: np.random.Generator) -> None:
    side = _sides(spec.laterality)[0]
    rib = int(rng.integers(3, 9))  # 0-based index: 4th to 9th rib
    a_f = float(rng.uniform(0.58, 0.85))
    shift = float(rng.uniform(0.35, 0.5)) * (1 if rng.random() < 0.5 else -1)
    gap = float(rng.uniform(0.05, 0.075))
    geom.rib_fracture = (side, rib, a_f, shift, gap)


def _draw_fracture(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    side, rib, _a_f, _shift, _gap = geom.rib_fracture  # type: ignore[misc]
    if scene.fracture_region is None:  # bones() computes it; make sure it has run
        scene.bones()
    region = scene.fracture_region
    mask = ndimage.binary_dilation(region, iterations=max(1, scene.size // 160))
    details: tuple[str, ...] = ("lateral",)
    if region.any() and rng.random() < HEMATOMA_FRACTION:
        # Extrapleural haematoma: a lens of soft tissue along the chest wall at the fracture,
        # widest at the break and tapering above and below it (the lung edge is pushed in).
        v_c = float(scene.v[region].mean())
        half = float(rng.uniform(0.12, 0.18))
        depth = float(rng.uniform(0.065, 0.095))
        along = np.clip(1.0 - ((scene.v - np.float32(v_c)) / np.float32(half)) ** 2, 0.0, 1.0)
        thick = np.float32(depth) * np.sqrt(along)
        wall = scene.dlat * np.float32(scene.geom.w)
        lens = np.clip((thick - wall) / np.float32(2 * scene.pixel), 0.0, 1.0)
        lens *= (
            _side_mask(scene, side)
            & (along > 0)
            & (scene.a > 0.6)
            & (wall > -0.01)
            & (scene.ddia > 0)
        )
        _add_opacity(scene, lens)
        scene.extra += lens * np.float32(0.3)
        mask |= lens > 0.5
        details += ("extrapleural haematoma",)
    return Drawn(mask=mask, location=f"{ordinal(rib + 1)} rib", details=details)


# --- support devices --------------------------------------------------------------------------


def _pick_devices(rng: np.random.Generator) -> tuple[str, ...]:
    picked = []
    if rng.random() < 0.5:
        picked.append("endotracheal tube")
    u = rng.random()
    if u < 0.35:
        picked.append("right internal jugular line")
    elif u < 0.5:
        picked.append("left subclavian line")
    if rng.random() < 0.3:
        picked.append("pacemaker")
    if rng.random() < 0.35:
        picked.append("nasogastric tube")
    if not picked:
        picked.append(
            str(rng.choice(["endotracheal tube", "pacemaker", "right internal jugular line"]))
        )
    return tuple(k for k in DEVICE_KINDS if k in picked)


def _draw_devices(spec: FindingSpec, scene: Scene, rng: np.random.Generator) -> Drawn:
    geom = scene.geom
    sampled = _pick_devices(rng)
    kinds = spec.details or sampled
    metal = np.zeros_like(scene.v)
    shift = geom.heart_shift * 0.6
    clav = geom.clavicle_level
    for kind in kinds:
        if kind == "endotracheal tube":
            tip = _CARINA - float(rng.uniform(0.17, 0.3))
            pts = _curve([(-0.02 + shift, -1.15), (-0.01 + shift, -0.75), (shift, tip)], 8)
            img = _to_image(geom, pts)
            draw_polyline(metal, img, 0.028, 0.22, profile="wall")
            stripe = img.copy()
            stripe[:, 0] -= 0.02
            draw_polyline(metal, stripe, 0.0055, 1.3)
        elif kind == "right internal jugular line":
            tip = float(rng.uniform(-0.22, -0.08))
            pts = _curve([(-0.22, -1.15), (-0.15, -0.75), (-0.1, -0.5), (-0.085, tip)], 8)
            draw_polyline(metal, _to_image(geom, pts), 0.0065, 1.1)
        elif kind == "left subclavian line":
            tip = float(rng.uniform(-0.22, -0.08))
            start = (0.95 * geom.w, clav + 0.02)
            pts = _curve(
                [start, (0.5 * geom.w, clav + 0.07), (0.05, -0.52), (-0.08, -0.4), (-0.085, tip)], 8
            )
            draw_polyline(metal, _to_image(geom, pts), 0.0065, 1.1)
        elif kind == "pacemaker":
            gx, gy = 0.62 * geom.w, clav + 0.14
            ang = math.radians(float(rng.uniform(-20, 20)))
            c, s = math.cos(ang), math.sin(ang)
            half_w, half_h = 0.07, 0.048
            box = np.array([(-half_w, 0.0), (half_w, 0.0)])
            rot = np.stack([gx + box[:, 0] * c, gy + box[:, 0] * s], axis=1)
            draw_polyline(metal, _to_image(geom, rot), half_h, 2.5, profile="flat")
            apex_v = geom.dome_left - 0.1
            ra = _curve(
                [
                    (gx - 0.05, gy - 0.03),
                    (0.25, clav + 0.01),
                    (0.0, -0.5),
                    (-0.09, -0.3),
                    (-0.1, -0.05),
                    (-0.06, -0.02),
                ],
                8,
            )
            rv = _curve(
                [
                    (gx - 0.05, gy - 0.02),
                    (0.24, clav + 0.02),
                    (0.0, -0.49),
                    (-0.08, -0.3),
                    (-0.06, 0.02),
                    (0.1, apex_v - 0.04),
                    (0.22, apex_v),
                ],
                8,
            )
            draw_polyline(metal, _to_image(geom, ra), 0.006, 1.3)
            draw_polyline(metal, _to_image(geom, rv), 0.006, 1.3)
            tipxy = _to_image(geom, np.array([(0.22, apex_v)]))[0]
            stamp_disc(metal, float(tipxy[0]), float(tipxy[1]), 0.012, 1.5)
        elif kind == "nasogastric tube":
            stomach_v = geom.dome_left + 0.2
            pts = _curve(
                [
                    (0.0, -1.15),
                    (0.02, -0.6),
                    (0.04, 0.0),
                    (0.1, geom.dome_left + 0.04),
                    (0.3, stomach_v),
                    (0.42, stomach_v - 0.03),
                ],
                8,
            )
            draw_polyline(metal, _to_image(geom, pts), 0.011, 0.7, profile="wall")
    scene.metal = np.maximum(scene.metal, metal)
    return Drawn(mask=metal > 0.15, details=tuple(kinds))


@dataclass(frozen=True)
class SignHooks:
    """The two rendering hooks of a finding."""

    adjust: Callable[[FindingSpec, Geometry, np.random.Generator], None] | None
    draw: Callable[[FindingSpec, Scene, np.random.Generator], Drawn]


#: Rendering hooks per canonical finding name.
SIGNS: dict[str, SignHooks] = {
    "cardiomegaly": SignHooks(_adjust_cardiomegaly, _draw_cardiomegaly),
    "pleural effusion": SignHooks(None, _draw_effusion),
    "pneumothorax": SignHooks(None, _draw_pneumothorax),
    "consolidation": SignHooks(None, _draw_consolidation),
    "atelectasis": SignHooks(_adjust_atelectasis, _draw_atelectasis),
    "pulmonary edema": SignHooks(None, _draw_edema),
    "nodule/mass": SignHooks(None, _draw_nodule),
    "enlarged cardiomediastinum": SignHooks(_adjust_ecm, _draw_ecm),
    "rib fracture": SignHooks(_adjust_fracture, _draw_fracture),
    "support devices": SignHooks(None, _draw_devices),
}
