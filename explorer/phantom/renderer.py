"""Render seeded phantom chest radiographs with ground-truth findings and masks.

``render_phantom(seed)`` samples a case (anatomy, acquisition, findings) and renders a
grayscale PA-style radiograph (float32, [0, 1], bone and other dense structures bright).
``render_phantom(seed, findings=[...])`` forces the findings instead; the anatomy, exposure
and noise of a seed do not depend on its findings, so ``render_phantom(seed, findings=[])``
is the *normal twin* of any case rendered from the same seed.

Random streams (all derived from ``seed`` through :class:`numpy.random.SeedSequence`
entropy lists): ``[seed, 0]`` anatomy and acquisition, ``[seed, 1]`` which findings are
present, ``[seed, 2]`` noise windows, ``[seed, 3]`` structural details of the anatomy,
``[seed, 10 + i]`` the i-th finding of
:data:`PHANTOM_FINDINGS` (laterality, severity and geometry).

Run ``python -m explorer.phantom`` for a timing table (:func:`render_timing`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np
from scipy import ndimage

from explorer.phantom.anatomy import Geometry, Scene, sample_params
from explorer.phantom.records import (
    LATERALITIES,
    PATHOLOGY_FINDINGS,
    PHANTOM_FINDINGS,
    SEVERITIES,
    FindingInstance,
    FindingSpec,
    Phantom,
    PhantomParams,
)
from explorer.phantom.signs import SIGNS
from explorer.phantom.textures import noise_bank

logger = logging.getLogger(__name__)

#: Probability that a sampled case has no pathology at all.
NORMAL_FRACTION = 0.25

#: Per-finding probability used when sampling an abnormal case (before the at-least-one rule).
PREVALENCE: Mapping[str, float] = {
    "cardiomegaly": 0.22,
    "pleural effusion": 0.24,
    "pneumothorax": 0.17,
    "consolidation": 0.24,
    "atelectasis": 0.22,
    "pulmonary edema": 0.16,
    "nodule/mass": 0.2,
    "enlarged cardiomediastinum": 0.16,
    "rib fracture": 0.17,
    "support devices": 0.22,
}

#: Sampling weights of laterality and severity per finding (same order as the vocabularies).
_LAT_WEIGHTS: Mapping[str, tuple[float, ...]] = {
    "pleural effusion": (0.36, 0.36, 0.28),
    "pneumothorax": (0.5, 0.5),
    "consolidation": (0.4, 0.45, 0.15),
    "atelectasis": (0.36, 0.36, 0.28),
    "nodule/mass": (0.5, 0.5),
    "rib fracture": (0.5, 0.5),
}
_SEV_WEIGHTS: Mapping[str, tuple[float, ...]] = {
    "cardiomegaly": (0.45, 0.35, 0.2),
    "pleural effusion": (0.42, 0.36, 0.22),
    "pneumothorax": (0.45, 0.33, 0.22),
    "consolidation": (0.35, 0.4, 0.25),
    "atelectasis": (0.5, 0.3, 0.2),
    "pulmonary edema": (0.4, 0.4, 0.2),
    "nodule/mass": (0.62, 0.38),
    "enlarged cardiomediastinum": (0.45, 0.35, 0.2),
}

# Attenuation weights of the layers and the display curve.
_SOFT = np.float32(0.62)
_AIR = np.float32(0.55)
_VESSEL = np.float32(0.18)
_PARENCHYMA = np.float32(0.02)
# Film curve: a logistic in attenuation (toe, linear part, shoulder), 0 for no attenuation.
_FILM_SLOPE = 3.7
_FILM_MID = 0.34
_FILM_LOW = 1.0 / (1.0 + math.exp(_FILM_SLOPE * _FILM_MID))
_MIN_SIZE = 64


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def sample_findings(seed: int) -> tuple[FindingSpec, ...]:
    """The findings a seed's sampled case has (laterality/severity left to the renderer).

    About :data:`NORMAL_FRACTION` of cases have no pathology; otherwise each pathology is
    drawn with its :data:`PREVALENCE` until at least one is present. Pulmonary edema pulls in
    cardiomegaly (50 %) and bilateral effusions (35 %). Support devices are drawn
    independently of pathology.

    Args:
        seed: Non-negative case seed.

    Returns:
        Specs in :data:`PHANTOM_FINDINGS` order.
    """
    rng = _rng(seed, 1)
    specs: dict[str, FindingSpec] = {}
    if rng.random() >= NORMAL_FRACTION:
        while not specs:
            for name in PATHOLOGY_FINDINGS:
                if rng.random() < PREVALENCE[name]:
                    specs[name] = FindingSpec(name)
        if "pulmonary edema" in specs:
            if rng.random() < 0.5:
                specs.setdefault("cardiomegaly", FindingSpec("cardiomegaly"))
            if rng.random() < 0.35:
                specs["pleural effusion"] = FindingSpec("pleural effusion", "bilateral", "small")
    if rng.random() < PREVALENCE["support devices"]:
        specs["support devices"] = FindingSpec("support devices")
    return tuple(specs[n] for n in PHANTOM_FINDINGS if n in specs)


def _resolve(spec: FindingSpec, rng: np.random.Generator) -> FindingSpec:
    """Fill in laterality and severity (always consuming the same random draws)."""
    lats = LATERALITIES[spec.name]
    sevs = SEVERITIES[spec.name]
    lat_w = _LAT_WEIGHTS.get(spec.name)
    sev_w = _SEV_WEIGHTS.get(spec.name)
    lat = lats[int(rng.choice(len(lats), p=lat_w))] if lat_w else lats[0]
    sev = sevs[int(rng.choice(len(sevs), p=sev_w))] if sev_w else sevs[0]
    return replace(
        spec,
        laterality=spec.laterality if spec.laterality is not None else lat,
        severity=spec.severity if spec.severity is not None else sev,
    )


def _normalise_specs(findings: Iterable[FindingSpec | str]) -> list[FindingSpec]:
    specs = [FindingSpec(f) if isinstance(f, str) else f for f in findings]
    for s in specs:
        if not isinstance(s, FindingSpec):
            raise TypeError(f"Expected FindingSpec or finding name, got {type(s).__name__}.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Each finding may appear only once; got {names}.")
    return sorted(specs, key=lambda s: PHANTOM_FINDINGS.index(s.name))


def render_phantom(
    seed: int,
    findings: Iterable[FindingSpec | str] | None = None,
    size: int = 224,
) -> Phantom:
    """Render one phantom chest radiograph.

    Args:
        seed: Non-negative integer; the same seed (and findings, size) gives identical bytes.
        findings: ``None`` to sample the case's findings from the seed, or the findings to
            show (specs or bare names; unset laterality/severity are sampled). An empty
            collection renders the seed's normal twin.
        size: Image side in pixels (at least 64; 224, 256 and 320 are typical).

    Returns:
        The rendered :class:`Phantom` with masks of every present finding.

    Raises:
        ValueError: On a negative seed, a too-small size, unknown or repeated findings.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    size = int(size)
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} pixels, got {size}.")
    specs = list(sample_findings(seed)) if findings is None else _normalise_specs(findings)

    params = sample_params(_rng(seed, 0))
    geom = Geometry.from_params(params, _rng(seed, 3))
    plans = []
    for spec in specs:
        rng = _rng(seed, 10 + PHANTOM_FINDINGS.index(spec.name))
        resolved = _resolve(spec, rng)
        hooks = SIGNS[spec.name]
        if hooks.adjust is not None:
            hooks.adjust(resolved, geom, rng)
        plans.append((resolved, rng))

    scene = Scene(geom, size)
    instances = []
    for resolved, rng in plans:
        drawn = SIGNS[resolved.name].draw(resolved, scene, rng)
        mask = np.ascontiguousarray(drawn.mask, dtype=bool)
        if not mask.any():
            logger.warning("seed %d: %s produced an empty mask", seed, resolved.name)
        mask.setflags(write=False)
        instances.append(
            FindingInstance(
                name=resolved.name,
                laterality=resolved.laterality,
                severity=resolved.severity,
                mask=mask,
                location=drawn.location,
                details=drawn.details,
            )
        )

    image = _compose(scene, params, _rng(seed, 2))
    image.setflags(write=False)
    heart_mask = scene.heart_mask.copy()
    heart_mask.setflags(write=False)
    params = replace(
        params,
        diaphragm_right=geom.dome_right,
        diaphragm_left=geom.dome_left,
        target_ctr=geom.target_ctr,
        cardiothoracic_ratio=round(scene.heart_px / scene.thoracic_px, 4),
        thoracic_width_px=round(scene.thoracic_px, 2),
        heart_width_px=scene.heart_px,
    )
    return Phantom(
        image=image, findings=tuple(instances), seed=seed, params=params, heart_mask=heart_mask
    )


