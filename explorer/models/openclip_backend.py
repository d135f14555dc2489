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
    AttentionStack,
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

    @property
    def _hf_tokenizer(self):  # the transformers tokenizer inside open_clip's HFTokenizer
        return getattr(self._tokenizer, "tokenizer", None)

    @property
    def _masks_padding(self) -> bool:
        """Whether the text tower derives its attention mask from the padding id (open_clip's
        ``HFTextEncoder``, BiomedCLIP's PubMedBERT tower), so trailing padding changes nothing."""
        from open_clip.hf_model import HFTextEncoder

        return isinstance(getattr(self._model, "text", None), HFTextEncoder)

    @property
    def max_text_tokens(self) -> int:
        """The tokenizer's context length, never more than the text tower's positions."""
        limit = int(getattr(self._tokenizer, "context_length", 0) or 0)
        if self._masks_padding:
            positions = getattr(self._model.text.config, "max_position_embeddings", None)
        else:
            pos = getattr(self._model, "positional_embedding", None)
            if pos is None:
                pos = getattr(getattr(self._model, "text", None), "positional_embedding", None)
            positions = pos.shape[0] if pos is not None else None
        if positions:
            limit = min(limit, int(positions)) if limit else int(positions)
        return limit or 77

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids cut to :attr:`max_text_tokens`; padded to the longest text of the batch
        where the text tower masks padding (open_clip's HF tokenizer pads every text to the
        context length, 256 for BiomedCLIP; the trailing columns that are padding in every
        row are dropped, which leaves the embeddings as they were). open_clip's own text
        transformers add fixed position embeddings and a causal mask of the full context
        length, so their input keeps that length."""
        ids = self._tokenizer(list(texts), context_length=self.max_text_tokens).to(self.device)
        pad = self.pad_token_id
        if self._masks_padding and ids.shape[1] > 1:
            used = (ids != pad).any(dim=0).nonzero()
            length = int(used.max()) + 1 if len(used) else 1
            ids = ids[:, :length]
        return {"input_ids": ids, "attention_mask": (ids != pad).long()}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        hf = self._hf_tokenizer
        if hf is not None:
            enc = hf(list(texts), truncation=False, add_special_tokens=True, verbose=False)
            return [len(row) for row in enc["input_ids"]]
        encode = getattr(self._tokenizer, "encode", None)
        if encode is not None:  # open_clip's CLIP BPE: start and end tokens come on top
            return [len(encode(t)) + 2 for t in texts]
        return super().count_tokens(texts)

    def encode_text(self, tokens: TokenBatch, normalize: bool = True) -> torch.Tensor:
        return maybe_normalize(self._model.encode_text(tokens["input_ids"]), normalize)

    @property
    def pad_token_id(self) -> int:
        hf = self._hf_tokenizer
        if hf is not None and getattr(hf, "pad_token_id", None) is not None:
            return int(hf.pad_token_id)
        return 0

    @property
    def text_baseline_token_id(self) -> int:
        """``[MASK]`` (else ``[UNK]``) where the tower masks padding ids away (BiomedCLIP):
        a baseline of padding ids would be dropped by the mask in the baseline run while the
        integration path attends to it, and the attributions would not add up. ``[MASK]`` is
        what BERT read in place of a hidden word in pre-training."""
        hf = self._hf_tokenizer
        if self._masks_padding and hf is not None:
            for role in ("mask", "unk"):
                tid = getattr(hf, f"{role}_token_id", None)
                if isinstance(tid, int) and tid != self.pad_token_id:
                    return tid
        return self.pad_token_id

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

    def attention_stack(self, side: str) -> AttentionStack | None:
        """Image: a timm ViT trunk (BiomedCLIP), whose unfused attention passes its
        probabilities through ``attn_drop``; pooled by its class token, or by all patches for
        an average or attention-pooled trunk. Text: a transformers tower inside open_clip's
        ``HFTextEncoder`` (BiomedCLIP's PubMedBERT), pooled by ``[CLS]`` unless the encoder
        averages. open_clip's own towers call ``nn.MultiheadAttention`` without keeping the
        probabilities: None."""
        from explorer.models.hf_backend import _attention_modules, _transformer_blocks

        if side == "text":
            text = getattr(self._model, "text", None)
            if text is None or not self._masks_padding:
                return None
            pooled = "mean" if "Mean" in type(getattr(text, "pooler", None)).__name__ else "first"
            blocks = _transformer_blocks(text.transformer)
            return AttentionStack(_attention_modules(blocks), "output", pooled)
        trunk = getattr(self._model.visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "blocks"):
            return None
        modules = tuple(getattr(getattr(b, "attn", None), "attn_drop", None) for b in trunk.blocks)
        if any(m is None for m in modules):
            return None
        token = getattr(trunk, "global_pool", "token") == "token"
        return AttentionStack(
            modules,
            "input",
            "first" if token else "mean",
            int(getattr(trunk, "num_prefix_tokens", 1)),
        )

    @property
    def logit_scale(self) -> float:
        return float(self._model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self._model, "logit_bias", None)
        return float(bias.item()) if bias is not None else 0.0
