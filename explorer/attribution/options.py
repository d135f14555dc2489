"""Attribution methods and their options: the registry, without torch.

Each method has one small frozen options dataclass with its defaults and checks, and one
:class:`Method` entry in :data:`METHODS` (its options class, what it needs from the model, its
display name). Everything else is read from here: the lists :data:`IMAGE_METHODS`,
:data:`BASELINES` and :data:`DEFAULT_BASELINES`, and :func:`uses_baseline` (Grad-CAM has no
baseline because :class:`GradCAMOptions` has no ``baseline`` field; nothing else says so).

This module imports neither torch nor numpy at import time, so the command line can build its
parser from it cheaply.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

from explorer.errors import ExplorerError

#: Integration points. On phantom-negaware (160 px) the completeness gap |sum(attr) - (f(x) -
#: f(b))| / |f(x) - f(b)| with a black baseline was 2.6-5.7% at 32 points, 0.8-5% at 64, 0.02-0.8%
#: at 128 (0.85 s on 2 CPU cores) and <0.1% at 256, on a phantom and a real radiograph.
DEFAULT_STEPS = 128
DEFAULT_INTERNAL_BATCH_SIZE = 16
#: Gaussian quadrature, Captum's default: far smaller completeness residuals than Riemann sums.
IG_INTEGRATION = "gausslegendre"

#: Named image baselines of IG and occlusion (a float in [0, 1] or an image also works):
#: ``"black"`` (all zeros), ``"mean"`` (the image's mean grey), ``"blur"`` (the image blurred
#: with sigma S/16, which removes small signs but keeps the anatomy).
BASELINES = ("black", "mean", "blur")

#: A baseline: a name from :data:`BASELINES`, a constant in [0, 1], or an ``[H, W]`` image.
Baseline = Any


class AttributionOptionsError(ExplorerError, ValueError):
    """An attribution option has a value the method cannot use (the sentence names it)."""


def check_count(owner: str, name: str, value: object, low: int = 1) -> int:
    """Check that ``value`` is a whole number of at least ``low``; return it as an int.

    Raises:
        AttributionOptionsError: It is not, in a sentence naming ``owner`` and ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AttributionOptionsError(f"{owner} {name} must be a whole number, got {value!r}.")
    if int(value) < low:
        raise AttributionOptionsError(f"{owner} {name} must be at least {low}, got {value}.")
    return int(value)


