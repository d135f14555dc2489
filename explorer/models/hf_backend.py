"""transformers adapter: CLIPModel, SiglipModel and VisionTextDualEncoderModel.

Sources are hub ids (``openai/clip-vit-base-patch32``) or local folders written by
``save_pretrained`` (config, weights and tokenizer files side by side).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from explorer.models.base import (
    AttentionStack,
    SpatialLayer,
    TokenBatch,
    VisionLanguageModel,
    as_features,
    maybe_normalize,
)
from explorer.models.preprocess import Preprocess
from explorer.models.spec import ModelSpec, local_path

log = logging.getLogger(__name__)

#: transformers ``model_type`` values this adapter accepts.
SUPPORTED_TYPES = ("clip", "siglip", "siglip2", "vision-text-dual-encoder")


class TransformersModel(VisionLanguageModel):
    """Adapter around a transformers dual encoder with ``get_image/text_features``."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = local_path(spec.source)
        source = str(path) if path is not None else spec.source
        config = AutoConfig.from_pretrained(source)
        if config.model_type not in SUPPORTED_TYPES:
            raise ValueError(
                f"model type '{config.model_type}' is not a supported dual encoder ({', '.join(SUPPORTED_TYPES)})"
            )
        # Checkpoints may be stored in half precision; compute in float32 (CPU-safe).
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
        model.to(device).eval()
        self.spec = spec
        self.device = device
        self._model = model
        self._type = config.model_type
        self._tokenizer = AutoTokenizer.from_pretrained(source)
        # SigLIP was trained with fixed-length padding (and no attention mask), so its padding
        # changes the embedding; the others pad to the longest text of the batch.
        self._padding = "max_length" if self._type.startswith("siglip") else "longest"
        self._max_length = _text_limit(self._tokenizer, _text_config(model))
        self.preprocess_cfg = spec.preprocess or self._preprocess_from_processor(source)

    @staticmethod
    def _preprocess_from_processor(source: str) -> Preprocess:
        """What the checkpoint's image processor says (used when the spec states nothing)."""
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source)
        return Preprocess.from_image_processor(
            {
                "size": _plain_size(proc.size),
                "image_mean": proc.image_mean,
                "image_std": proc.image_std,
            }
        )

    @property
    def max_text_tokens(self) -> int:
        """The tokenizer's ``model_max_length``, never more than the text tower's positions."""
        return self._max_length

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        enc = self._tokenizer(list(texts), truncation=False, verbose=False)
        return [len(row) for row in enc["input_ids"]]

    @property
    def module(self) -> nn.Module:
        return self._model

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = as_features(self._model.get_image_features(pixel_values=pixel_values))
        return maybe_normalize(feats, normalize)

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        enc = self._tokenizer(
            list(texts),
            padding=self._padding,
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"].to(self.device)
        mask = enc.get("attention_mask")
        mask = mask.to(self.device) if mask is not None else (ids != self.pad_token_id).long()
        return {"input_ids": ids, "attention_mask": mask}

    def encode_text(self, tokens: TokenBatch, normalize: bool = True) -> torch.Tensor:
        kwargs = {"input_ids": tokens["input_ids"]}
        if not self._type.startswith("siglip"):  # SigLIP was trained without an attention mask
            kwargs["attention_mask"] = tokens["attention_mask"]
        return maybe_normalize(as_features(self._model.get_text_features(**kwargs)), normalize)

    @property
    def pad_token_id(self) -> int:
        pad = self._tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def token_strings(self, tokens: TokenBatch) -> list[list[str]]:
        out = []
        for row, mask in zip(
            tokens["input_ids"].tolist(), tokens["attention_mask"].tolist(), strict=True
        ):
            ids = [i for i, m in zip(row, mask, strict=True) if m]
            out.append(self._tokenizer.convert_ids_to_tokens(ids))
        return out

    @property
    def token_embedding_layer(self) -> nn.Module:
        return self._model.text_model.get_input_embeddings()

    @property
    def spatial_layer(self) -> SpatialLayer:
        vision = self._model.vision_model
        stages = getattr(getattr(vision, "encoder", None), "stages", None)
        if stages is not None:  # convolutional tower (ConvNeXt, ResNet): last stage's feature map
            return SpatialLayer(stages[-1], "conv")
        layers = _transformer_blocks(vision)
        # CLIP/ViT vision towers prepend a class token; SigLIP has none.
        prefix = 0 if self._type.startswith("siglip") else 1
        return SpatialLayer(layers[-1], "vit", prefix)

    def attention_stack(self, side: str) -> AttentionStack | None:
        """transformers attention modules (``self_attn``, BERT's ``attention.self``) return
        ``(output, probabilities)`` when computed eagerly. Text: CLIP pools its end-of-text
        token, SigLIP its last position, a BERT tower (the embedded models) its ``[CLS]``.
        Image: CLIP and ViT pool their class token, SigLIP all patches (attention pooling);
        a convolutional tower has no attention."""
        siglip = self._type.startswith("siglip")
        try:
            if side == "text":
                pooled = "last" if siglip else "last_real" if self._type == "clip" else "first"
                blocks = _transformer_blocks(self._model.text_model)
                return AttentionStack(_attention_modules(blocks), "output", pooled)
            vision = self._model.vision_model
            if getattr(getattr(vision, "encoder", None), "stages", None) is not None:
                return None
            modules = _attention_modules(_transformer_blocks(vision))
        except NotImplementedError:  # an architecture whose attention this adapter cannot find
            return None
        return AttentionStack(modules, "output", "mean" if siglip else "first", 0 if siglip else 1)

    def attention_unavailable(self, side: str) -> str:
        if side == "image":
            return (
                f"{self.name}'s image tower is convolutional (no attention to read), so it has "
                "no attention map; Grad-CAM or occlusion show where it looks. Its text tower's "
                "attention is shown beside the words."
            )
        return super().attention_unavailable(side)

    @property
    def logit_scale(self) -> float:
        return float(self._model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self._model, "logit_bias", None)
        return float(bias.item()) if bias is not None else 0.0


#: Tokenizers without a ``model_max_length`` report this huge default (transformers'
#: ``VERY_LARGE_INTEGER`` is 1e30); anything above it is "not stated".
_UNSTATED_LENGTH = 1_000_000


def _text_config(model: nn.Module) -> object:
    config = model.config
    return getattr(config, "text_config", None) or config


def _text_limit(tokenizer: object, text_config: object) -> int:
    """The most tokens a text may keep: the tokenizer's ``model_max_length`` where it states
    one, never more than the text tower's ``max_position_embeddings`` (a CLIP tokenizer config
    without ``model_max_length`` would otherwise let 318 tokens reach 77 position embeddings)."""
    stated = getattr(tokenizer, "model_max_length", None)
    stated = (
        int(stated) if isinstance(stated, (int, float)) and 0 < stated < _UNSTATED_LENGTH else None
    )
    positions = getattr(text_config, "max_position_embeddings", None)
    positions = int(positions) if isinstance(positions, int) and positions > 0 else None
    limits = [n for n in (stated, positions) if n is not None]
    return min(limits) if limits else 512


def _plain_size(size: object) -> object:
    """An image processor's ``size`` as a plain dict or int.

    transformers 5 holds it in a ``SizeDict`` (a dataclass, not a mapping, whose unset sides
    are None); earlier versions in a dict.
    """
    if isinstance(size, (Mapping, int)):
        return size
    if dataclasses.is_dataclass(size) and not isinstance(size, type):
        return {k: v for k, v in dataclasses.asdict(size).items() if v is not None}
    to_dict = getattr(size, "to_dict", None)
    if callable(to_dict):
        return {k: v for k, v in to_dict().items() if v is not None}
    raise TypeError(f"cannot read an image size from {type(size).__name__}")


#: The names transformers gives a block's attention module (CLIP, SigLIP: ``self_attn``; BERT
#: and its kin: ``attention.self``; ViT: ``attention.attention``).
_ATTENTION_NAMES = ("self_attn", "attention.self", "attention.attention")


def _attention_modules(blocks: nn.ModuleList) -> tuple[nn.Module, ...]:
    """Each block's attention module (the one that returns the probabilities)."""
    found = []
    for block in blocks:
        named = dict(block.named_modules())
        module = next((named[n] for n in _ATTENTION_NAMES if n in named), None)
        if module is None:
            raise NotImplementedError(f"no attention module in {type(block).__name__}")
        found.append(module)
    return tuple(found)


def _transformer_blocks(module: nn.Module) -> nn.ModuleList:
    """The main stack of transformer blocks (``encoder.layers``, ``encoder.layer`` or ``layers``).

    transformers has moved this list between versions, so look for the shallowest
    ``ModuleList`` named ``layers`` or ``layer`` instead of hard-coding one path.
    """
    best: tuple[int, nn.ModuleList] | None = None
    for name, child in module.named_modules():
        if (
            isinstance(child, nn.ModuleList)
            and name.split(".")[-1] in ("layers", "layer")
            and len(child)
        ):
            depth = name.count(".")
            if best is None or depth < best[0]:
                best = (depth, child)
    if best is None:
        raise NotImplementedError(f"no transformer blocks found in {type(module).__name__}")
    return best[1]
