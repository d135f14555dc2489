"""How far a map can be trusted: a randomisation sanity check and deletion / insertion curves.

Two questions a person should ask of any saliency map, answered for the map they are looking at:

* **Does it explain the model, or only the image?** (Adebayo et al. 2018, "Sanity checks for
  saliency maps": the model-parameter randomisation test.) The top half of the image tower's
  parameters (in the order the tower applies them: the last blocks, the final norm, the
  projection) are replaced by random values of the same mean and spread, and the map is
  computed again with the same method. A map that explains the model changes a lot: the
  Spearman rank correlation of the two maps' magnitudes is low. A map that stays the same
  (correlation near 1) shows edges of the image whatever the model learned.
* **Does the similarity depend on the pixels the map ranks first?** (Deletion / insertion, as
  in RISE, Petsiuk et al. 2018.) The image's pixels are replaced by the method's baseline (a
  blurred copy) in order of the map, most attributed first, and the similarity is measured
  after each step; insertion starts from the blurred copy and puts the pixels back. Each
  curve's area (the mean similarity over the steps) is compared with the same curve for a
  random pixel order: a faithful map makes deletion fall faster (smaller area) and insertion
  rise faster (larger area) than random.

The well-kept library for these metrics, Quantus, was considered and not used: it is
LGPL/GPL-licensed, pulls OpenCV, scikit-image and matplotlib into the app, and its metrics take
a classifier's class logits, while here the explained quantity is an image-text similarity.
The checks are a few array operations on top of the attribution methods this package already
has, with :func:`scipy.stats.spearmanr` for the rank correlation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from explorer.attribution.image import (
    _baseline_image,
    _text_embedding,
    attribute_image,
    image_similarity_forward,
    model_input,
)
from explorer.models.base import VisionLanguageModel

#: Share of the image tower's parameter tensors randomised (the top ones).
RANDOMISED_SHARE = 0.5
#: Below this rank correlation after randomisation, a map passes the sanity check.
RANDOMISATION_PASS = 0.5
#: Steps of the deletion and insertion curves.
CURVE_STEPS = 16


@dataclass(frozen=True)
class TrustReport:
    """The checks of one map.

    Attributes:
        method: The attribution method checked.
        randomisation_rho: Spearman correlation of ``|map|`` before and after randomising the
            top :data:`RANDOMISED_SHARE` of the image tower (low = the map explains the model).
        deletion_auc: Mean similarity while the most-attributed pixels are removed.
        deletion_random_auc: The same for a random pixel order.
        insertion_auc: Mean similarity while the most-attributed pixels are put back.
        insertion_random_auc: The same for a random pixel order.
        randomised_tensors: How many parameter tensors were randomised.
    """

    method: str
    randomisation_rho: float
    deletion_auc: float
    deletion_random_auc: float
    insertion_auc: float
    insertion_random_auc: float
    randomised_tensors: int

    @property
    def passes_randomisation(self) -> bool:
        return self.randomisation_rho < RANDOMISATION_PASS

    @property
    def deletion_beats_random(self) -> bool:
        return self.deletion_auc < self.deletion_random_auc

    @property
    def insertion_beats_random(self) -> bool:
        return self.insertion_auc > self.insertion_random_auc

    def sentence(self) -> str:
        """The "can this map be trusted?" line shown beside the map."""
        rand = (
            f"it changes when the model's top layers are scrambled (rank correlation "
            f"{self.randomisation_rho:.2f}: it explains the model)"
            if self.passes_randomisation
            else f"it barely changes when the model's top layers are scrambled (rank "
            f"correlation {self.randomisation_rho:.2f}: it shows the image more than the model)"
        )
        faithful = sum((self.deletion_beats_random, self.insertion_beats_random))
        curves = (
            f"removing its top pixels lowers the similarity "
            f"{'faster' if self.deletion_beats_random else 'no faster'} than removing random "
            f"ones (area {self.deletion_auc:.3f} vs {self.deletion_random_auc:.3f}), and "
            f"putting them back raises it "
            f"{'faster' if self.insertion_beats_random else 'no faster'} (area "
            f"{self.insertion_auc:.3f} vs {self.insertion_random_auc:.3f})"
        )
        verdict = {
            (True, 2): "Trust it as a map of this model's evidence",
            (True, 1): "Trust it in part",
            (True, 0): "Trust it little",
            (False, 2): "Trust it little",
            (False, 1): "Do not trust it",
            (False, 0): "Do not trust it",
        }[(self.passes_randomisation, faithful)]
        return f"**Can this map be trusted?** {verdict}: {rand}; {curves}."


def tower_parameters(model: VisionLanguageModel, side: str = "image") -> list[str]:
    """Names of the parameters the ``"image"`` (or ``"text"``) embedding depends on, in the
    order they are applied.

    Found by one backward pass from the embedding, so it works for any backend (it includes
    the tower's projection, and no parameter of the other tower).
    """
    module = model.module
    module.zero_grad(set_to_none=True)
    with torch.enable_grad():
        if side == "text":
            embedding = model.encode_text(model.tokenize(["there is a pleural effusion"]))
        else:
            size = model.preprocess_cfg.image_size
            pixels = np.random.default_rng(0).random((size, size), dtype=np.float32)
            embedding = model.encode_image(model.preprocess(pixels), normalize=True)
        embedding.sum().backward()
    names = [n for n, p in module.named_parameters() if p.grad is not None]
    module.zero_grad(set_to_none=True)
    return names


def randomised_copy(
    model: VisionLanguageModel, share: float = RANDOMISED_SHARE, seed: int = 0, side: str = "image"
) -> tuple[VisionLanguageModel, int]:
    """A deep copy of ``model`` whose top ``share`` of ``side``-tower tensors are random.

    Each randomised tensor keeps its own mean and standard deviation (a 1-element tensor, or a
    constant one, gets noise of its magnitude), so activations stay in range and only what was
    learned is lost. The original model is not touched (other requests may be using it).
    """
    names = tower_parameters(model, side)
    top = names[len(names) - max(1, round(len(names) * share)) :]
    clone = copy.deepcopy(model)
    params = dict(clone.module.named_parameters())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name in top:
            p = params[name]
            flat = p.detach().float().cpu()
            std = float(flat.std()) if flat.numel() > 1 else 0.0
            std = std or max(float(flat.abs().mean()), 1e-3)
            noise = torch.randn(p.shape, generator=gen) * std + float(flat.mean())
            p.copy_(noise.to(p.dtype).to(p.device))
    return clone, len(top)


def word_randomisation_rho(
    model: VisionLanguageModel, pixels: np.ndarray, prompt: str, method: str, seed: int = 0
) -> float:
    """The randomisation check of a text method (``"layer_ig"`` or ``"text_attention"``):
    Spearman correlation of the prompt's token scores before and after randomising the top
    half of the *text* tower."""
    from explorer.attribution.text import attribute_text

    scrambled, _ = randomised_copy(model, seed=seed, side="text")
    before = attribute_text(model, pixels, prompt, method=method)
    after = attribute_text(scrambled, pixels, prompt, method=method)
    real = ~np.asarray(before.special)
    return _spearman(np.asarray(before.scores)[real], np.asarray(after.scores)[real])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.abs(a).ravel(), np.abs(b).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0  # a constant map carries no ranking
    return float(spearmanr(a, b).statistic)


def deletion_insertion(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    prompt: str,
    model_attribution: np.ndarray,
    steps: int = CURVE_STEPS,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """Areas of the deletion and insertion curves, for the map's order and a random order.

    Returns:
        ``(deletion, deletion_random, insertion, insertion_random)``: mean similarities over
        ``steps + 1`` points from 0 % to 100 % of the pixels moved.
    """
    x = model_input(model, pixels)
    blurred, _ = _baseline_image("blur", x, model, pixels.shape)
    forward = image_similarity_forward(model, _text_embedding(model, prompt))
    flat_x, flat_b = x.reshape(-1), blurred.reshape(-1)
    n = flat_x.numel()
    ranked = torch.as_tensor(np.argsort(-np.asarray(model_attribution).ravel(), kind="stable"))
    shuffled = torch.as_tensor(np.random.default_rng(seed).permutation(n))
    counts = [round(n * k / steps) for k in range(steps + 1)]

    def curve(order: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> float:
        images = []
        for c in counts:
            img = start.clone()
            img[order[:c]] = end[order[:c]]
            images.append(img.reshape(x.shape[1:]))
        with torch.no_grad():
            scores = forward(torch.stack(images))
        return float(scores.mean())

    return (
        curve(ranked, flat_x, flat_b),
        curve(shuffled, flat_x, flat_b),
        curve(ranked, flat_b, flat_x),
        curve(shuffled, flat_b, flat_x),
    )


def trust_report(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    prompt: str,
    method: str,
    attribution=None,
    seed: int = 0,
    **options,
) -> TrustReport:
    """Both checks for the map of ``method`` (given as ``attribution``, or computed here).

    Args:
        model: A loaded adapter.
        pixels: Grayscale ``[H, W]`` image in [0, 1].
        prompt: The explained text.
        method: An image method of :data:`explorer.attribution.METHODS`.
        attribution: The :class:`~explorer.attribution.image.ImageAttribution` already shown
            (saves computing it again), or None.
        seed: Seed of the randomisation and of the random pixel order.
        **options: The method's options, as for :func:`attribute_image`.
    """
    original = attribution or attribute_image(model, pixels, prompt, method, **options)
    scrambled_model, count = randomised_copy(model, seed=seed)
    scrambled = attribute_image(scrambled_model, pixels, prompt, method, **options)
    rho = _spearman(original.model_attribution, scrambled.model_attribution)
    curves = deletion_insertion(model, pixels, prompt, original.model_attribution, seed=seed)
    return TrustReport(method, rho, *curves, randomised_tensors=count)
