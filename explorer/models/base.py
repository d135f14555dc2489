"""The adapter protocol every model backend implements.

An adapter wraps one loaded dual encoder behind a small surface, in the spirit of open_clip:
``preprocess`` -> ``encode_image``; ``tokenize`` -> ``encode_text``; plus what attribution
needs (a token-embedding layer, a spatial image layer and a way to read its output as a grid,
and, for transformer towers, where their attention probabilities can be read).
Preprocessing itself (forward and inverse) lives in :mod:`explorer.models.preprocess`.
"""

from __future__ import annotations

import abc
import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explorer.models.preprocess import Preprocess, prepare_pixels
from explorer.models.spec import ModelSpec

TokenBatch = dict[str, torch.Tensor]


def default_device() -> torch.device:
    """CUDA when present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class SpatialLayer:
    """A layer whose output can be read as a spatial grid (for GradCAM-style maps).

    Attributes:
        module: The ``nn.Module`` to hook.
        kind: ``"vit"`` (output ``[B, N, C]`` tokens) or ``"conv"`` (output ``[B, C, H, W]``).
        prefix_tokens: Leading non-patch tokens (class, registers) to drop for ``"vit"``.
    """

    module: nn.Module
    kind: str
    prefix_tokens: int = 0

    def to_grid(self, output: torch.Tensor | tuple) -> torch.Tensor:
        """Turn the hooked layer's output into ``[B, C, h, w]``."""
        if isinstance(output, tuple):
            output = output[0]
        if self.kind == "conv":
            return output
        tokens = output[:, self.prefix_tokens :, :]
        n = tokens.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot reshape {n} patch tokens into a square grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


#: Which token a transformer tower's embedding is read from (:attr:`AttentionStack.pooled`).
POOLINGS = ("first", "last", "last_real", "mean")


@dataclass(frozen=True)
class AttentionStack:
    """Where a transformer tower's attention probabilities can be read (for attention maps).

    Attributes:
        modules: One module per transformer block, in depth order, that a forward hook reads
            the block's attention probabilities ``[B, heads, N, N]`` from.
        read: ``"output"``: the module returns ``(output, probabilities)`` (transformers'
            attention modules computed eagerly); ``"input"``: the probabilities are the
            module's first input (timm's ``attn_drop``).
        pooled: The token the tower's embedding is read from: ``"first"`` (a class token),
            ``"last"`` (the last position, padding included: SigLIP's text), ``"last_real"``
            (the last unpadded token: CLIP's end-of-text) or ``"mean"`` (every token, as an
            attention-pooling head reads them: SigLIP's image).
        prefix_tokens: Leading tokens that are not image patches (class, registers).
    """

    modules: tuple[nn.Module, ...]
    read: str
    pooled: str
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.read not in ("output", "input"):
            raise ValueError(f"read must be 'output' or 'input', not {self.read!r}")
        if self.pooled not in POOLINGS:
            raise ValueError(f"pooled must be one of {POOLINGS}, not {self.pooled!r}")


@contextlib.contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """Within the block, attention in ``module`` is computed step by step, so that its
    probabilities exist as tensors a hook can read: transformers configs use ``"eager"``
    attention and timm attention layers are not fused. Restored afterwards.
    """
    changed: list[tuple[object, str, object]] = []
    seen: set[int] = set()
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if (
            config is not None
            and id(config) not in seen
            and getattr(config, "_attn_implementation", "eager") != "eager"
        ):
            seen.add(id(config))
            changed.append((config, "_attn_implementation", config._attn_implementation))
        if getattr(sub, "fused_attn", False) is True:
            changed.append((sub, "fused_attn", True))
    try:
        for owner, name, _ in changed:
            setattr(owner, name, False if name == "fused_attn" else "eager")
        yield
    finally:
        for owner, name, value in reversed(changed):
            setattr(owner, name, value)


#: Held by an attribution for its whole call and by :meth:`VisionLanguageModel.embed_texts` /
#: :meth:`~VisionLanguageModel.embed_image`. Attributions hook model layers (Captum's
#: LayerIntegratedGradients records every call of the token-embedding layer, from any thread),
#: so a forward pass from another thread meanwhile (the server's warm-up, a second request)
#: would be recorded as the attribution's own activation. Re-entrant: an attribution embeds too.
MODEL_LOCK = threading.RLock()


