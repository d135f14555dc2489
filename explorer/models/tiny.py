"""Tiny, randomly initialised, seeded checkpoints of every backend, saved in standard formats.

Used by the tests (and handy for trying the app's plumbing without real weights): each builder
writes a folder that the real loading code reads exactly as it would read a downloaded model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from explorer.models.preprocess import Preprocess
from explorer.models.spec import ModelSpec

TINY_IMAGE_SIZE = 32
TINY_PREPROCESS = Preprocess(
    image_size=TINY_IMAGE_SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_mode="squash"
)

#: A small word list so word-level tokenizers cover typical prompts.
TINY_WORDS = [
    "there",
    "is",
    "no",
    "a",
    "an",
    "the",
    "of",
    "and",
    "or",
    "with",
    "without",
    "left",
    "right",
    "small",
    "large",
    "moderate",
    "mild",
    "pleural",
    "effusion",
    "pneumothorax",
    "cardiomegaly",
    "consolidation",
    "atelectasis",
    "edema",
    "opacity",
    "lung",
    "lungs",
    "heart",
    "size",
    "normal",
    "enlarged",
    "clear",
    "fracture",
    "nodule",
    "mass",
    "support",
    "devices",
    "tube",
    "line",
    "evidence",
    "finding",
    "findings",
    "acute",
    "present",
    "absent",
    ".",
    ",",
]


def _word_tokenizer(directory: Path, max_length: int = 32) -> None:
    """Save a word-level fast tokenizer (loadable by ``AutoTokenizer``) into ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(TINY_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=max_length,
        do_lower_case=True,
    )
    fast.save_pretrained(directory)


def _vocab_size() -> int:
    return 4 + len(dict.fromkeys(TINY_WORDS))


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """A transformers ``CLIPModel`` with a word-level tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    v = _vocab_size()
    config = CLIPConfig(
        text_config={
            "vocab_size": v,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "eos_token_id": 3,
            "pad_token_id": 0,
            "bos_token_id": 2,
        },
        vision_config={
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    _word_tokenizer(directory)
    return directory


def build_tiny_siglip(directory: Path, seed: int = 0) -> Path:
    """A transformers ``SiglipModel`` with a word-level tokenizer."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={
            "vocab_size": _vocab_size(),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
        },
        vision_config={
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
    )
    SiglipModel(config).save_pretrained(directory)
    _word_tokenizer(directory, max_length=16)
    return directory


def build_tiny_dual_encoder(directory: Path, seed: int = 0) -> Path:
    """A transformers ``VisionTextDualEncoderModel`` (ViT image tower + BERT text tower)."""
    from transformers import (
        BertConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
    )

    torch.manual_seed(seed)
    vision = ViTConfig(
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=3,
    )
    text = BertConfig(
        vocab_size=_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=16)
    VisionTextDualEncoderModel(config=config).save_pretrained(directory)
    _word_tokenizer(directory)
    return directory


def build_tiny_open_clip(directory: Path, seed: int = 0) -> Path:
    """An open_clip ``CLIP`` saved as a ``local-dir`` folder (config JSON + safetensors).

    The text tower uses open_clip's own BPE tokenizer, which ships inside the package.
    """
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": TINY_IMAGE_SIZE,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    }
    model = open_clip.CLIP(**model_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(TINY_PREPROCESS.mean), "std": list(TINY_PREPROCESS.std)},
    }
    (directory / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(directory / "open_clip_model.safetensors"),
    )
    return directory


#: Input side of the tiny ConvNeXt dual encoder: its two stages downsample by 8 in all.
TINY_CONVNEXT_SIZE = 64
TINY_CONVNEXT_NAME = "tiny-convnext-dual"


def build_tiny_convnext_dual(directory: Path, seed: int = 0) -> Path:
    """A transformers ``VisionTextDualEncoderModel`` with a ConvNeXt image tower.

    The shape of the embedded phantom models (ConvNeXt + BERT), small: a convolutional
    spatial layer for Grad-CAM, and a final LayerNorm over pooled features (which makes
    integrated gradients need many steps, as on the real model).
    """
    from transformers import (
        BertConfig,
        ConvNextConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    torch.manual_seed(seed)
    vision = ConvNextConfig(
        num_channels=3,
        patch_size=4,
        image_size=TINY_CONVNEXT_SIZE,
        num_stages=2,
        hidden_sizes=[8, 16],
        depths=[1, 1],
    )
    vision.hidden_size = 16  # the dual encoder sizes its projection from this
    text = BertConfig(
        vocab_size=_vocab_size(),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=8)
    VisionTextDualEncoderModel(config=config).save_pretrained(directory)
    _word_tokenizer(directory)
    return directory


def tiny_convnext_spec(root: Path, seed: int = 0) -> ModelSpec:
    """Write the tiny ConvNeXt dual encoder under ``root`` and return a spec for it."""
    folder = build_tiny_convnext_dual(Path(root) / TINY_CONVNEXT_NAME, seed=seed)
    return ModelSpec(
        name=TINY_CONVNEXT_NAME,
        backend="transformers",
        source=str(folder.resolve()),
        preprocess=Preprocess(
            TINY_CONVNEXT_SIZE, TINY_PREPROCESS.mean, TINY_PREPROCESS.std, "squash"
        ),
        description="tiny random ConvNeXt dual encoder for tests",
        card="Random weights: tests only.",
        tags=("tiny",),
    )


TINY_CELL_POOL_NAME = "tiny-cell-pool"


def tiny_cell_pool_spec(root: Path, seed: int = 0) -> ModelSpec:
    """The tiny ConvNeXt dual encoder with a random cell pool on its two stages (16 x 16 cells
    of 8 channels, an 8 x 8 grid of 16), written under ``root``; a spec for it."""
    from explorer.models.cell_pool import CellPool, CellPoolConfig

    base = tiny_convnext_spec(root, seed=seed)
    torch.manual_seed(seed + 1)
    folder = Path(root) / TINY_CELL_POOL_NAME
    CellPool(CellPoolConfig(base.source, fine_width=8, coarse_width=16, dim=8)).save(folder)
    return ModelSpec(
        name=TINY_CELL_POOL_NAME,
        backend="cell_pool",
        source=str(folder.resolve()),
        preprocess=base.preprocess,
        description="tiny random cell-pooled ConvNeXt dual encoder for tests",
        card="Random weights: tests only.",
        tags=("tiny",),
    )


#: backend name, builder, and a short label per tiny model (32 px inputs; the ConvNeXt dual
#: encoder above is apart: 64 px).
TINY_BUILDERS = {
    "tiny-open-clip": ("open_clip", build_tiny_open_clip),
    "tiny-clip": ("transformers", build_tiny_clip),
    "tiny-siglip": ("transformers", build_tiny_siglip),
    "tiny-dual-encoder": ("transformers", build_tiny_dual_encoder),
}


def build_tiny_specs(root: Path, seed: int = 0) -> tuple[ModelSpec, ...]:
    """Write every tiny checkpoint under ``root`` and return specs pointing at them."""
    specs = []
    for name, (backend, builder) in TINY_BUILDERS.items():
        folder = builder(Path(root) / name, seed=seed)
        specs.append(
            ModelSpec(
                name=name,
                backend=backend,
                source=str(folder.resolve()),
                preprocess=TINY_PREPROCESS,
                description=f"tiny random {name} for tests",
                card="Random weights: tests only.",
                tags=("tiny",),
            )
        )
    return tuple(specs)
