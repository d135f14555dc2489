"""The domain guard: how typical an image is of what a model saw in training.

A model's scores mean something only on images like its training images. For each model with
known training images the guard keeps a **reference**: the mean and a shrunk covariance
(Ledoit & Wolf 2004) of the image tower's own features of a sample of those images, and the
Mahalanobis distances of a further, held-apart part of the sample. The features are the
model's last spatial layer (the one Grad-CAM reads, :attr:`VisionLanguageModel.spatial_layer`)
averaged over the image: on the phantom models they tell phantoms from real films far better
than the final, L2-normalised embedding does (AUROC 1.000 against 0.997 on phantom-negaware),
because the projection keeps only what the training text needed. An image's
**typicality** is the share of those held-apart training images that lie farther from the mean
than it does (1 = right in the middle of the training images, 0 = farther out than all of
them); below :data:`TYPICALITY_THRESHOLD` the image is reported as outside the model's
training domain, with a plain sentence.

* The embedded phantom models (spec tag ``"phantom"``) were trained on rendered phantoms:
  their reference is :data:`REFERENCE_COUNT` phantoms rendered from the training seeds
  (:data:`explorer.phantom.splits.TRAIN_SEED`) at the model's input size, computed on first
  use and cached under :func:`explorer.paths.cache_dir` keyed by the model's weights
  fingerprint, so a retrained model gets a new one.
* Models trained on films that do not travel with the app (the real models, trained on the
  NIH training side that lives beside the checkout) ship their reference in their model
  folder (:data:`REFERENCE_FILE`), written once by ``python -m explorer guard --write`` from
  the training films (:func:`manifest_reference`); it is used only while the weights'
  fingerprint matches the one it was computed with.
* Models with neither (the hub models) have no reference; the guard says so plainly
  (:attr:`Typicality.has_reference` is False) rather than guessing.

The features come from the same forward pass that gives the image embedding
(:func:`encode_with_features`), so scoring with the check costs no more than scoring; the
check itself is a matrix-vector product.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from explorer.models.base import MODEL_LOCK, VisionLanguageModel
from explorer.paths import cache_dir

log = logging.getLogger(__name__)

#: Training phantoms in a phantom model's reference (fit on the first part, calibrated on the
#: rest). About 35 s to render and run on 2 busy CPU cores, once per model and weights
#: (the rendered phantoms are cached too: 20 s for the second phantom model); 0.3 s cached.
REFERENCE_COUNT = 1200
#: Share of the reference held apart to calibrate the distances (not used for the fit, so a
#: new image from the training domain is as typical as these, not less).
CALIBRATION_SHARE = 1 / 3
#: Below this typicality an image is reported as outside the model's training domain.
TYPICALITY_THRESHOLD = 0.01
#: The tag of models trained on the rendered phantoms (``explorer/configs/models.json``).
PHANTOM_TAG = "phantom"
#: Bumped when the reference's format or recipe changes (old cache files are then ignored).
REFERENCE_VERSION = 1
#: The file in a local model folder that holds its shipped reference (:func:`shipped_reference`).
REFERENCE_FILE = "domain_reference.npz"
_BATCH = 128


@dataclass(frozen=True, eq=False)
class DomainReference:
    """What a model's training images look like to its image tower.

    Attributes:
        model: The model's registered name.
        fingerprint: Hash of the weights the reference was computed with.
        description: The reference images in words (e.g. "1,200 training phantoms ...").
        mean: ``[C]`` mean of the fitted part's features (:func:`image_features`).
        precision: ``[C, C]`` inverse of their shrunk covariance.
        calibration: Sorted Mahalanobis distances of the held-apart part.
        seconds: Time it took to compute (render + embed + fit); 0 when read from the cache.
    """

    model: str
    fingerprint: str
    description: str
    mean: np.ndarray
    precision: np.ndarray
    calibration: np.ndarray
    seconds: float = 0.0

    def distances(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Mahalanobis distances of ``[N, C]`` (or ``[C]``) features (:func:`image_features`)."""
        x = _as_rows(features) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", x, self.precision, x), 0.0))

    def typicality(self, distances: np.ndarray | float) -> np.ndarray:
        """Share of the held-apart reference images at least as far from the mean."""
        d = np.asarray(distances, dtype=np.float64)
        below = np.searchsorted(self.calibration, d, side="left")
        return 1.0 - below / len(self.calibration)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the held-apart reference distances."""
        return float(np.percentile(self.calibration, q))


@dataclass(frozen=True)
class Typicality:
    """How typical one image is of a model's training images.

    Attributes:
        model: The model's registered name.
        has_reference: Whether the model has a reference here (False: nothing is measured).
        typicality: Share of the held-apart training images farther from their mean than this
            image (0-1), or None without a reference.
        distance: Mahalanobis distance of the image's features, or None.
        reference_p99: The 99th percentile of the training images' own distances, or None.
        threshold: Typicality below which the image counts as outside the training domain.
        outside: The image is outside the model's training domain.
        reference: What the reference images are, in words ("" without one).
        sentence: One plain sentence for the person.
    """

    model: str
    has_reference: bool
    typicality: float | None
    distance: float | None
    reference_p99: float | None
    threshold: float
    outside: bool
    reference: str
    sentence: str

    def to_dict(self) -> dict:
        """A JSON-ready dict (the CLI's and the API's field)."""
        return {
            "model": self.model,
            "has_reference": self.has_reference,
            "typicality": None if self.typicality is None else round(self.typicality, 4),
            "distance": None if self.distance is None else round(self.distance, 3),
            "reference_p99": None if self.reference_p99 is None else round(self.reference_p99, 3),
            "threshold": self.threshold,
            "outside": self.outside,
            "reference": self.reference,
            "sentence": self.sentence,
        }


def _as_rows(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float64)
    return x.reshape(1, -1) if x.ndim == 1 else x


def encode_with_features(
    model: VisionLanguageModel, pixels: np.ndarray | torch.Tensor, batch: int = _BATCH
) -> tuple[np.ndarray, torch.Tensor]:
    """The guard's features and the image embeddings, from one forward pass.

    The features are the last spatial layer's output averaged over the image; the embeddings
    are what :meth:`VisionLanguageModel.embed_image` returns (so scoring can reuse them).

    Args:
        model: A loaded model.
        pixels: Grayscale image(s) ``[H, W]`` or ``[N, H, W]`` in [0, 1].
        batch: Images per forward pass.

    Returns:
        ``[N, C]`` float32 features and ``[N, D]`` normalised embeddings (``N`` = 1 for one
        image).
    """
    x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.asarray(pixels))
    x = x.float().reshape(-1, *x.shape[-2:])
    layer = model.spatial_layer
    grabbed: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        grabbed.append(layer.to_grid(output).float().mean(dim=(2, 3)).cpu())

    feats, embs = [], []
    # The lock keeps an attribution's hooks (another thread) from seeing this pass.
    with MODEL_LOCK, torch.no_grad():
        handle = layer.module.register_forward_hook(hook)
        try:
            for k in range(0, len(x), batch):
                grabbed.clear()
                embs.append(model.encode_image(model.preprocess(x[k : k + batch])))
                feats.append(grabbed[-1].numpy())
        finally:
            handle.remove()
    return np.concatenate(feats).astype(np.float32), torch.cat(embs)


def image_features(
    model: VisionLanguageModel, pixels: np.ndarray | torch.Tensor, batch: int = _BATCH
) -> np.ndarray:
    """The guard's features of ``[H, W]`` or ``[N, H, W]`` images (:func:`encode_with_features`)."""
    return encode_with_features(model, pixels, batch)[0]


