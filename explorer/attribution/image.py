"""Image attributions: which pixels drive an image-text similarity (IG, Grad-CAM, occlusion,
attention rollout).

Maps are taken against the grayscale image at the model's input size
(:func:`model_input`, :func:`explorer.models.preprocess.to_model_grid`) and mapped back onto the
caller's image with :func:`explorer.models.preprocess.to_image_space`. Each method's options
are a dataclass from :mod:`explorer.attribution.options`; its runner here turns them into a map.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from explorer.attribution.core import (
    AttributionError,
    Counted,
    ForwardFunc,
    as_image,
    attribution_mode,
    check_finite,
    check_prompt,
    frozen,
    relative,
)
from explorer.attribution.options import (
    DEFAULT_INTERNAL_BATCH_SIZE,
    DEFAULT_STEPS,
    IG_INTEGRATION,
    AttentionOptions,
    AttributionOptionsError,
    Baseline,
    CellOptions,
    GradCAMOptions,
    IGOptions,
    OcclusionOptions,
    Options,
    check_count,
    image_method,
    resolve_image_options,
)
from explorer.models.base import VisionLanguageModel
from explorer.models.preprocess import normalize, to_image_space, to_model_grid
from explorer.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ImageAttribution:
    """A saliency map for one image and one prompt.

    Attributes:
        method: ``"ig"``, ``"gradcam"``, ``"occlusion"`` or ``"attention"``.
        prompt: The text whose similarity with the image is explained.
        attribution: Read-only float32 ``[H, W]`` map at the shape of the image the caller
            passed, resampled bilinearly from ``model_attribution`` (values per model pixel;
            regions the model never saw, such as a centre crop's cut-off sides, are 0).
        score: The explained similarity for the input image (cosine, times the logit scale
            when ``params["scaled"]``).
        baseline_score: The similarity for the integrated-gradients baseline image (IG only).
        params: What produced the map: ``steps``, ``internal_batch_size``, ``baseline``
            (a description), ``window``/``stride`` (occlusion, model-input pixels), ``layer``
            (Grad-CAM), ``rule``/``layers``/``pooled``/``patches`` (attention rollout),
            ``input_size``, ``scaled``.
        signed: Whether the map has meaningful negative values (IG, occlusion).
        convergence_delta: IG only: ``model_attribution.sum() - (score - baseline_score)``.
        model_attribution: Read-only float32 ``[S, S]`` map at the model's input size.
    """

    method: str
    prompt: str
    attribution: np.ndarray
    score: float
    baseline_score: float | None
    params: dict[str, Any]
    signed: bool
    convergence_delta: float | None
    model_attribution: np.ndarray

    @property
    def relative_delta(self) -> float | None:
        """IG only: ``|convergence_delta| / |score - baseline_score|``.

        Above a few percent the integral is poorly resolved; more ``steps`` help.
        """
        if self.convergence_delta is None or self.baseline_score is None:
            return None
        return relative(self.convergence_delta, self.score - self.baseline_score)


# --- forward functions ------------------------------------------------------------------------


def model_input(model: VisionLanguageModel, pixels: np.ndarray) -> torch.Tensor:
    """Grayscale ``[H, W]`` image in [0, 1] -> ``[1, 1, S, S]`` at the model's input size.

    Resized, cropped or letterboxed exactly as the model's preprocessing does
    (:func:`explorer.models.preprocess.to_model_grid`), but not normalised: values stay in
    [0, 1]. This is the tensor image attributions are taken against.
    """
    return to_model_grid(as_image(pixels), model.preprocess_cfg).to(model.device)


def image_similarity_forward(
    model: VisionLanguageModel, text_embedding: torch.Tensor, scale: float = 1.0
) -> ForwardFunc:
    """A Captum ``forward_func``: ``[B, 1, S, S]`` gray images in [0, 1] -> ``[B]`` similarities
    (``[B, K]`` for ``K`` texts: one image pass serves every text).

    Args:
        model: The adapter.
        text_embedding: ``[1, D]`` (or ``[D]``) L2-normalised text embedding, computed once; or
            ``[K, D]`` for ``K`` texts.
        scale: Multiplier of the cosine (1, or ``model.logit_scale``).
    """
    pre = model.preprocess_cfg
    text = text_embedding.reshape(-1, text_embedding.shape[-1]).detach().to(model.device)
    single = text.shape[0] == 1

    def forward(x: torch.Tensor) -> torch.Tensor:
        # The rest of the model's preprocessing: the input is already at the model's size.
        image = model.encode_image(normalize(x, pre), normalize=True)
        scores = image @ text.T * scale
        return scores[:, 0] if single else scores

    return forward


def _text_embedding(model: VisionLanguageModel, prompt: str | list[str]) -> torch.Tensor:
    with torch.no_grad():
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        return model.encode_text(model.tokenize(texts), normalize=True)


# --- generic Captum helpers (usable with any forward function) ----------------------------


def integrated_gradients(
    forward_func: ForwardFunc,
    x: torch.Tensor,
    baseline: torch.Tensor | float = 0.0,
    *,
    steps: int = DEFAULT_STEPS,
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, float]:
    """Integrated gradients of a scalar-per-sample ``forward_func`` at one input.

    Args:
        forward_func: ``[B, ...] -> [B]``.
        x: The input, batch of one.
        baseline: Same shape as ``x``, or a constant.
        steps: Integration points (Gauss-Legendre).
        internal_batch_size: Points evaluated per forward pass.
        progress: Optional ``callable(fraction, message)``.

    Returns:
        Attributions shaped like ``x`` (detached) and the completeness residual
        ``sum(attr) - (f(x) - f(baseline))``.
    """
    from captum.attr import IntegratedGradients

    check_count("Integrated gradients'", "steps", steps)
    check_count("Integrated gradients'", "internal_batch_size", internal_batch_size)
    counted = Counted(forward_func, steps + 2, progress, "Integrated gradients")
    with torch.inference_mode(False), torch.enable_grad():
        attr, delta = IntegratedGradients(counted).attribute(
            x.detach(),
            baselines=baseline.detach() if isinstance(baseline, torch.Tensor) else baseline,
            n_steps=steps,
            method=IG_INTEGRATION,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    return attr.detach(), float(delta.reshape(-1)[0])


def occlusion(
    forward_func: ForwardFunc,
    x: torch.Tensor,
    *,
    window: int,
    stride: int,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Occlusion map of ``forward_func`` at ``x`` (``[1, C, H, W]``) with a square window.

    Each window position (all channels at once) is painted with ``baseline``; a pixel's value
    is the mean drop ``f(x) - f(occluded)`` over the windows covering it.

    Args:
        forward_func: ``[B, C, H, W] -> [B]``, or ``[B, K]`` for ``K`` outputs (one pass over
            the windows gives a map of each: the result is then ``[K, C, H, W]``).
        x: The input, batch of one.
        window: Side of the square window in pixels (at most ``min(H, W)``).
        stride: Step between windows in pixels (1 to ``window``).
        baseline: Value painted into the window, or an image shaped like ``x`` whose pixels
            under the window are painted.
        batch_size: Occluded images evaluated per forward pass.
        progress: Optional ``callable(fraction, message)``.

    Raises:
        AttributionOptionsError: The window does not fit the input, or the stride the window.
    """
    from captum.attr import Occlusion

    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected a [1, C, H, W] input, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not 1 <= window <= min(h, w):
        raise AttributionOptionsError(
            f"The occlusion window must be between 1 and {min(h, w)} pixels, got {window}."
        )
    if not 1 <= stride <= window:
        raise AttributionOptionsError(
            f"The occlusion stride must be between 1 and the window ({window}), got {stride}."
        )
    check_count("The occlusion", "batch", batch_size)
    positions = (math.ceil((h - window) / stride) + 1) * (math.ceil((w - window) / stride) + 1)
    counted = Counted(forward_func, positions + 1, progress, "Occlusion")
    with torch.no_grad():
        attr = Occlusion(counted).attribute(
            x.detach(),
            sliding_window_shapes=(x.shape[1], window, window),
            strides=(1, stride, stride),
            baselines=baseline.detach() if isinstance(baseline, torch.Tensor) else baseline,
            perturbations_per_eval=batch_size,
        )
    return attr.detach()


# --- Grad-CAM -----------------------------------------------------------------------------------


def grad_cam(
    model: VisionLanguageModel, forward_func: ForwardFunc, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Grad-CAM of ``forward_func`` at ``x`` on ``model.spatial_layer``.

    The layer's activation ``A`` is read as a ``[1, C, h, w]`` grid with ``to_grid`` (the
    layer's output for convolutional towers, its input for vision transformers; see the
    package docstring); the channel weights are the spatially averaged gradients of the
    similarity with respect to that grid, and the map is ``ReLU(sum_c w_c A_c)`` resized
    bilinearly to ``x``'s spatial size.

    Returns:
        The ``[H, W]`` map (detached) and a description of the hooked layer.
    """
    layer = model.spatial_layer
    use_input = layer.kind == "vit"
    owner = threading.get_ident()
    captured: list[torch.Tensor] = []

    def keep_input(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() == owner:
            named = [kwargs.get(k) for k in ("hidden_states", "x")]
            tensors = [a for a in (*args, *named, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors:
                captured.append(tensors[0])

    def keep_output(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
        if threading.get_ident() == owner:
            captured.append(output[0] if isinstance(output, tuple) else output)

    if use_input:
        handle = layer.module.register_forward_pre_hook(keep_input, with_kwargs=True)
    else:
        handle = layer.module.register_forward_hook(keep_output)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # A leaf that requires grad keeps the graph even if every parameter is frozen.
            probe = x.detach().clone().requires_grad_(True)
            score = forward_func(probe)
            if not captured:
                raise AttributionError(
                    "Grad-CAM could not read the model's spatial layer during the forward pass."
                )
            activation = captured[-1]
            (grad,) = torch.autograd.grad(score.sum(), activation)
    finally:
        handle.remove()
    acts = layer.to_grid(activation.detach()).float()
    grads = layer.to_grid(grad).float()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    info = {
        "layer": _module_name(model, layer.module),
        "layer_kind": layer.kind,
        "hooked": "input" if use_input else "output",
        "grid": tuple(int(v) for v in acts.shape[-2:]),
    }
    return cam[0, 0].detach(), info


def _module_name(model: VisionLanguageModel, target: torch.nn.Module) -> str:
    for name, module in model.module.named_modules():
        if module is target:
            return name or type(target).__name__
    return type(target).__name__


# --- baselines -----------------------------------------------------------------------------------


def _baseline_image(
    baseline: Baseline, x: torch.Tensor, model: VisionLanguageModel, shape: tuple
) -> tuple[torch.Tensor, str]:
    """The baseline as a model-input tensor like ``x``, and a description of it."""
    if isinstance(baseline, str):
        if baseline == "black":
            return torch.zeros_like(x), "black (all zeros)"
        if baseline == "mean":
            value = float(x.mean())
            return torch.full_like(x, value), f"constant {value:.4f} (mean of the image)"
        # "blur" (the options checked the name)
        from scipy.ndimage import gaussian_filter

        sigma = max(1.0, x.shape[-1] / 16)
        blurred = gaussian_filter(x[0, 0].cpu().numpy(), sigma=sigma, mode="nearest")
        return (
            torch.as_tensor(blurred, dtype=x.dtype, device=x.device)[None, None],
            f"gaussian blur of the image (sigma {sigma:g} model pixels)",
        )
    if isinstance(baseline, numbers.Real):
        return torch.full_like(x, float(baseline)), f"constant {float(baseline):g}"
    arr = np.asarray(baseline, dtype=np.float32)
    if arr.shape != tuple(shape):
        raise AttributionOptionsError(
            f"A baseline image must have the image's shape {shape}, got {arr.shape}."
        )
    return model_input(model, arr), "custom image"


# --- one runner per method -------------------------------------------------------------------

#: What a runner returns: the ``[S, S]`` map, its parameters, the baseline score and the delta
#: (a :data:`_BATCHED` runner: ``[K, S, S]`` maps, one per text of the forward function).
RunResult = tuple[torch.Tensor, dict[str, Any], float | None, float | None]
#: Methods whose one run explains several prompts at once (occlusion: each occluded image is
#: embedded once and compared with every prompt; cell shares: one pass splits every prompt's
#: similarity).
_BATCHED = frozenset({"occlusion", "cells"})


@dataclass(frozen=True)
class _Call:
    """What every runner gets: the model, the forward function, the input and the caller's
    image shape."""

    model: VisionLanguageModel
    forward: ForwardFunc
    x: torch.Tensor
    shape: tuple
    progress: Progress | None
    texts: torch.Tensor | None = None  # the prompts' embeddings ([K, D], batched runners)
    scale: float = 1.0


def _run_ig(call: _Call, opts: IGOptions) -> RunResult:
    base, description = _baseline_image(opts.baseline, call.x, call.model, call.shape)
    with torch.no_grad():
        baseline_score = float(call.forward(base)[0])
    attr, delta = integrated_gradients(
        call.forward,
        call.x,
        base,
        steps=opts.steps,
        internal_batch_size=opts.internal_batch_size,
        progress=call.progress,
    )
    params = {
        "steps": int(opts.steps),
        "internal_batch_size": int(opts.internal_batch_size),
        "baseline": description,
        "integration": IG_INTEGRATION,
    }
    return attr[0, 0], params, baseline_score, delta


def _run_gradcam(call: _Call, _opts: GradCAMOptions) -> RunResult:
    model_map, info = grad_cam(call.model, call.forward, call.x)
    return model_map, info, None, None


def _run_occlusion(call: _Call, opts: OcclusionOptions) -> RunResult:
    base, description = _baseline_image(opts.baseline, call.x, call.model, call.shape)
    window, stride = opts.resolved(int(call.x.shape[-1]))
    attr = occlusion(
        call.forward,
        call.x,
        window=window,
        stride=stride,
        baseline=base,
        batch_size=opts.batch,
        progress=call.progress,
    )
    params = {
        "window": window,
        "stride": stride,
        "baseline": description,
        "internal_batch_size": int(opts.batch),
    }
    return attr[:, 0], params, None, None


def _run_attention(call: _Call, opts: AttentionOptions) -> RunResult:
    from explorer.attribution.attention import image_rollout

    model_map, params = image_rollout(call.model, call.forward, call.x, opts)
    return model_map, params, None, None


def _run_cells(call: _Call, _opts: CellOptions) -> RunResult:
    """Each cell's share of the similarity, spread evenly over the cell's pixels (bilinear
    between cell centres), so the map still adds up to the similarity."""
    with torch.no_grad():
        shares = call.model.cell_shares(normalize(call.x, call.model.preprocess_cfg), call.texts)
    shares = shares[0].float() * call.scale  # [K, g, g]
    size = int(call.x.shape[-1])
    per_pixel = shares / ((size / shares.shape[-2]) * (size / shares.shape[-1]))
    maps = F.interpolate(
        per_pixel[:, None], size=(size, size), mode="bilinear", align_corners=False
    )
    return maps[:, 0], {"cells": tuple(int(v) for v in shares.shape[-2:])}, None, None


def why_no_image_map(model: VisionLanguageModel, method: str) -> str | None:
    """Why ``model`` cannot make an image map with ``method``, in a sentence, or None if it can
    (attention needs a transformer image tower, cell shares a cell-pooled one; the other
    methods take any model). The tab, ``attribute`` and the benchmark ask before they run a
    method; :func:`attribute_image` refuses with the same sentence."""
    if method == "attention" and model.attention_stack("image") is None:
        return model.attention_unavailable("image")
    if method == "cells" and not model.cell_pooled:
        return model.cells_unavailable()
    return None


_RUNNERS: dict[str, Callable[[_Call, Any], RunResult]] = {
    "ig": _run_ig,
    "gradcam": _run_gradcam,
    "occlusion": _run_occlusion,
    "attention": _run_attention,
    "cells": _run_cells,
}


# --- public entry points --------------------------------------------------------------------


def attribute_image(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    prompt: str,
    method: str = "ig",
    *,
    options: Options | None = None,
    steps: int | None = None,
    internal_batch_size: int | None = None,
    baseline: Baseline | None = None,
    window: int | None = None,
    stride: int | None = None,
    layers: int | None = None,
    scaled: bool = False,
    progress: Progress | None = None,
) -> ImageAttribution:
    """Explain the similarity of ``pixels`` with ``prompt`` by a map over the image.

    The method's options come either as its options dataclass (``options=IGOptions(...)``)
    or as the keyword arguments below, which map onto it (None = the method's default;
    those a method does not take are ignored).

    Args:
        model: A loaded adapter.
        pixels: Grayscale ``[H, W]`` image with values in [0, 1].
        prompt: The text (its embedding is computed once, without gradients).
        method: ``"ig"``, ``"gradcam"``, ``"occlusion"`` or ``"attention"`` (transformer
            image towers only).
        options: :class:`IGOptions`, :class:`GradCAMOptions`, :class:`OcclusionOptions` or
            :class:`AttentionOptions` of ``method``.
        steps: IG integration points (default 128).
        internal_batch_size: Images per forward pass (IG points, occluded images; 16).
        baseline: What IG integrates from and occlusion paints: ``"black"`` (zeros),
            ``"mean"`` (constant image mean), ``"blur"`` (Gaussian blur, sigma = S/16), a
            constant in [0, 1], or an image of the same shape as ``pixels``; None = the
            method's default (:data:`DEFAULT_BASELINES`). Grad-CAM has none.
        window: Occlusion window side in model-input pixels (default ``S // 8``).
        stride: Occlusion stride in model-input pixels (default ``S // 16``).
        layers: Attention rollout: how many of the last attention layers (default all).
        scaled: Explain ``logit_scale * cosine`` instead of the cosine.
        progress: Optional ``callable(fraction, message)`` called as work advances.

    Returns:
        The :class:`ImageAttribution`.

    Raises:
        AttributionOptionsError: Unknown method, options of another method, options given
            twice, an option out of range (a ``ValueError`` too), or a method this model has no
            map for (:func:`why_no_image_map` says why).
        ValueError: A bad prompt, or an image that is not 2-D.
        AttributionError: The model produced NaN or infinite values.
    """
    options = resolve_image_options(
        method,
        options,
        steps=steps,
        internal_batch_size=internal_batch_size,
        baseline=baseline,
        window=window,
        stride=stride,
        layers=layers,
    )
    return _attribute_prompts(model, pixels, [prompt], method, options, scaled, progress)[0]


def _attribute_prompts(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    prompts: list[str],
    method: str,
    options: Options,
    scaled: bool,
    progress: Progress | None,
) -> list[ImageAttribution]:
    """One map per prompt. A :data:`_BATCHED` method explains every prompt in one run (the
    image passes are shared); the others run once per prompt, each on its own share of the
    ``progress`` range."""
    entry = image_method(method)
    why = why_no_image_map(model, method)
    if why is not None:
        raise AttributionOptionsError(why)
    for prompt in prompts:
        check_prompt(prompt)
    shape = tuple(np.shape(pixels))
    start = time.perf_counter()
    with attribution_mode(model):
        x = model_input(model, pixels)
        scale = float(model.logit_scale) if scaled else 1.0
        texts = _text_embedding(model, prompts)
        with torch.no_grad():
            scores = [
                float(v) for v in image_similarity_forward(model, texts, scale)(x).reshape(-1)
            ]
        check_finite(torch.tensor(scores), "similarity")
        common: dict[str, Any] = {"input_size": int(x.shape[-1]), "scaled": bool(scaled)}
        if progress is not None:
            progress(0.0, f"{method}: starting")
        runner = _RUNNERS[method]
        if method in _BATCHED:
            forward = image_similarity_forward(model, texts, scale)
            call = _Call(model, forward, x, shape, progress, texts, scale)
            maps, extra, base, delta = runner(call, options)
            runs = [(maps[k], extra, base, delta) for k in range(len(prompts))]
        else:
            runs = []
            for k in range(len(prompts)):
                part = _share(progress, k, len(prompts))
                forward = image_similarity_forward(model, texts[k : k + 1], scale)
                runs.append(runner(_Call(model, forward, x, shape, part), options))
    results = []
    for prompt, score, (model_map, extra, baseline_score, delta) in zip(
        prompts, scores, runs, strict=True
    ):
        model_np = model_map.detach().float().cpu().numpy()
        check_finite(model_np, f"{method} map")
        image_np = to_image_space(model_np, model.preprocess_cfg, shape)
        check_finite(image_np, f"{method} map")
        if delta is not None:
            check_finite(delta, "convergence delta")
        results.append(
            ImageAttribution(
                method=method,
                prompt=prompt,
                attribution=frozen(image_np),
                score=score,
                baseline_score=baseline_score,
                params=common | extra,
                signed=entry.signed,
                convergence_delta=delta,
                model_attribution=frozen(model_np),
            )
        )
    if progress is not None:
        progress(1.0, f"{method}: done")
    log.debug(
        "%s attribution of %d prompt(s) on %s: %.2f s",
        method,
        len(prompts),
        model.name,
        time.perf_counter() - start,
    )
    return results


def _share(progress: Progress | None, k: int, n: int) -> Progress | None:
    """Run ``k`` of ``n``'s part of a ``progress`` range."""
    if progress is None:
        return None
    return lambda frac, msg: progress((k + frac) / n, msg)


def attribute_pair(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    affirmed: str,
    negated: str,
    method: str = "ig",
    *,
    options: Options | None = None,
    scaled: bool = False,
    progress: Progress | None = None,
    **kw: Any,
) -> tuple[ImageAttribution, ImageAttribution, np.ndarray]:
    """Maps for an affirmed and a negated prompt, and their difference (affirmed - negated).

    With IG and the same baseline the difference is itself the IG map of
    ``sim(affirmed) - sim(negated)`` (completeness holds for it too). Occlusion computes both
    maps in one pass over the occluded images (half the image passes of two calls). The other
    keyword arguments are :func:`attribute_image`'s options; a ``progress`` callback sees one
    continuous 0-1 range.
    """
    options = resolve_image_options(method, options, **kw)
    first, second = _attribute_prompts(
        model, pixels, [affirmed, negated], method, options, scaled, progress
    )
    diff = (first.attribution - second.attribution).astype(np.float32)
    return first, second, diff
