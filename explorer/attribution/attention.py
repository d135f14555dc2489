"""Attention maps for transformer towers: gradient-weighted attention rollout.

Chefer, Gur and Wolf (ICCV 2021), "Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers": for the similarity ``s`` being explained, each
layer's attention probabilities ``A`` (``[heads, N, N]``) are weighted by their gradient and
the heads averaged after keeping the positive part, ``Ā = mean_h (∇A ⊙ A)⁺``; the layers are
then rolled out from the identity, ``R ← R + Ā R``. Row ``R[p]`` of the token ``p`` the tower's
embedding is read from says how much every token fed it. On the image side the row's patch
entries, laid out on the patch grid and resized bilinearly to the model's input, are the map;
on the text side the row's entries are the tokens' scores.

The probabilities are read by hooks on the modules the adapter names
(:meth:`explorer.models.base.VisionLanguageModel.attention_stack`) while the model computes
attention eagerly (:func:`explorer.models.base.eager_attention`); their gradients come from one
backward pass. Maps are non-negative and have no completeness property: they rank tokens, they
do not add up to the similarity. A tower that is not a transformer (the embedded models' ConvNeXt
image tower) has no attention map; the error says so and names the methods that apply.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from explorer.attribution.core import ForwardFunc
from explorer.attribution.options import AttentionOptions, AttributionOptionsError
from explorer.models.base import AttentionStack, VisionLanguageModel, eager_attention

#: How the method is named where its parameters are stated.
RULE = "gradient-weighted attention rollout (Chefer et al., 2021): heads averaged over ReLU(grad x attention)"


def stack_of(model: VisionLanguageModel, side: str) -> AttentionStack:
    """The model's attention layers on ``side``.

    Raises:
        AttributionOptionsError: The tower has none (its sentence names the tower).
    """
    stack = model.attention_stack(side)
    if stack is None:
        raise AttributionOptionsError(model.attention_unavailable(side))
    return stack


@contextlib.contextmanager
def captured(model: VisionLanguageModel, stack: AttentionStack) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass appends each layer's attention probabilities
    (in depth order) to the yielded list."""
    found: list[torch.Tensor] = []

    def hook(_module, inputs, output) -> None:
        probs = inputs[0] if stack.read == "input" else output[1]
        if probs is None:
            raise AttributionOptionsError(
                f"{model.name} did not return its attention probabilities; no attention map."
            )
        found.append(probs)

    handles = [m.register_forward_hook(hook) for m in stack.modules]
    try:
        with eager_attention(model.module):
            yield found
    finally:
        for h in handles:
            h.remove()


def rollout(
    probs: list[torch.Tensor], grads: list[torch.Tensor], layers: int | None = None
) -> torch.Tensor:
    """``[N, N]`` relevance of the first item of a batch from per-layer probabilities and
    gradients (``[B, heads, N, N]`` each, depth order); ``layers`` = how many of the last
    layers to roll out (None = all)."""
    chosen = list(zip(probs, grads, strict=True))
    if layers is not None:
        chosen = chosen[-layers:]
    n = probs[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float32, device=probs[0].device)
    for a, g in chosen:
        cam = (g[0].float() * a[0].float()).clamp(min=0).mean(dim=0)
        relevance = relevance + cam @ relevance
    return relevance


def pooled_row(
    relevance: torch.Tensor, pooled: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The row of the token the tower's embedding is read from (``mask``: real tokens). For
    ``"mean"`` pooling, the average row without each token's identity share (which would add
    the same ``1/N`` to every token)."""
    if pooled == "first":
        return relevance[0]
    if pooled == "last":
        return relevance[-1]
    real = torch.ones(relevance.shape[0], dtype=torch.bool, device=relevance.device)
    if mask is not None:
        real = mask.bool()
    if pooled == "last_real":
        return relevance[int(real.nonzero().max())]
    eye = torch.eye(relevance.shape[0], dtype=relevance.dtype, device=relevance.device)
    return (relevance - eye)[real].mean(dim=0)


def _relevance(
    model: VisionLanguageModel,
    stack: AttentionStack,
    score_of: Callable[[], torch.Tensor],
    opts: AttentionOptions,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Run ``score_of()`` (one scalar similarity) with ``stack``'s probabilities captured, and
    roll them out: the detached score, the ``[N, N]`` relevance and the map's parameters."""
    with captured(model, stack) as probs, torch.inference_mode(False), torch.enable_grad():
        score = score_of()
        if len(probs) != len(stack.modules):
            raise AttributionOptionsError(
                f"{model.name} ran {len(probs)} of its {len(stack.modules)} attention layers "
                "in one pass; no attention map."
            )
        grads = torch.autograd.grad(score, probs)
    layers = len(probs) if opts.layers is None else min(opts.layers, len(probs))
    params = {"rule": RULE, "layers": layers, "pooled": stack.pooled}
    return score.detach(), rollout(probs, list(grads), layers), params


def image_rollout(
    model: VisionLanguageModel, forward: ForwardFunc, x: torch.Tensor, opts: AttentionOptions
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The ``[S, S]`` attention map of ``forward(x)[0]`` (``x``: ``[1, 1, S, S]``) and its
    parameters."""
    stack = stack_of(model, "image")
    probe = x.detach().clone().requires_grad_(True)
    _, relevance, params = _relevance(model, stack, lambda: forward(probe)[0], opts)
    row = pooled_row(relevance, stack.pooled)
    patches = row[stack.prefix_tokens :]
    side = math.isqrt(patches.numel())
    if side * side != patches.numel():
        raise AttributionOptionsError(
            f"{model.name}'s {patches.numel()} image tokens do not form a square grid; no "
            "attention map."
        )
    grid = patches.reshape(1, 1, side, side)
    size = int(x.shape[-1])
    model_map = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    return model_map[0, 0].detach(), params | {"patches": (side, side)}


def text_rollout(
    model: VisionLanguageModel,
    tokens: dict[str, torch.Tensor],
    image: torch.Tensor,
    scale: float,
    opts: AttentionOptions,
) -> tuple[float, torch.Tensor, dict[str, Any]]:
    """The similarity of the text ``tokens`` (one text) with the ``[1, D]`` image embedding, and
    each position's relevance (``[N]``, padding included)."""
    stack = stack_of(model, "text")

    def needs_grad(_module, _inputs, output):
        return output.requires_grad_(True) if not output.requires_grad else output

    def score_of() -> torch.Tensor:
        return (model.encode_text(tokens, normalize=True) * image).sum() * scale

    handle = model.token_embedding_layer.register_forward_hook(needs_grad)
    try:
        score, relevance, params = _relevance(model, stack, score_of, opts)
    finally:
        handle.remove()
    row = pooled_row(relevance, stack.pooled, tokens["attention_mask"][0])
    return float(score), row.detach(), params


__all__ = [
    "RULE",
    "captured",
    "image_rollout",
    "pooled_row",
    "rollout",
    "stack_of",
    "text_rollout",
]