def fit_reference(
    model_name: str,
    features: np.ndarray,
    description: str,
    fingerprint: str = "",
    calibration_share: float = CALIBRATION_SHARE,
) -> DomainReference:
    """A reference from training images' features (the last ``calibration_share`` calibrate).

    Raises:
        ValueError: fewer than 8 images (too few to fit and calibrate).
    """
    from sklearn.covariance import LedoitWolf

    x = _as_rows(features)
    if len(x) < 8:
        raise ValueError("a domain reference needs at least 8 images")
    n_cal = max(2, int(round(len(x) * calibration_share)))
    fit, cal = x[:-n_cal], x[-n_cal:]
    lw = LedoitWolf().fit(fit)
    ref = DomainReference(
        model=model_name,
        fingerprint=fingerprint,
        description=description,
        mean=lw.location_.astype(np.float64),
        precision=lw.precision_.astype(np.float64),
        calibration=np.zeros(1),
    )
    return replace(ref, calibration=np.sort(ref.distances(cal)))


# --- which models have a reference, and the cache -------------------------------------------


def has_phantom_training(model: VisionLanguageModel) -> bool:
    """Whether the model was trained on the rendered phantoms (its spec's ``phantom`` tag)."""
    return PHANTOM_TAG in model.spec.tags


def phantom_description(count: int, size: int) -> str:
    from explorer.phantom.splits import TRAIN_SEED

    return (
        f"{count:,} training phantoms (seeds {TRAIN_SEED:,} to {TRAIN_SEED + count - 1:,}, "
        f"{size} px)"
    )


def _reference_file(model: VisionLanguageModel, fingerprint: str, count: int) -> Path:
    from explorer.phantom.sets import render_version

    stem = f"{model.name}-{fingerprint}-{count}-{render_version()}-v{REFERENCE_VERSION}"
    return cache_dir() / "domain" / f"{stem}.npz"


