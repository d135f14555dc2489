"""Model adapters behind one interface, a backend registry, and specs as data.

Typical use::

    from explorer.models import load_model
    model = load_model("phantom-negaware")
    img = model.embed_image(pixels)            # [1, D], L2-normalised
    txt = model.embed_texts(["there is pleural effusion", "there is no pleural effusion"])

Nothing is loaded at import; models load on first use and are cached. Preprocessing (image ->
model input, and a model-input map back onto the image) has one home:
:mod:`explorer.models.preprocess`.
"""

from __future__ import annotations

import torch

from explorer.models.base import (
    SpatialLayer,
    TokenBatch,
    VisionLanguageModel,
    default_device,
)
from explorer.models.preprocess import Preprocess, prepare_pixels, to_image_space
from explorer.models.registry import (
    ModelRegistry,
    ModelStatus,
    backends,
    default_registry,
    hub_reachable,
    register_backend,
)
from explorer.models.spec import ModelSpec, load_specs


def list_models() -> tuple[str, ...]:
    """Names of the registered models, in config order."""
    return default_registry().names()


def model_status(name: str, check_hub: bool = True) -> ModelStatus:
    """Whether ``name`` can load here (no weights are loaded)."""
    return default_registry().status(name, check_hub=check_hub)


def load_model(
    name: str | None = None, device: torch.device | str | None = None
) -> VisionLanguageModel:
    """Load a registered model (the embedded default when ``name`` is None), cached."""
    reg = default_registry()
    return reg.load(name or reg.default, device)


__all__ = [
    "ModelRegistry",
    "ModelSpec",
    "ModelStatus",
    "Preprocess",
    "SpatialLayer",
    "TokenBatch",
    "VisionLanguageModel",
    "backends",
    "default_device",
    "default_registry",
    "hub_reachable",
    "list_models",
    "load_model",
    "load_specs",
    "model_status",
    "prepare_pixels",
    "register_backend",
    "to_image_space",
]
