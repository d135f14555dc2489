"""open_clip adapter: built-in architectures, ``hf-hub:`` ids (e.g. BiomedCLIP) and local folders.

Sources understood:
    * ``hf-hub:org/repo`` - an open_clip model on the Hugging Face hub;
    * ``ARCH@TAG`` - a built-in architecture with a pretrained tag (``ViT-B-32@openai``);
    * a local folder holding ``open_clip_config.json`` and weights (open_clip's ``local-dir:``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from explorer.models.base import (
    SpatialLayer,
    TokenBatch,
    VisionLanguageModel,
    maybe_normalize,
)
from explorer.models.preprocess import Preprocess
from explorer.models.spec import ModelSpec, local_path

log = logging.getLogger(__name__)


def _resolve(source: str) -> tuple[str, str | None]:
    """Spec source -> (open_clip model name, pretrained tag or None)."""
    path = local_path(source)
    if path is not None:
        return f"local-dir:{path}", None
    if "@" in source and not source.startswith("hf-hub:"):
        arch, tag = source.split("@", 1)
        return arch, tag
    return source, None


class OpenClipModel(VisionLanguageModel):
    """Adapter around an ``open_clip`` CLIP / CustomTextCLIP model."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        import open_clip

        name, tag = _resolve(spec.source)
        model = open_clip.create_model(name, pretrained=tag, device=device)
        model.eval()
        self.spec = spec
        self.device = device
        self._model = model
        self._tokenizer = open_clip.get_tokenizer(name)
        self.preprocess_cfg = spec.preprocess or self._preprocess_from_model()

    def _preprocess_from_model(self) -> Preprocess:
        """What the loaded model's ``preprocess_cfg`` says (used when the spec states nothing)."""
        return Preprocess.from_open_clip(getattr(self._model.visual, "preprocess_cfg", {}) or {})

    @property
    def module(self) -> nn.Module:
        return self._model

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return maybe_normalize(self._model.encode_image(pixel_values), normalize)

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        ids = self._tokenizer(list(texts)).to(self.device)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}

    def encode_text(self, tokens: TokenBatch, normalize: bool = True) -> torch.Tensor:
        return maybe_normalize(self._model.encode_text(tokens["input_ids"]), normalize)

    @property
    def pad_token_id(self) -> int:
        hf = getattr(self._tokenizer, "tokenizer", None)
        if hf is not None and getattr(hf, "pad_token_id", None) is not None:
            return int(hf.pad_token_id)
        return 0

    def token_strings(self, tokens: TokenBatch) -> list[list[str]]:
        out = []
        hf = getattr(self._tokenizer, "tokenizer", None)
        for row, mask in zip(
            tokens["input_ids"].tolist(), tokens["attention_mask"].tolist(), strict=True
        ):
            ids = [i for i, m in zip(row, mask, strict=True) if m]
            if hf is not None:
                out.append(hf.convert_ids_to_tokens(ids))
            else:
                decoder = self._tokenizer.decoder
                out.append([decoder.get(i, "?") for i in ids])  # "</w>" ends a word
        return out

    @property
    def token_embedding_layer(self) -> nn.Module:
        model = self._model
        if hasattr(model, "token_embedding"):
            return model.token_embedding
        text = model.text
        if hasattr(text, "token_embedding"):
            return text.token_embedding
        return text.transformer.get_input_embeddings()

    @property
    def spatial_layer(self) -> SpatialLayer:
        visual = self._model.visual
        if hasattr(visual, "trunk"):  # timm tower (BiomedCLIP)
            trunk = visual.trunk
            if hasattr(trunk, "blocks"):
                return SpatialLayer(
                    trunk.blocks[-1], "vit", int(getattr(trunk, "num_prefix_tokens", 1))
                )
            return SpatialLayer(trunk.stages[-1], "conv")
        if hasattr(visual, "transformer"):
            prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
            return SpatialLayer(visual.transformer.resblocks[-1], "vit", prefix)
        if hasattr(visual, "layer4"):
            return SpatialLayer(visual.layer4, "conv")
        raise NotImplementedError(f"no spatial layer known for {type(visual).__name__}")

    @property
    def logit_scale(self) -> float:
        return float(self._model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self._model, "logit_bias", None)
        return float(bias.item()) if bias is not None else 0.0