def _save(ref: DomainReference, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        model=ref.model,
        fingerprint=ref.fingerprint,
        description=ref.description,
        mean=ref.mean,
        precision=ref.precision,
        calibration=ref.calibration,
    )
    tmp.replace(path)


def _load(path: Path) -> DomainReference:
    with np.load(path) as z:
        return DomainReference(
            model=str(z["model"]),
            fingerprint=str(z["fingerprint"]),
            description=str(z["description"]),
            mean=z["mean"],
            precision=z["precision"],
            calibration=z["calibration"],
        )


def phantom_reference(
    model: VisionLanguageModel, count: int | None = None, cache: bool = True
) -> DomainReference:
    """The reference of a phantom-trained model: ``count`` training phantoms, cached on disk.

    ``count`` defaults to :data:`REFERENCE_COUNT` (read at call time).

    The phantoms are rendered from the training seeds at the model's input size (as in
    training), embedded, and fitted; the file is keyed by the weights' fingerprint, the count
    and the phantom renderer's version.
    """
    from explorer.phantom.sets import build_phantom_set
    from explorer.phantom.splits import TRAIN_SEED
    from explorer.reports.map import model_fingerprint

    count = REFERENCE_COUNT if count is None else count
    fingerprint = model_fingerprint(model)
    path = _reference_file(model, fingerprint, count)
    if cache and path.exists():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError):  # a damaged file is computed again
            log.warning("domain reference %s unreadable; computing it again", path.name)
    t0 = time.perf_counter()
    size = model.preprocess_cfg.image_size
    data = build_phantom_set(count, TRAIN_SEED, size, cache=cache)
    feats = image_features(model, data.pixels(np.arange(len(data))))
    ref = fit_reference(model.name, feats, phantom_description(count, size), fingerprint)
    seconds = time.perf_counter() - t0
    ref = replace(ref, seconds=seconds)
    log.info("domain reference of %s from %d phantoms in %.1f s", model.name, count, seconds)
    if cache:
        _save(ref, path)
    return ref


def _by_patient(rows: Sequence, seed: int = 0) -> list:
    """The rows in a seeded order of whole patients (a patient's films stay together)."""
    import hashlib

    def key(row) -> tuple[str, str]:
        return (hashlib.sha256(f"{seed}|{row.patient}".encode()).hexdigest(), row.key)

    return sorted(rows, key=key)


def manifest_reference(
    model: VisionLanguageModel,
    manifest,
    count: int | None = None,
    calibration_share: float = CALIBRATION_SHARE,
) -> DomainReference:
    """The reference of a model trained on real films: those of ``manifest`` (its training side).

    The films are put in a seeded order of whole patients, so the held-apart calibration part
    shares no patient with the fitted part (a new patient's film is then judged as typical as
    these, not as typical as a film of a patient already fitted).

    Args:
        model: A loaded model.
        manifest: The films the model was trained on (:class:`explorer.data.manifest.Manifest`).
        count: Use only the first ``count`` films of that order (default: all).
        calibration_share: Share of the films held apart to calibrate.

    Raises:
        ValueError: fewer than 8 films.
    """
    from explorer.reports.map import model_fingerprint

    t0 = time.perf_counter()
    rows = _by_patient(manifest.rows)[:count]
    feats = []
    for k in range(0, len(rows), _BATCH):
        pixels = [r.pixels() for r in rows[k : k + _BATCH]]
        if len({p.shape for p in pixels}) == 1:
            feats.append(image_features(model, np.stack(pixels)))
        else:
            feats.extend(image_features(model, p) for p in pixels)
    x = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    patients = len({r.patient for r in rows})
    description = f"{len(rows):,} training films of {patients:,} patients ({manifest.name})"
    ref = fit_reference(
        model.name, x, description, model_fingerprint(model), calibration_share=calibration_share
    )
    return replace(ref, seconds=time.perf_counter() - t0)


def reference_path(model: VisionLanguageModel) -> Path | None:
    """Where a local model's shipped reference lives (None for a hub model)."""
    from explorer.models.spec import local_path

    folder = local_path(model.spec.source)
    return None if folder is None else folder / REFERENCE_FILE


def write_reference(ref: DomainReference, model: VisionLanguageModel) -> Path:
    """Ship ``ref`` in the model's folder (:data:`REFERENCE_FILE`); returns the file.

    Raises:
        ValueError: the model has no local folder, or ``ref`` was computed with other weights.
    """
    from explorer.reports.map import model_fingerprint

    path = reference_path(model)
    if path is None:
        raise ValueError(f"{model.name} is not a local model folder; its reference can't ship")
    if ref.fingerprint != model_fingerprint(model):
        raise ValueError(f"this reference was computed with other weights than {model.name}'s")
    _save(ref, path)
    return path