class VisionLanguageModel(abc.ABC):
    """A loaded CLIP-style dual encoder behind one interface.

    Subclasses set ``self.spec``, ``self.device``, ``self.preprocess_cfg`` and implement the
    abstract members. Embeddings are returned L2-normalised unless ``normalize=False``.
    """

    spec: ModelSpec
    device: torch.device
    preprocess_cfg: Preprocess

    @property
    def name(self) -> str:
        return self.spec.name

    # --- images ---------------------------------------------------------------------------
    def preprocess(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Grayscale [0, 1] image(s) -> the model's normalised input on its device.

        Every backend uses this one transform (:func:`explorer.models.preprocess.prepare_pixels`
        with the model's ``preprocess_cfg``); a backend only decides that config.
        """
        return prepare_pixels(pixels, self.preprocess_cfg).to(self.device)

    @abc.abstractmethod
    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, 3, S, S]`` preprocessed images -> ``[B, D]`` embeddings."""

    # --- text -----------------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Texts -> a dict with at least ``input_ids`` (and ``attention_mask`` where used)."""

    @abc.abstractmethod
    def encode_text(self, tokens: TokenBatch, normalize: bool = True) -> torch.Tensor:
        """Tokenised texts -> ``[B, D]`` embeddings."""

    @abc.abstractmethod
    def token_strings(self, tokens: TokenBatch) -> list[list[str]]:
        """Readable tokens per text (padding removed), aligned with ``input_ids`` positions."""

    @property
    @abc.abstractmethod
    def pad_token_id(self) -> int:
        """The tokenizer's padding id."""

    @property
    def text_baseline_token_id(self) -> int:
        """A token id that stands for "no word" in text attributions and that the text tower
        attends to like any word (never masked away). The padding id unless a backend's text
        tower derives its attention mask from the padding id (then a baseline of padding ids
        would drop the words from the baseline run but not from the integration path)."""
        return self.pad_token_id

    # --- text length ----------------------------------------------------------------------
    @property
    def max_text_tokens(self) -> int | None:
        """The most tokens (special tokens included) a text keeps: :meth:`tokenize` cuts longer
        texts to this, which never exceeds the text tower's position embeddings. None when a
        backend cannot say."""
        return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before any cut (special tokens included)."""
        tokens = self.tokenize(list(texts))
        return [int(n) for n in tokens["attention_mask"].sum(dim=1).tolist()]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether :meth:`tokenize` cuts each text (so that callers can say so)."""
        limit = self.max_text_tokens
        if limit is None or not texts:
            return [False] * len(texts)
        return [n > limit for n in self.count_tokens(texts)]

    # --- attribution hooks ----------------------------------------------------------------
    @property
    @abc.abstractmethod
    def token_embedding_layer(self) -> nn.Module:
        """The text tower's token-embedding layer (for LayerIntegratedGradients)."""

    @property
    @abc.abstractmethod
    def spatial_layer(self) -> SpatialLayer:
        """The image tower's last spatial layer (for GradCAM-style maps)."""

    def attention_stack(self, side: str) -> AttentionStack | None:
        """The attention layers of the ``"image"`` or ``"text"`` tower, or None where that
        tower is not a transformer whose attention this adapter can read (a ConvNeXt image
        tower, say). Read under :func:`eager_attention`."""
        return None

    def attention_unavailable(self, side: str) -> str:
        """Why :meth:`attention_stack` is None for ``side``, in a sentence."""
        return (
            f"{self.name}'s {side} tower is not a transformer whose attention can be read, so "
            "it has no attention map; choose another method."
        )

    #: Whether the image embedding is a sum of cell embeddings whose shares of a similarity
    #: :meth:`cell_shares` returns (:mod:`explorer.models.cell_pool`).
    cell_pooled: bool = False

    def cell_shares(self, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Each image cell's share of the cosine similarity with each text embedding
        (``[B, T, g, g]``; they sum to the similarity). Only cell-pooled models have them.

        Raises:
            NotImplementedError: This model's image embedding is not a sum over cells.
        """
        raise NotImplementedError(self.cells_unavailable())

    def cells_unavailable(self) -> str:
        """Why this model has no cell shares, in a sentence."""
        return (
            f"{self.name}'s image embedding is pooled before it meets the text, so its "
            "similarity has no cell shares; only a cell-pooled model (phantom-cells) has them. "
            "Grad-CAM or occlusion show where this model looks."
        )

    # --- scores ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def logit_scale(self) -> float:
        """Temperature applied to cosine similarities (exp of the learned log-scale)."""

    @property
    def logit_bias(self) -> float:
        """Additive bias of sigmoid-loss models (SigLIP); 0 for softmax CLIP models."""
        return 0.0

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The underlying ``nn.Module`` (for ``.parameters()``, ``.to()``, hooks)."""

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Convenience: tokenise and encode without gradients (waits for a running attribution)."""
        with MODEL_LOCK, torch.no_grad():
            return self.encode_text(self.tokenize(list(texts)))

    def embed_image(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Convenience: preprocess and encode without gradients (waits for a running attribution)."""
        with MODEL_LOCK, torch.no_grad():
            return self.encode_image(self.preprocess(pixels))


def as_features(output: object) -> torch.Tensor:
    """Accept either a tensor or a transformers output with ``pooler_output``."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot read features from {type(output).__name__}")
    return pooled


def maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(x, dim=-1) if normalize else x