def check_baseline(owner: str, baseline: Baseline) -> Baseline:
    """A named, constant or image baseline; its shape is checked against the image later."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise AttributionOptionsError(
                f"The {owner} baseline must be one of {', '.join(BASELINES)}, a value in [0, 1] "
                f"or an image, got {baseline!r}."
            )
    elif isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not 0.0 <= float(baseline) <= 1.0:
            raise AttributionOptionsError(
                f"A constant {owner} baseline must lie in [0, 1], got {baseline}."
            )
    elif baseline is None or not hasattr(baseline, "shape"):
        raise AttributionOptionsError(
            f"The {owner} baseline must be one of {', '.join(BASELINES)}, a value in [0, 1] "
            f"or an image, got {type(baseline).__name__}."
        )
    return baseline


@dataclass(frozen=True)
class IGOptions:
    """Integrated gradients over the image (Sundararajan et al., 2017).

    Attributes:
        steps: Integration points (Gauss-Legendre).
        internal_batch_size: Points evaluated per forward pass.
        baseline: What the path starts from (:data:`BASELINES`, a constant or an image).
    """

    steps: int = DEFAULT_STEPS
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE
    baseline: Baseline = "black"

    def __post_init__(self) -> None:
        check_count("Integrated gradients'", "steps", self.steps)
        check_count("Integrated gradients'", "internal_batch_size", self.internal_batch_size)
        check_baseline("integrated-gradients", self.baseline)


@dataclass(frozen=True)
class OcclusionOptions:
    """Occlusion with a square window repainted from a baseline (Zeiler & Fergus, 2014).

    Attributes:
        window: Window side in model-input pixels; None = ``S // 8`` for an ``S`` px input.
        stride: Step between windows in model-input pixels (1 to ``window``); None = ``S // 16``.
        baseline: What the window is painted with (:data:`BASELINES`, a constant or an image).
        batch: Occluded images evaluated per forward pass.
    """

    window: int | None = None
    stride: int | None = None
    baseline: Baseline = "black"
    batch: int = DEFAULT_INTERNAL_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.window is not None:
            check_count("The occlusion", "window", self.window)
        if self.stride is not None:
            check_count("The occlusion", "stride", self.stride)
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise AttributionOptionsError(
                f"The occlusion stride must be between 1 and the window ({self.window}), "
                f"got {self.stride}."
            )
        check_count("The occlusion", "batch", self.batch)
        check_baseline("occlusion", self.baseline)

    def resolved(self, size: int) -> tuple[int, int]:
        """``(window, stride)`` for a model input of ``size`` pixels (defaults filled in)."""
        window = max(1, size // 8) if self.window is None else self.window
        stride = max(1, size // 16) if self.stride is None else self.stride
        return window, stride


@dataclass(frozen=True)
class GradCAMOptions:
    """Grad-CAM on the model's spatial layer (Selvaraju et al., 2017): nothing to choose.

    No baseline, no steps: the map is one forward and one backward pass.
    """


@dataclass(frozen=True)
class TokenIGOptions:
    """Integrated gradients on the token embeddings (Captum's LayerIntegratedGradients).

    Attributes:
        steps: Integration points.
        internal_batch_size: Interpolated sequences per forward pass.
        baseline_token_id: The token that replaces every real word in the baseline sequence;
            None = the model's padding id (or a safe substitute, see ``attribute_text``).
    """

    steps: int = DEFAULT_STEPS
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH_SIZE
    baseline_token_id: int | None = None

    def __post_init__(self) -> None:
        check_count("Token attributions'", "steps", self.steps)
        check_count("Token attributions'", "internal_batch_size", self.internal_batch_size)
        if self.baseline_token_id is not None:
            check_count("Token attributions'", "baseline_token_id", self.baseline_token_id, 0)


@dataclass(frozen=True)
class AttentionOptions:
    """Gradient-weighted attention rollout (Chefer et al., 2021) on a transformer tower.

    Attributes:
        layers: How many of the tower's last attention layers are rolled out; None = all.
    """

    layers: int | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            check_count("Attention rollout's", "layers", self.layers)


@dataclass(frozen=True)
class CellOptions:
    """A cell-pooled model's own split of the similarity over its image cells: nothing to
    choose (one forward pass; :mod:`explorer.models.cell_pool`)."""


Options = (
    IGOptions | OcclusionOptions | GradCAMOptions | TokenIGOptions | AttentionOptions | CellOptions
)


@dataclass(frozen=True)
class Method:
    """One attribution method in the registry.

    Attributes:
        name: The key used by the API, the command line and the app (``"ig"``).
        display: A name for people (also the progress messages' label).
        options: Its options dataclass (defaults and checks).
        explains: ``"image"`` (a map over pixels) or ``"text"`` (a score per token).
        needs: What it needs from the model adapter.
        signed: Whether its maps have meaningful negative values.
    """

    name: str
    display: str
    options: type
    explains: str
    needs: tuple[str, ...]
    signed: bool

    @property
    def uses_baseline(self) -> bool:
        """Whether it takes an image baseline (its options have a ``baseline`` field)."""
        return any(f.name == "baseline" for f in fields(self.options))


def describe_params(params: dict) -> str:
    """A map's parameters in words for people (the full dict stays in the JSON output).

    ``{"input_size": 224, "steps": 128, "baseline": "black (all zeros)", ...}`` reads
    "on the 224-pixel image the model sees; 128 steps; baseline: black (all zeros)".
    Keys that only matter to a developer (batching, hooks, quadrature) are left out.
    """
    parts = []
    if "input_size" in params:
        parts.append(f"on the {params['input_size']}-pixel image the model sees")
    if "grid" in params:
        rows, cols = params["grid"]
        parts.append(f"a {rows} x {cols} grid of the last image layer")
    if "cells" in params:
        rows, cols = params["cells"]
        parts.append(
            f"the similarity split exactly over a {rows} x {cols} grid of image cells "
            "(the shares add up to it)"
        )
    if "patches" in params:
        rows, cols = params["patches"]
        parts.append(f"a {rows} x {cols} grid of image patches")
    if "layers" in params:
        parts.append(
            f"{params['layers']} attention layers rolled out from the "
            f"{_POOLED_WORDS.get(params.get('pooled', ''), 'pooled')} token, heads weighted by "
            "their gradients"
        )
    if "window" in params:
        parts.append(
            f"a {params['window']}-pixel square painted over the image, moved "
            f"{params.get('stride', params['window'])} pixels at a time"
        )
    if "steps" in params:
        parts.append(f"{params['steps']} steps")
    if "baseline" in params:
        parts.append(f"baseline: {params['baseline']}")
    return "; ".join(parts)


#: The token an attention map is read from, in words (:data:`explorer.models.base.POOLINGS`).
_POOLED_WORDS = {
    "first": "class",
    "last": "last",
    "last_real": "end-of-text",
    "mean": "average",
}

#: Every method, in the order pickers show them.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "ig",
            "Integrated gradients",
            IGOptions,
            "image",
            ("gradients to the input pixels",),
            True,
        ),
        Method(
            "gradcam",
            "Grad-CAM",
            GradCAMOptions,
            "image",
            ("model.spatial_layer", "gradients to that layer"),
            False,
        ),
        Method("occlusion", "Occlusion", OcclusionOptions, "image", ("forward passes only",), True),
        Method(
            "attention",
            "Attention rollout",
            AttentionOptions,
            "image",
            ("a transformer image tower", "attention probabilities and their gradients"),
            False,
        ),
        Method(
            "cells",
            "Cell shares",
            CellOptions,
            "image",
            ("a cell-pooled image tower", "its cells' embeddings and attention"),
            True,
        ),
        Method(
            "layer_ig",
            "Token attributions",
            TokenIGOptions,
            "text",
            ("model.token_embedding_layer", "gradients to the token embeddings"),
            True,
        ),
        Method(
            "text_attention",
            "Word attention rollout",
            AttentionOptions,
            "text",
            ("a transformer text tower", "attention probabilities and their gradients"),
            False,
        ),
    )
}
#: The text method shown beside each image method (the words' own attention beside an
#: attention map, token integrated gradients beside the others).
TEXT_METHOD_OF: dict[str, str] = {"attention": "text_attention"}

#: Image attribution methods understood by ``attribute_image``.
IMAGE_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.explains == "image")
#: The baseline each image method uses when none is given (only those that take one).
DEFAULT_BASELINES: dict[str, str] = {
    n: METHODS[n].options().baseline for n in IMAGE_METHODS if METHODS[n].uses_baseline
}


def method_info(name: str) -> Method:
    """The registry entry of ``name``.

    Raises:
        AttributionOptionsError: ``name`` is not a registered method.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise AttributionOptionsError(
            f"The attribution method must be one of {', '.join(METHODS)}, got {name!r}."
        ) from None


def image_method(name: str) -> Method:
    """The registry entry of an image method (``attribute_image``'s ``method``).

    Raises:
        AttributionOptionsError: ``name`` is not one of :data:`IMAGE_METHODS`.
    """
    if name not in IMAGE_METHODS:
        raise AttributionOptionsError(
            f"The image attribution method must be one of {', '.join(IMAGE_METHODS)}, got {name!r}."
        )
    return METHODS[name]


def uses_baseline(method: str) -> bool:
    """Whether ``method`` takes an image baseline (IG and occlusion do, Grad-CAM does not).

    Raises:
        AttributionOptionsError: ``method`` is not a registered method.
    """
    return method_info(method).uses_baseline


#: Options fields that ``attribute_image`` takes under another keyword.
_KEYWORD_OF = {"batch": "internal_batch_size"}


def image_options(
    name: str,
    *,
    steps: int | None = None,
    internal_batch_size: int | None = None,
    baseline: Baseline | None = None,
    window: int | None = None,
    stride: int | None = None,
    layers: int | None = None,
) -> Options:
    """The options of image method ``name`` from ``attribute_image``'s keyword arguments.

    None means "the method's default". Arguments a method does not take are ignored, as
    they always were (``steps`` for occlusion, a baseline for Grad-CAM); ``internal_batch_size``
    is IG's points and occlusion's ``batch`` per forward pass.
    """
    entry = image_method(name)
    keywords = {
        "steps": steps,
        "internal_batch_size": internal_batch_size,
        "baseline": baseline,
        "window": window,
        "stride": stride,
        "layers": layers,
    }
    chosen = {}
    for f in fields(entry.options):
        value = keywords.get(_KEYWORD_OF.get(f.name, f.name))
        if value is not None:
            chosen[f.name] = value
    return entry.options(**chosen)


def resolve_image_options(name: str, options: Options | None = None, **keywords: Any) -> Options:
    """The options of image method ``name``: ``options`` (checked to be the method's), or
    else those :func:`image_options` makes of ``keywords``; both at once is an error.

    Raises:
        AttributionOptionsError: Options of another method, or options given twice.
    """
    entry = image_method(name)
    if options is None:
        return image_options(name, **keywords)
    given = [key for key, value in keywords.items() if value is not None]
    if given:
        raise AttributionOptionsError(
            f"Give the {entry.display} options either as options= or as keyword "
            f"arguments, not both ({', '.join(given)} given as well)."
        )
    if not isinstance(options, entry.options):
        raise AttributionOptionsError(
            f"{entry.display} takes {entry.options.__name__}, got {type(options).__name__}."
        )
    return options


__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "DEFAULT_STEPS",
    "IG_INTEGRATION",
    "IMAGE_METHODS",
    "METHODS",
    "describe_params",
    "AttributionOptionsError",
    "GradCAMOptions",
    "IGOptions",
    "Method",
    "OcclusionOptions",
    "Options",
    "TokenIGOptions",
    "AttentionOptions",
    "CellOptions",
    "TEXT_METHOD_OF",
    "check_baseline",
    "check_count",
    "image_method",
    "image_options",
    "resolve_image_options",
    "method_info",
    "uses_baseline",
]
