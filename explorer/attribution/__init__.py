"""Which pixels and which words drive an image-text similarity: Captum wrappers.

The quantity explained is the cosine similarity between the image embedding and one prompt's
text embedding (optionally multiplied by the model's logit scale). It is exposed as a plain
``forward_func`` so that any Captum method applies to it.

Image attributions are computed with respect to the **grayscale image at the model's input
size** (one channel, values in [0, 1]; :func:`model_input`); the forward function repeats it to
three channels and normalises it with the model's mean and standard deviation, both steps
from :mod:`explorer.models.preprocess`, the one home of preprocessing. Maps therefore live in
image space: the baseline ``"black"`` (IG's and occlusion's default) is an all-zero image.
Each map is kept at model resolution (``model_attribution``) and mapped back onto the
caller's image (``attribution``) by :func:`to_image_space`: resized bilinearly, undoing the
model's centre crop or letterbox so that a map pixel lands on the image pixel it came from.

Methods (the registry :data:`METHODS`, each with its options dataclass):
    * ``"ig"`` (:class:`IGOptions`) - :class:`captum.attr.IntegratedGradients` (signed;
      completeness: ``model_attribution.sum() ~= score - baseline_score``, the residual is
      ``convergence_delta``). The path from a black image can cross sharp features of the
      network (a LayerNorm over nearly cancelling pooled features, say); check
      ``relative_delta`` and raise ``steps`` when it exceeds a few percent.
    * ``"gradcam"`` (:class:`GradCAMOptions`) - Grad-CAM on ``model.spatial_layer``
      (non-negative). Convolutional towers use the layer's output. Vision transformers use
      the layer's *input* (the tokens the last block attends over): CLS-pooled towers (CLIP,
      ViT) never read the last block's patch outputs, so their gradient there is exactly zero
      and an output-based map would be blank.
    * ``"occlusion"`` (:class:`OcclusionOptions`) - :class:`captum.attr.Occlusion` with a
      square window repainted from a baseline image (signed: positive where hiding the region
      lowers the similarity).
    * ``"attention"`` (:class:`AttentionOptions`) - gradient-weighted attention rollout on a
      transformer image tower (:mod:`~explorer.attribution.attention`; non-negative).
    * ``"cells"`` (:class:`CellOptions`) - a cell-pooled model's own split of the similarity
      over its image cells (:mod:`explorer.models.cell_pool`; signed; the shares add up to
      the similarity exactly).
    * ``"layer_ig"`` (:class:`TokenIGOptions`) - text attributions,
      :class:`captum.attr.LayerIntegratedGradients` on the token-embedding layer; see
      :func:`attribute_text` for the baseline and the handling of special tokens.

Baselines (:data:`BASELINES`; IG integrates from one, occlusion paints windows with it,
:func:`uses_baseline` says which methods take one): ``"black"`` (all zeros), ``"mean"`` (the
image's mean grey) and ``"blur"`` (the image blurred with sigma S/16, which removes small
signs but keeps the anatomy, so the window stays a plausible radiograph).

Layout: :mod:`~explorer.attribution.options` (the registry and options, torch-free),
:mod:`~explorer.attribution.image`, :mod:`~explorer.attribution.text`,
:mod:`~explorer.attribution.core` (the error, the lock, checks). Importing this package is
cheap: the registry names load at once, the rest (torch, Captum) on first use.

Grad-CAM and text attributions hook the model's layers for the length of the call. Calls in
this package are serialised by a lock, but other code must not run the *same* model object in
another thread meanwhile (the hooks would see, or alter, its activations).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from explorer.attribution.options import (
    BASELINES,
    DEFAULT_BASELINES,
    DEFAULT_INTERNAL_BATCH_SIZE,
    DEFAULT_STEPS,
    IG_INTEGRATION,
    IMAGE_METHODS,
    METHODS,
    AttentionOptions,
    AttributionOptionsError,
    CellOptions,
    GradCAMOptions,
    IGOptions,
    Method,
    OcclusionOptions,
    TokenIGOptions,
    describe_params,
    method_info,
    uses_baseline,
)

if TYPE_CHECKING:
    from explorer.attribution.core import AttributionError
    from explorer.attribution.image import (
        ImageAttribution,
        attribute_image,
        attribute_pair,
        grad_cam,
        image_similarity_forward,
        integrated_gradients,
        model_input,
        occlusion,
    )
    from explorer.attribution.text import TokenAttribution, attribute_text
    from explorer.models.preprocess import to_image_space

#: Public names that need torch, and the module each comes from (imported on first use).
_LAZY = {
    "AttributionError": "explorer.attribution.core",
    "ImageAttribution": "explorer.attribution.image",
    "attribute_image": "explorer.attribution.image",
    "attribute_pair": "explorer.attribution.image",
    "grad_cam": "explorer.attribution.image",
    "image_similarity_forward": "explorer.attribution.image",
    "integrated_gradients": "explorer.attribution.image",
    "model_input": "explorer.attribution.image",
    "occlusion": "explorer.attribution.image",
    "TokenAttribution": "explorer.attribution.text",
    "attribute_text": "explorer.attribution.text",
    "to_image_space": "explorer.models.preprocess",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "DEFAULT_STEPS",
    "IG_INTEGRATION",
    "IMAGE_METHODS",
    "METHODS",
    "describe_params",
    "AttentionOptions",
    "AttributionError",
    "AttributionOptionsError",
    "CellOptions",
    "GradCAMOptions",
    "IGOptions",
    "ImageAttribution",
    "Method",
    "OcclusionOptions",
    "TokenAttribution",
    "TokenIGOptions",
    "attribute_image",
    "attribute_pair",
    "attribute_text",
    "grad_cam",
    "image_similarity_forward",
    "integrated_gradients",
    "method_info",
    "model_input",
    "occlusion",
    "to_image_space",
    "uses_baseline",
]
