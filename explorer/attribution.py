"""Which pixels and which words drive an image-text similarity: Captum wrappers.

The quantity explained is the cosine similarity between the image embedding and one prompt's
text embedding (optionally multiplied by the model's logit scale). It is exposed as a plain
``forward_func`` so that any Captum method applies to it.

Image attributions are computed with respect to the **grayscale image at the model's input
size** (one channel, values in [0, 1]); the forward function repeats it to three channels and
normalises it with the model's mean and standard deviation exactly as
:func:`explorer.models.base.prepare_pixels` does. Maps therefore live in image space: the
baseline ``"black"`` (IG's and occlusion's default) is an all-zero image. Each map is kept at
model resolution (``model_attribution``) and mapped back onto the caller's image
(``attribution``): resized bilinearly, undoing the model's centre crop or letterbox so that a
map pixel lands on the image pixel it came from.

Methods:
    * ``"ig"`` - :class:`captum.attr.IntegratedGradients` (signed; completeness:
      ``model_attribution.sum() ~= score - baseline_score``, the residual is
      ``convergence_delta``). The path from a black image can cross sharp features of the
      network (a LayerNorm over nearly cancelling pooled features, say); check
      ``relative_delta`` and raise ``steps`` when it exceeds a few percent.
    * ``"gradcam"`` - Grad-CAM on ``model.spatial_layer`` (non-negative). Convolutional towers
      use the layer's output. Vision transformers use the layer's *input* (the tokens the last
      block attends over): CLS-pooled towers (CLIP, ViT) never read the last block's patch
      outputs, so their gradient there is exactly zero and an output-based map would be blank.
    * ``"occlusion"`` - :class:`captum.attr.Occlusion` with a square window repainted from a
      baseline image (signed: positive where hiding the region lowers the similarity).

Baselines (``BASELINES``; IG integrates from one, occlusion paints windows with it):
``"black"`` (all zeros), ``"mean"`` (the image's mean grey) and ``"blur"`` (the image blurred
with sigma S/16, which removes small signs but keeps the anatomy, so the window stays a
plausible radiograph).

Text attributions use :class:`captum.attr.LayerIntegratedGradients` on the token-embedding
layer; see :func:`attribute_text` for the baseline and the handling of special tokens.

Grad-CAM and text attributions hook the model's layers for the length of the call. Calls in
this module are serialised by a lock, but other code must not run the *same* model object in
another thread meanwhile (the hooks would see, or alter, its activations).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from explorer.errors import ExplorerError
from explorer.models.base import MODEL_LOCK, VisionLanguageModel, prepare_pixels
from explorer.models.spec import Preprocess
from explorer.progress import Progress

log = logging.getLogger(__name__)

#: Image attribution methods understood by :func:`attribute_image`.
IMAGE_METHODS = ("ig", "gradcam", "occlusion")
#: Named baselines of IG and occlusion (a float in [0, 1] or an image also works).
BASELINES = ("black", "mean", "blur")
#: The baseline each method uses when none is given.
DEFAULT_BASELINES = {"ig": "black", "occlusion": "black"}

#: Integration points. On phantom-negaware (160 px) the completeness gap |sum(attr) - (f(x) -
#: f(b))| / |f(x) - f(b)| with a black baseline was 2.6-5.7% at 32 points, 0.8-5% at 64, 0.02-0.8%
#: at 128 (0.85 s on 2 CPU cores) and <0.1% at 256, on a phantom and a real radiograph.
DEFAULT_STEPS = 128
DEFAULT_INTERNAL_BATCH_SIZE = 16
#: Gaussian quadrature, Captum's default: far smaller completeness residuals than Riemann sums.
IG_INTEGRATION = "gausslegendre"

ForwardFunc = Callable[[torch.Tensor], torch.Tensor]


class AttributionError(ExplorerError):
    """An attribution could not be computed (for instance the model produced NaNs)."""


@dataclass(frozen=True, eq=False)
class ImageAttribution:
    """A saliency map for one image and one prompt.

    Attributes:
        method: ``"ig"``, ``"gradcam"`` or ``"occlusion"``.
        prompt: The text whose similarity with the image is explained.
        attribution: Read-only float32 ``[H, W]`` map at the shape of the image the caller
            passed, resampled bilinearly from ``model_attribution`` (values per model pixel;
            regions the model never saw, such as a centre crop's cut-off sides, are 0).
        score: The explained similarity for the input image (cosine, times the logit scale
            when ``params["scaled"]``).
        baseline_score: The similarity for the integrated-gradients baseline image (IG only).
        params: What produced the map: ``steps``, ``internal_batch_size``, ``baseline``
            (a description), ``window``/``stride`` (occlusion, model-input pixels), ``layer``
            (Grad-CAM), ``input_size``, ``scaled``.
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
        return _relative(self.convergence_delta, self.score - self.baseline_score)


@dataclass(frozen=True, eq=False)
class TokenAttribution:
    """Per-token contributions to one image-text similarity.

    Attributes:
        prompt: The explained text.
        tokens: Readable tokens as returned by ``model.token_strings`` (padding removed,
            special tokens such as ``[CLS]``/``<start_of_text>`` kept).
        scores: One attribution per token, aligned with ``tokens``; they sum (up to
            ``convergence_delta``) to ``score - baseline_score``.
        special: Aligned flags, True for special tokens. Special tokens are kept unchanged in
            the baseline, so their score is exactly 0.
        method: ``"layer_ig"`` (integrated gradients on the token embeddings).
        params: ``steps``, ``internal_batch_size``, ``baseline_token_id``, ``special_tokens``
            (how special positions were found), ``scaled``.
        score: Similarity of the image with the prompt.
        baseline_score: Similarity of the image with the baseline token sequence.
        convergence_delta: ``sum(scores) - (score - baseline_score)``.
    """

    prompt: str
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    special: tuple[bool, ...]
    method: str
    params: dict[str, Any]
    score: float
    baseline_score: float
    convergence_delta: float

    @property
    def relative_delta(self) -> float:
        """``|convergence_delta| / |score - baseline_score|`` (see ImageAttribution)."""
        return _relative(self.convergence_delta, self.score - self.baseline_score)


def _relative(delta: float, gap: float) -> float:
    return abs(delta) / max(abs(gap), 1e-12)


# --- forward functions ------------------------------------------------------------------------


def model_input(model: VisionLanguageModel, pixels: np.ndarray) -> torch.Tensor:
    """Grayscale ``[H, W]`` image in [0, 1] -> ``[1, 1, S, S]`` at the model's input size.

    Resized, cropped or letterboxed exactly as the model's preprocessing does, but not
    normalised: values stay in [0, 1]. This is the tensor image attributions are taken against.
    """
    plain = replace(model.preprocess_cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return prepare_pixels(_as_image(pixels), plain)[:, :1].to(model.device)


def _as_image(pixels: np.ndarray) -> np.ndarray:
    """A writable float32 copy of one grayscale ``[H, W]`` image with finite values."""
    arr = np.array(pixels, dtype=np.float32, copy=True)
    if arr.ndim != 2:
        raise ValueError(f"expected one grayscale image [H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the image contains NaN or infinite values")
    return arr


def image_similarity_forward(
    model: VisionLanguageModel, text_embedding: torch.Tensor, scale: float = 1.0
) -> ForwardFunc:
    """A Captum ``forward_func``: ``[B, 1, S, S]`` gray images in [0, 1] -> ``[B]`` similarities.

    Args:
        model: The adapter.
        text_embedding: ``[1, D]`` (or ``[D]``) L2-normalised text embedding, computed once.
        scale: Multiplier of the cosine (1, or ``model.logit_scale``).
    """
    pre = model.preprocess_cfg
    text = text_embedding.reshape(1, -1).detach().to(model.device)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=model.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=model.device).view(1, 3, 1, 1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        # The same operations as prepare_pixels on an image already at the model's size.
        rgb = x.clamp(0.0, 1.0).expand(-1, 3, -1, -1)
        image = model.encode_image((rgb - mean) / std, normalize=True)
        return (image * text).sum(dim=-1) * scale

    return forward


def _text_embedding(model: VisionLanguageModel, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(model.tokenize([prompt]), normalize=True)


def _check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt must be a non-empty string")
    return prompt


# --- generic Captum helpers (usable with any forward function) ----------------------------


class _Counted:
    """Wrap a forward function to report progress by the number of samples evaluated."""

    def __init__(
        self, func: Callable[..., torch.Tensor], total: int, progress: Progress | None, msg: str
    ) -> None:
        self.func, self.total, self.progress, self.msg = func, max(1, total), progress, msg
        self.done = 0

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.func(x, *args)
        self.done += int(x.shape[0])
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total), self.msg)
        return out


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

    _check_counts(steps, internal_batch_size)
    counted = _Counted(forward_func, steps + 2, progress, "Integrated gradients")
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
        forward_func: ``[B, C, H, W] -> [B]``.
        x: The input, batch of one.
        window: Side of the square window in pixels (at most ``min(H, W)``).
        stride: Step between windows in pixels (1 to ``window``).
        baseline: Value painted into the window, or an image shaped like ``x`` whose pixels
            under the window are painted.
        batch_size: Occluded images evaluated per forward pass.
        progress: Optional ``callable(fraction, message)``.
    """
    from captum.attr import Occlusion

    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected a [1, C, H, W] input, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not 1 <= window <= min(h, w):
        raise ValueError(f"window must be between 1 and {min(h, w)} pixels, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    _check_counts(1, batch_size)
    positions = (math.ceil((h - window) / stride) + 1) * (math.ceil((w - window) / stride) + 1)
    counted = _Counted(forward_func, positions + 1, progress, "Occlusion")
    with torch.no_grad():
        attr = Occlusion(counted).attribute(
            x.detach(),
            sliding_window_shapes=(x.shape[1], window, window),
            strides=(1, stride, stride),
            baselines=baseline.detach() if isinstance(baseline, torch.Tensor) else baseline,
            perturbations_per_eval=batch_size,
        )
    return attr.detach()


def _check_counts(steps: int, batch: int) -> None:
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if int(batch) < 1:
        raise ValueError(f"internal_batch_size must be at least 1, got {batch}")


# --- Grad-CAM -----------------------------------------------------------------------------------


def grad_cam(
    model: VisionLanguageModel, forward_func: ForwardFunc, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Grad-CAM of ``forward_func`` at ``x`` on ``model.spatial_layer``.

    The layer's activation ``A`` is read as a ``[1, C, h, w]`` grid with ``to_grid`` (the
    layer's output for convolutional towers, its input for vision transformers; see the
    module docstring); the channel weights are the spatially averaged gradients of the
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


# --- mapping back to the caller's image ---------------------------------------------------


def to_image_space(
    model_map: torch.Tensor | np.ndarray, pre: Preprocess, shape: tuple[int, int]
) -> np.ndarray:
    """Resample an ``[S, S]`` model-input map onto an ``[H, W]`` image (bilinear).

    Undoes the geometry of :func:`prepare_pixels`: a centre crop (``"shortest"``) is pasted
    back into its place with zeros where the model saw nothing; a letterbox (``"pad"``) is
    cut away before resizing.
    """
    m = torch.as_tensor(np.asarray(model_map, dtype=np.float32))[None, None]
    size = pre.image_size
    h, w = int(shape[0]), int(shape[1])
    if m.shape[-2:] != (size, size):
        raise ValueError(f"expected a [{size}, {size}] map, got {tuple(m.shape[-2:])}")
    if (h, w) != (size, size):
        if pre.resize_mode == "shortest":
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            top, left = (nh - size) // 2, (nw - size) // 2
            canvas = torch.zeros(1, 1, nh, nw)
            canvas[..., top : top + size, left : left + size] = m
            m = canvas
        elif pre.resize_mode == "pad":
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            top, left = (size - nh) // 2, (size - nw) // 2
            m = m[..., top : top + nh, left : left + nw]
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return m[0, 0].numpy().astype(np.float32, copy=True)


# --- public entry points --------------------------------------------------------------------


@contextmanager
def _attribution_mode(model: VisionLanguageModel) -> Iterator[None]:
    """Eval mode for the call (restored afterwards), one attribution at a time."""
    module = model.module
    was_training = module.training
    with MODEL_LOCK:  # one attribution at a time, and no embedding meanwhile
        if was_training:
            module.eval()
        try:
            yield
        finally:
            if was_training:
                module.train()


def _baseline_image(
    baseline: str | float | np.ndarray, x: torch.Tensor, model: VisionLanguageModel, shape: tuple
) -> tuple[torch.Tensor, str]:
    if isinstance(baseline, str):
        if baseline == "black":
            return torch.zeros_like(x), "black (all zeros)"
        if baseline == "mean":
            value = float(x.mean())
            return torch.full_like(x, value), f"constant {value:.4f} (mean of the image)"
        if baseline == "blur":
            from scipy.ndimage import gaussian_filter

            sigma = max(1.0, x.shape[-1] / 16)
            blurred = gaussian_filter(x[0, 0].cpu().numpy(), sigma=sigma, mode="nearest")
            return (
                torch.as_tensor(blurred, dtype=x.dtype, device=x.device)[None, None],
                f"gaussian blur of the image (sigma {sigma:g} model pixels)",
            )
        raise ValueError(f"baseline must be one of {BASELINES}, a value or an image")
    if isinstance(baseline, numbers.Real):
        if not 0.0 <= float(baseline) <= 1.0:
            raise ValueError(f"a constant baseline must lie in [0, 1], got {baseline}")
        return torch.full_like(x, float(baseline)), f"constant {float(baseline):g}"
    arr = np.asarray(baseline, dtype=np.float32)
    if arr.shape != tuple(shape):
        raise ValueError(f"a baseline image must have the image's shape {shape}, got {arr.shape}")
    return model_input(model, arr), "custom image"


def _finite(value: torch.Tensor | np.ndarray | float, what: str) -> None:
    ok = (
        bool(torch.isfinite(value).all())
        if isinstance(value, torch.Tensor)
        else bool(np.isfinite(value).all())
    )
    if not ok:
        raise AttributionError(f"The {what} came out as NaN or infinite; no map was produced.")


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    arr.setflags(write=False)
    return arr


def attribute_image(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    prompt: str,
    method: str = "ig",
    *,
    steps: int = DEFAULT_STEPS,
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE,
    baseline: str | float | np.ndarray | None = None,
    window: int | None = None,
    stride: int | None = None,
    scaled: bool = False,
    progress: Progress | None = None,
) -> ImageAttribution:
    """Explain the similarity of ``pixels`` with ``prompt`` by a map over the image.

    Args:
        model: A loaded adapter.
        pixels: Grayscale ``[H, W]`` image with values in [0, 1].
        prompt: The text (its embedding is computed once, without gradients).
        method: ``"ig"``, ``"gradcam"`` or ``"occlusion"``.
        steps: IG integration points.
        internal_batch_size: Images per forward pass (IG points, occluded images).
        baseline: What IG integrates from and occlusion paints: ``"black"`` (zeros),
            ``"mean"`` (constant image mean), ``"blur"`` (Gaussian blur, sigma = S/16), a
            constant in [0, 1], or an image of the same shape as ``pixels``; None = the
            method's default (:data:`DEFAULT_BASELINES`). Grad-CAM has none.
        window: Occlusion window side in model-input pixels (default ``S // 8``).
        stride: Occlusion stride in model-input pixels (default ``S // 16``).
        scaled: Explain ``logit_scale * cosine`` instead of the cosine.
        progress: Optional ``callable(fraction, message)`` called as work advances.

    Returns:
        The :class:`ImageAttribution`.

    Raises:
        ValueError: Unknown method or baseline, bad sizes, or an image that is not 2-D.
        AttributionError: The model produced NaN or infinite values.
    """
    if method not in IMAGE_METHODS:
        raise ValueError(f"method must be one of {IMAGE_METHODS}, got {method!r}")
    _check_prompt(prompt)
    _check_counts(steps, internal_batch_size)
    shape = tuple(np.shape(pixels))
    start = time.perf_counter()
    with _attribution_mode(model):
        x = model_input(model, pixels)
        size = int(x.shape[-1])
        scale = float(model.logit_scale) if scaled else 1.0
        forward = image_similarity_forward(model, _text_embedding(model, prompt), scale)
        with torch.no_grad():
            score = float(forward(x)[0])
        _finite(score, "similarity")
        params: dict[str, Any] = {"input_size": size, "scaled": bool(scaled)}
        baseline_score = delta = None
        if progress is not None:
            progress(0.0, f"{method}: starting")
        if method != "gradcam":
            chosen = DEFAULT_BASELINES[method] if baseline is None else baseline
            base, description = _baseline_image(chosen, x, model, shape)
        if method == "ig":
            with torch.no_grad():
                baseline_score = float(forward(base)[0])
            attr, delta = integrated_gradients(
                forward,
                x,
                base,
                steps=steps,
                internal_batch_size=internal_batch_size,
                progress=progress,
            )
            model_map = attr[0, 0]
            params |= {
                "steps": int(steps),
                "internal_batch_size": int(internal_batch_size),
                "baseline": description,
                "integration": IG_INTEGRATION,
            }
        elif method == "gradcam":
            model_map, info = grad_cam(model, forward, x)
            params |= info
        else:
            window = max(1, size // 8) if window is None else int(window)
            stride = max(1, size // 16) if stride is None else int(stride)
            attr = occlusion(
                forward,
                x,
                window=window,
                stride=stride,
                baseline=base,
                batch_size=internal_batch_size,
                progress=progress,
            )
            model_map = attr[0, 0]
            params |= {
                "window": window,
                "stride": stride,
                "baseline": description,
                "internal_batch_size": int(internal_batch_size),
            }
    model_np = model_map.detach().float().cpu().numpy()
    _finite(model_np, f"{method} map")
    image_np = to_image_space(model_np, model.preprocess_cfg, shape)
    _finite(image_np, f"{method} map")
    if delta is not None:
        _finite(delta, "convergence delta")
    if progress is not None:
        progress(1.0, f"{method}: done")
    log.debug(
        "%s attribution of %r on %s: %.2f s",
        method,
        prompt,
        model.name,
        time.perf_counter() - start,
    )
    return ImageAttribution(
        method=method,
        prompt=prompt,
        attribution=_frozen(image_np),
        score=score,
        baseline_score=baseline_score,
        params=params,
        signed=method != "gradcam",
        convergence_delta=delta,
        model_attribution=_frozen(model_np),
    )


def attribute_pair(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    affirmed: str,
    negated: str,
    method: str = "ig",
    **kw: Any,
) -> tuple[ImageAttribution, ImageAttribution, np.ndarray]:
    """Maps for an affirmed and a negated prompt, and their difference (affirmed - negated).

    With IG and the same baseline the difference is itself the IG map of
    ``sim(affirmed) - sim(negated)`` (completeness holds for it too). Keyword arguments go to
    :func:`attribute_image`; a ``progress`` callback sees one continuous 0-1 range.
    """
    progress = kw.pop("progress", None)

    def part(offset: float) -> Progress | None:
        if progress is None:
            return None
        return lambda frac, msg: progress(offset + 0.5 * frac, msg)

    first = attribute_image(model, pixels, affirmed, method, progress=part(0.0), **kw)
    second = attribute_image(model, pixels, negated, method, progress=part(0.5), **kw)
    diff = (first.attribution - second.attribution).astype(np.float32)
    return first, second, diff


# --- text ---------------------------------------------------------------------------------------


def _tokenizer_specials(model: VisionLanguageModel) -> tuple[frozenset[int] | None, int | None]:
    """Special token ids and the unknown-token id, where the adapter's tokenizer tells them.

    Looks for a public ``special_token_ids`` on the adapter first, then at its tokenizer
    (``all_special_ids`` of transformers and open_clip tokenizers). The unknown token is not
    counted as special: it stands for a real word.
    """
    public = getattr(model, "special_token_ids", None)
    if public is not None:
        return frozenset(int(i) for i in public), None
    tokenizer = getattr(model, "_tokenizer", None)
    for tok in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        ids = getattr(tok, "all_special_ids", None)
        if ids:
            named = {
                getattr(tok, f"{role}_token_id", None)
                for role in ("bos", "eos", "cls", "sep", "pad", "sot", "eot")
            }
            unk = getattr(tok, "unk_token_id", None)
            # CLIP's unknown token *is* its end-of-text token: then it stays special.
            unk = int(unk) if isinstance(unk, int) and unk not in named else None
            return frozenset(int(i) for i in ids if i != unk), unk
    return None, None


def _special_positions(
    model: VisionLanguageModel, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, str, int | None]:
    real = mask.bool()
    specials, unk = _tokenizer_specials(model)
    if specials:
        found = torch.tensor(sorted(specials), device=ids.device)
        return torch.isin(ids, found) & real, "tokenizer special ids", unk
    where = real.nonzero().flatten()
    special = torch.zeros_like(real)
    if len(where):
        special[where[0]] = special[where[-1]] = True
    return special, "first and last real positions", unk


def attribute_text(
    model: VisionLanguageModel,
    pixels: np.ndarray,
    prompt: str,
    *,
    steps: int = DEFAULT_STEPS,
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE,
    baseline_token_id: int | None = None,
    scaled: bool = False,
    progress: Progress | None = None,
) -> TokenAttribution:
    """Explain the similarity of ``pixels`` with ``prompt`` token by token.

    Integrated gradients on the token-embedding layer (``model.token_embedding_layer``),
    summed over the embedding dimension. The baseline is the same sequence with every
    non-special real token replaced by ``baseline_token_id`` (default ``model.pad_token_id``);
    special tokens and padding are left as they are, so the sequence keeps its length, its
    attention mask and its pooling position.

    Special positions are those whose id is one of the tokenizer's special ids (``[CLS]``,
    ``[SEP]``, ``<start_of_text>``, ... but not ``[UNK]``); when the tokenizer does not say,
    the first and last real positions. If the padding id is itself one of the sequence's
    special tokens (OpenAI CLIP pads with its end-of-text token, which also marks the pooled
    position), the default baseline uses the unknown-token id, or else id 0, so that the
    baseline does not move the pooled position.

    Args:
        model: A loaded adapter.
        pixels: Grayscale ``[H, W]`` image in [0, 1] (embedded once, without gradients).
        prompt: The text to explain.
        steps: Integration points.
        internal_batch_size: Interpolated sequences per forward pass.
        baseline_token_id: Overrides the baseline token.
        scaled: Explain ``logit_scale * cosine`` instead of the cosine.
        progress: Optional ``callable(fraction, message)``.

    Returns:
        The :class:`TokenAttribution` (special tokens kept and flagged in ``special``).
    """
    from captum.attr import LayerIntegratedGradients

    _check_prompt(prompt)
    _check_counts(steps, internal_batch_size)
    start = time.perf_counter()
    with _attribution_mode(model):
        with torch.no_grad():
            image = model.encode_image(model.preprocess(_as_image(pixels)), normalize=True)
        scale = float(model.logit_scale) if scaled else 1.0
        tokens = model.tokenize([prompt])
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        special, rule, unk = _special_positions(model, ids[0], mask[0])
        if baseline_token_id is None:
            baseline_token_id = int(model.pad_token_id)
            kept = set(ids[0][special].tolist())
            if baseline_token_id in kept:
                baseline_token_id = unk if unk is not None and unk not in kept else 0
                log.info(
                    "the pad id is a special token here; the text baseline uses id %d",
                    baseline_token_id,
                )
        replace_at = mask[0].bool() & ~special
        baseline_ids = torch.where(replace_at, torch.full_like(ids[0], baseline_token_id), ids[0])
        baseline_ids = baseline_ids[None]

        def forward(input_ids: torch.Tensor) -> torch.Tensor:
            batch = {"input_ids": input_ids, "attention_mask": mask.expand(input_ids.shape[0], -1)}
            return (model.encode_text(batch, normalize=True) * image).sum(dim=-1) * scale

        with torch.no_grad():
            score = float(forward(ids)[0])
            baseline_score = float(forward(baseline_ids)[0])
        _finite(torch.tensor([score, baseline_score]), "similarity")
        counted = _Counted(forward, steps + 4, progress, "Token attributions")
        lig = LayerIntegratedGradients(counted, model.token_embedding_layer)
        with torch.inference_mode(False), torch.enable_grad():
            attr, delta = lig.attribute(
                ids,
                baselines=baseline_ids,
                n_steps=steps,
                method=IG_INTEGRATION,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
        per_position = attr.detach().float().sum(dim=-1)[0]
        _finite(per_position, "token attributions")
        delta_value = float(delta.reshape(-1)[0])
        _finite(delta_value, "convergence delta")
        real = mask[0].bool()
        strings = model.token_strings(tokens)[0]
        scores = per_position[real].cpu().tolist()
        flags = special[real].cpu().tolist()
        if len(strings) != len(scores):
            raise AttributionError(
                "The model's token strings do not line up with its token ids; no attribution."
            )
    if progress is not None:
        progress(1.0, "Token attributions: done")
    log.debug(
        "token attribution of %r on %s: %.2f s", prompt, model.name, time.perf_counter() - start
    )
    return TokenAttribution(
        prompt=prompt,
        tokens=tuple(strings),
        scores=tuple(float(s) for s in scores),
        special=tuple(bool(f) for f in flags),
        method="layer_ig",
        params={
            "steps": int(steps),
            "internal_batch_size": int(internal_batch_size),
            "baseline_token_id": int(baseline_token_id),
            "special_tokens": rule,
            "integration": IG_INTEGRATION,
            "scaled": bool(scaled),
        },
        score=score,
        baseline_score=baseline_score,
        convergence_delta=delta_value,
    )


# --- evaluation -------------------------------------------------------------------------------


def pointing_hit(attribution: np.ndarray, mask: np.ndarray, dilate_px: int = 3) -> bool:
    """The pointing game: does the map's maximum fall inside the (dilated) mask?

    Args:
        attribution: ``[H, W]`` map (signed maps: the most positive value counts).
        mask: Boolean ``[H, W]`` ground-truth region, same shape.
        dilate_px: Tolerance: the mask is grown by every pixel within this Euclidean distance.

    Returns:
        True on a hit. A constant map (no maximum to point with) or an empty mask is a miss;
        among tied maxima the first in row-major order counts.
    """
    attr = np.asarray(attribution, dtype=np.float64)
    region = np.asarray(mask, dtype=bool)
    if attr.ndim != 2 or attr.shape != region.shape:
        raise ValueError(
            f"attribution and mask must be 2-D arrays of one shape, got {attr.shape} and {region.shape}"
        )
    if not np.isfinite(attr).all():
        raise ValueError("the attribution contains NaN or infinite values")
    if dilate_px < 0:
        raise ValueError(f"dilate_px must be non-negative, got {dilate_px}")
    if not region.any() or attr.max() == attr.min():
        return False
    if dilate_px > 0:
        from scipy.ndimage import binary_dilation

        r = int(dilate_px)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        region = binary_dilation(region, structure=(yy**2 + xx**2) <= r * r)
    row, col = np.unravel_index(int(np.argmax(attr)), attr.shape)
    return bool(region[row, col])


__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "IMAGE_METHODS",
    "AttributionError",
    "ImageAttribution",
    "TokenAttribution",
    "attribute_image",
    "attribute_pair",
    "attribute_text",
    "grad_cam",
    "image_similarity_forward",
    "integrated_gradients",
    "model_input",
    "occlusion",
    "pointing_hit",
    "to_image_space",
]