def _compose(scene: Scene, params: PhantomParams, rng: np.random.Generator) -> np.ndarray:
    """Sum the attenuation layers and map them to display brightness with noise and blur."""
    size = scene.size
    air = scene.lung_air()
    air *= 1.0 - scene.opacity
    air += scene.air_extra
    visible = np.clip(air * np.float32(1 / 0.45), 0.0, 1.0) * scene.vessel_gate
    bank = noise_bank(size)
    atten = scene.body() * _SOFT
    atten -= air * _AIR
    atten += scene.bones()
    atten += scene.hila() * visible * _VESSEL
    atten += bank.window(bank.fine, rng, size) * air * scene.vessel_gate * _PARENCHYMA
    atten += scene.breasts()
    atten -= scene.gastric_bubble()
    atten -= scene.airways()
    atten += scene.extra
    atten += scene.metal
    img = np.exp((np.float32(_FILM_MID) - atten) * np.float32(_FILM_SLOPE))
    img += np.float32(1.0)
    np.reciprocal(img, out=img)
    img -= np.float32(_FILM_LOW)
    img *= np.float32(1.0 / (1.0 - _FILM_LOW))
    np.clip(img, 0.0, 1.0, out=img)
    img **= np.float32(params.gamma)
    img = (img - np.float32(0.5)) * np.float32(params.contrast) + np.float32(
        0.5 + params.brightness
    )
    noise = bank.window(bank.white, rng, size)
    img += noise * (np.float32(0.5) + np.float32(0.8) * img) * np.float32(params.noise_sigma)
    img = ndimage.gaussian_filter(img, params.blur_sigma * size / 224.0, truncate=3.0)
    np.clip(img, 0.0, 1.0, out=img)
    return img.astype(np.float32, copy=False)


# --- timing -----------------------------------------------------------------------------------


def render_timing(
    sizes: Iterable[int] = (224, 256, 320), n: int = 60, start_seed: int = 0
) -> list[tuple[int, float, float]]:
    """Time :func:`render_phantom` on sampled cases (after a warm-up that fills the caches).

    Args:
        sizes: Image sizes to time.
        n: Images per size.
        start_seed: First seed.

    Returns:
        Rows of (size, mean milliseconds per image, 90th percentile milliseconds).
    """
    rows = []
    for size in sizes:
        render_phantom(start_seed, size=size)  # warm-up: banks and grids
        times = []
        for seed in range(start_seed, start_seed + n):
            t0 = time.perf_counter()
            render_phantom(seed, size=size)
            times.append((time.perf_counter() - t0) * 1000.0)
        rows.append((size, float(np.mean(times)), float(np.percentile(times, 90))))
    return rows