def shipped_reference(model: VisionLanguageModel) -> DomainReference | None:
    """The reference in the model's folder, if there is one and it matches the weights."""
    from explorer.reports.map import model_fingerprint

    path = reference_path(model)
    if path is None or not path.is_file():
        return None
    try:
        ref = _load(path)
    except (OSError, ValueError, KeyError):
        log.warning("domain reference %s of %s unreadable; no domain check", path, model.name)
        return None
    if ref.fingerprint != model_fingerprint(model):
        log.warning(
            "domain reference of %s was computed with other weights (%s); no domain check "
            "until `python -m explorer guard --model %s --write` is run again",
            model.name,
            ref.fingerprint,
            model.name,
        )
        return None
    return replace(ref, model=model.name)


_MEMO: dict[int, tuple[VisionLanguageModel, DomainReference | None]] = {}
_LOCK = threading.Lock()


def domain_reference(model: VisionLanguageModel) -> DomainReference | None:
    """The model's reference (computed once per process and weights), or None if it has none.

    A phantom model's is computed from training phantoms; any other local model's is the one
    shipped in its folder (:func:`shipped_reference`).
    """
    with _LOCK:  # one computation even when two requests arrive together
        hit = _MEMO.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        phantom = has_phantom_training(model)
        ref = phantom_reference(model) if phantom else shipped_reference(model)
        _MEMO[id(model)] = (model, ref)
        return ref


# --- the figure -------------------------------------------------------------------------------


def no_reference(model_name: str) -> Typicality:
    """The result for a model without a reference: nothing measured, said plainly."""
    return Typicality(
        model=model_name,
        has_reference=False,
        typicality=None,
        distance=None,
        reference_p99=None,
        threshold=TYPICALITY_THRESHOLD,
        outside=False,
        reference="",
        sentence=(
            f"No domain check for {model_name}: its training images are not available here, "
            "so how typical this image is of them is not measured."
        ),
    )


def judge(
    reference: DomainReference,
    features: np.ndarray | torch.Tensor,
    threshold: float = TYPICALITY_THRESHOLD,
) -> Typicality:
    """The typicality of one image's features against ``reference``, with its sentence."""
    distance = float(reference.distances(features)[0])
    share = float(reference.typicality(distance))
    p99 = reference.percentile(99)
    outside = share < threshold
    ratio = distance / p99 if p99 > 0 else float("inf")
    n = len(reference.calibration)
    if outside:
        beyond = "every one" if share == 0 else f"{1 - share:.1%}"
        sentence = (
            f"Outside {reference.model}'s training domain: this image lies farther from the "
            f"training images' centre than {beyond} of {n:,} held-apart training images "
            f"(typicality {share:.1%}; distance {distance:.1f}, {ratio:.1f} times their 99th "
            "percentile), so the model's scores and maps say little about it."
        )
    else:
        sentence = (
            f"Within {reference.model}'s training domain: {share:.0%} of its training images "
            f"lie farther out (typicality {share:.1%}; distance {distance:.1f})."
        )
    return Typicality(
        model=reference.model,
        has_reference=True,
        typicality=share,
        distance=distance,
        reference_p99=p99,
        threshold=threshold,
        outside=outside,
        reference=reference.description,
        sentence=sentence,
    )


def typicality(
    model: VisionLanguageModel,
    pixels: np.ndarray | torch.Tensor | None = None,
    reference: DomainReference | None = None,
    threshold: float = TYPICALITY_THRESHOLD,
    features: np.ndarray | None = None,
) -> Typicality:
    """How typical one image is of ``model``'s training images.

    Args:
        model: A loaded model.
        pixels: Grayscale image ``[H, W]`` in [0, 1] (not needed when ``features`` given).
        reference: A reference to judge against (default: the model's own, or none).
        threshold: Typicality below which the image is outside the training domain.
        features: The image's features from :func:`encode_with_features`, if at hand.

    Raises:
        ValueError: neither ``pixels`` nor ``features`` was given.
    """
    reference = reference if reference is not None else domain_reference(model)
    if reference is None:
        return no_reference(model.name)
    if features is None:
        if pixels is None:
            raise ValueError("typicality needs the image's pixels or its features")
        features = image_features(model, pixels)
    return judge(reference, features, threshold)


__all__ = [
    "CALIBRATION_SHARE",
    "PHANTOM_TAG",
    "REFERENCE_COUNT",
    "REFERENCE_FILE",
    "TYPICALITY_THRESHOLD",
    "DomainReference",
    "Typicality",
    "domain_reference",
    "encode_with_features",
    "image_features",
    "fit_reference",
    "has_phantom_training",
    "judge",
    "manifest_reference",
    "no_reference",
    "phantom_reference",
    "reference_path",
    "shipped_reference",
    "typicality",
    "write_reference",
]
