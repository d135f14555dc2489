"""Replicas of the registered hub models: their exact on-disk layout, random weights.

The hub models (BiomedCLIP, OpenAI CLIP, PubMedCLIP, SigLIP) cannot be downloaded where the
tests run. Each builder here writes a folder in its hub repo's own format (an open_clip folder
whose text tower and tokenizer come from a second BERT repo; transformers folders with their
tokenizer and image-processor files), with seeded random weights, either small
(``size="tiny"``, the same structure at a small depth and width, for tests) or at the real
size (``size="full"``, for timings). :func:`write_hub_cache` lays them out as an offline
Hugging Face cache (``models--ORG--NAME/snapshots/<commit>/...`` and ``refs/main``), and
:func:`offline_hub` points this process at it, so that the registry loads them through the
very code path it uses for the real downloads (``hf-hub:`` ids and plain repo ids).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from explorer.models.spec import ModelSpec, load_specs
from explorer.models.tiny import TINY_WORDS

SIZES = ("tiny", "full")

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
CLIP_REPO = "openai/clip-vit-base-patch32"
PUBMEDCLIP_REPO = "flaviagiammarino/pubmed-clip-vit-base-patch32"
SIGLIP_REPO = "google/siglip-base-patch16-224"
MEDSIGLIP_REPO = "google/medsiglip-448"

#: The timm trunk of the tiny BiomedCLIP replica: timm's own small test ViT (patch 16, one
#: class token, 160 px input), since open_clip passes no size arguments to timm.
TINY_TIMM_VIT = "test_vit"
TINY_TIMM_SIZE = 160

#: Words the replica tokenizers are built from (report language), beyond the tiny list.
REPLICA_WORDS = (
    *TINY_WORDS,
    "silhouette",
    "mediastinal",
    "contour",
    "contours",
    "within",
    "limits",
    "limit",
    "focal",
    "airspace",
    "disease",
    "visualized",
    "osseous",
    "structures",
    "intact",
    "degenerative",
    "changes",
    "spine",
    "thoracic",
    "chest",
    "radiograph",
    "frontal",
    "lateral",
    "views",
    "view",
    "comparison",
    "prior",
    "exam",
    "stable",
    "unchanged",
    "interval",
    "increase",
    "decrease",
    "bibasilar",
    "basilar",
    "opacities",
    "scarring",
    "granuloma",
    "calcified",
    "hyperinflated",
    "emphysema",
    "copd",
    "infiltrate",
    "pneumonia",
    "vascular",
    "congestion",
    "hilar",
    "aorta",
    "tortuous",
    "sternotomy",
    "wires",
    "pacemaker",
    "catheter",
    "tip",
    "projects",
    "over",
    "upper",
    "lower",
    "lobe",
    "lobes",
    "base",
    "bases",
    "apex",
    "costophrenic",
    "angle",
    "angles",
    "blunting",
    "trace",
    "bilateral",
    "unremarkable",
    "impression",
    "xxxx",
    "are",
    "be",
    "not",
    "seen",
    "identified",
    "may",
    "represent",
    "likely",
    "possible",
    "minimal",
    "patient",
    "rotated",
    "technique",
    "heart",
    "cardiac",
    "pulmonary",
    "vasculature",
    "free",
    "air",
    "diaphragm",
    "subsegmental",
    "streaky",
    "1",
    "2",
    "3",
    "cm",
    ";",
    ":",
    "-",
    "/",
    "(",
    ")",
)

#: Sentences to train the SentencePiece model on (word order does not matter to a tokenizer).
_SENTENCE_LENGTH = 12


def replica_corpus(words: Sequence[str] = REPLICA_WORDS, repeats: int = 6) -> list[str]:
    """Deterministic report-like sentences made of ``words`` (every word appears ``repeats``
    times, in shifting company)."""
    words = [w for w in dict.fromkeys(words) if w.strip()]
    out = []
    for r in range(repeats):
        shifted = words[r * 7 % len(words) :] + words[: r * 7 % len(words)]
        for k in range(0, len(shifted), _SENTENCE_LENGTH):
            out.append(" ".join(shifted[k : k + _SENTENCE_LENGTH]))
    return out


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


def _save_torch_bin(state: dict[str, torch.Tensor], path: Path) -> None:
    torch.save({k: v.contiguous() for k, v in state.items()}, path)


# --- tokenizers ------------------------------------------------------------------------------

#: BiomedBERT's special tokens and their ids (its vocab.txt starts with them).
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_wordpiece_vocab(directory: Path, words: Iterable[str] = REPLICA_WORDS) -> Path:
    """A BERT ``vocab.txt`` (specials, single characters and their ``##`` pieces, then whole
    words), so that every lower-case ASCII text tokenizes without ``[UNK]``."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    pieces = [f"##{c}" for c in chars if c.isalnum()]
    entries = [*BERT_SPECIALS, *chars, *pieces, *(w.lower() for w in words)]
    vocab = list(dict.fromkeys(entries))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's byte-level BPE vocabulary and merges (49,408 entries), rebuilt from the
    merge list that ships inside open_clip, as CLIP defines its vocabulary."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    entries = [*byte_chars, *(c + "</w>" for c in byte_chars)]
    entries += ["".join(m) for m in merges]
    entries += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(entries)}, merges


def write_clip_tokenizer(directory: Path, max_length: int | None = 77) -> None:
    """CLIP's tokenizer files (``vocab.json``, ``merges.txt``, ``tokenizer.json``, configs).

    ``max_length=None`` leaves ``model_max_length`` out of ``tokenizer_config.json``, as some
    fine-tuned CLIP repos do.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length or 77)
    tok.save_pretrained(directory)
    # The hub repo also carries the slow tokenizer's files (transformers 5 writes only
    # tokenizer.json): the vocabulary and the merge list.
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if max_length is None:
        path = directory / "tokenizer_config.json"
        cfg = json.loads(path.read_text(encoding="utf-8"))
        cfg.pop("model_max_length", None)
        path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def write_sentencepiece_tokenizer(directory: Path, corpus: Sequence[str] | None = None) -> None:
    """SigLIP's tokenizer: a SentencePiece ``spiece.model`` (pad 0, ``</s>`` 1, ``<unk>`` 2, as
    in ``google/siglip-*``) trained here on ``corpus``, saved by ``SiglipTokenizer``."""
    import io

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus or replica_corpus()),
        model_writer=model,
        vocab_size=400,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    spiece = directory / "spiece.model"
    spiece.write_bytes(model.getvalue())
    SiglipTokenizer(vocab_file=str(spiece), model_max_length=64).save_pretrained(directory)


def _write_image_processor(directory: Path, kind: str, image_size: int) -> None:
    if kind == "clip":
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
    else:
        from transformers import SiglipImageProcessor

        proc = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    proc.save_pretrained(directory)


# --- models ----------------------------------------------------------------------------------


def _tiny_text(**extra: object) -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        **extra,
    }


def build_clip_replica(
    directory: Path,
    size: str = "tiny",
    seed: int = 0,
    max_length: int | None = 77,
) -> Path:
    """``openai/clip-vit-base-patch32`` (and PubMedCLIP, its fine-tune): a transformers
    ``CLIPModel`` folder with CLIP's BPE tokenizer and image-processor files.

    Full size is transformers' default CLIP config, which is ViT-B/32; tiny keeps the 224 px
    input, the 32 px patches, the 77 positions and the whole vocabulary, at width 32, depth 2.
    """
    from transformers import CLIPConfig, CLIPModel

    _check_size(size)
    torch.manual_seed(seed)
    directory = Path(directory)
    if size == "full":
        config = CLIPConfig()
    else:
        config = CLIPConfig(
            text_config=_tiny_text(),
            vision_config=_tiny_text(image_size=224, patch_size=32),
            projection_dim=16,
        )
    CLIPModel(config).save_pretrained(directory)
    write_clip_tokenizer(directory, max_length=max_length)
    _write_image_processor(directory, "clip", 224)
    return directory


def build_siglip_replica(
    directory: Path, size: str = "tiny", seed: int = 0, medsiglip: bool = False
) -> Path:
    """``google/siglip-base-patch16-224``: a transformers ``SiglipModel`` folder with a
    SentencePiece tokenizer (``spiece.model``) and its image-processor file.

    Full size is transformers' default SigLIP config (base, patch 16, 224 px, 64 positions,
    32,000 ids); tiny keeps the input, the patches and the positions at width 32, depth 2.

    ``medsiglip``: ``google/medsiglip-448`` as its card describes it (a 400M-parameter vision
    encoder and a 400M-parameter text encoder, 448 x 448 images, up to 64 text tokens): the
    SigLIP "so400m" shape (width 1152, 27 layers, 16 heads, MLP 4304, patch 14) at 448 px. Its
    hub config could not be read here, so this is the card's model, not a copy of its file;
    tiny keeps 448 px and patch 14 at width 32, depth 2.
    """
    from transformers import SiglipConfig, SiglipModel

    _check_size(size)
    torch.manual_seed(seed)
    directory = Path(directory)
    px, patch = (448, 14) if medsiglip else (224, 16)
    if size == "full" and medsiglip:
        so400m = {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
        }
        config = SiglipConfig(
            text_config={**so400m, "max_position_embeddings": 64},
            vision_config={**so400m, "image_size": px, "patch_size": patch},
        )
    elif size == "full":
        config = SiglipConfig()
    else:
        config = SiglipConfig(
            text_config=_tiny_text(vocab_size=512, max_position_embeddings=64),
            vision_config=_tiny_text(image_size=px, patch_size=patch),
        )
    SiglipModel(config).save_pretrained(directory)
    write_sentencepiece_tokenizer(directory)
    _write_image_processor(directory, "siglip", px)
    return directory


def build_biomedbert_replica(
    directory: Path, size: str = "tiny", seed: int = 0, words: Iterable[str] | None = None
) -> Path:
    """``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``: BERT's ``config.json``,
    ``vocab.txt`` and weights (``pytorch_model.bin``), nothing else, as on the hub; open_clip
    reads its config and tokenizer from here when it builds BiomedCLIP's text tower.

    ``words`` (default :data:`REPLICA_WORDS`) become whole-word vocabulary entries; give a
    corpus's words for realistic token counts (BiomedBERT's vocabulary has most report words).
    """
    from transformers import BertConfig, BertModel

    _check_size(size)
    torch.manual_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if size == "full":
        config = BertConfig(vocab_size=30522)
    else:
        config = BertConfig(vocab_size=30522, max_position_embeddings=512, **_tiny_text())
    config.pad_token_id = 0
    model = BertModel(config)
    config.to_json_file(directory / "config.json")
    _save_torch_bin(model.state_dict(), directory / "pytorch_model.bin")
    write_wordpiece_vocab(directory, REPLICA_WORDS if words is None else words)
    return directory


def biomedclip_config(size: str = "tiny", bert_repo: str = BIOMEDBERT_REPO) -> dict:
    """BiomedCLIP's ``open_clip_config.json``: a timm ViT-B/16 and the BERT repo's text tower."""
    _check_size(size)
    full = size == "full"
    return {
        "model_cfg": {
            "embed_dim": 512 if full else 16,
            "vision_cfg": {
                "timm_model_name": "vit_base_patch16_224" if full else TINY_TIMM_VIT,
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 224 if full else TINY_TIMM_SIZE,
            },
            "text_cfg": {
                "hf_model_name": bert_repo,
                "hf_tokenizer_name": bert_repo,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 256,
            },
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }


def build_biomedclip_replica(
    directory: Path,
    bert_directory: Path,
    size: str = "tiny",
    seed: int = 0,
    words: Iterable[str] | None = None,
) -> Path:
    """BiomedCLIP in its two hub repos: ``directory`` gets ``open_clip_config.json`` and
    ``open_clip_pytorch_model.bin``; ``bert_directory`` the BERT repo
    (:func:`build_biomedbert_replica`). The open_clip config names the BERT repo by hub id,
    so the model only loads where that id resolves (the hub, or a cache holding both)."""
    import open_clip
    from transformers import AutoConfig

    _check_size(size)
    directory, bert_directory = Path(directory), Path(bert_directory)
    build_biomedbert_replica(bert_directory, size=size, seed=seed, words=words)
    cfg = biomedclip_config(size)
    torch.manual_seed(seed)
    # Build the model against the local BERT folder (same config), then save it as the hub has it.
    model_cfg = json.loads(json.dumps(cfg["model_cfg"]))
    model_cfg["text_cfg"]["hf_model_name"] = str(bert_directory)
    model_cfg["text_cfg"]["hf_tokenizer_name"] = str(bert_directory)
    model_cfg["text_cfg"]["hf_model_pretrained"] = False
    AutoConfig.from_pretrained(str(bert_directory))  # fail early if the BERT folder is bad
    model = open_clip.CustomTextCLIP(**model_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    _save_torch_bin(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


# --- the registered families -----------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One registered hub model and the repos a replica of it fills."""

    model: str  # registry name in explorer/configs/models.json
    repos: tuple[str, ...]  # every hub repo it needs, the spec's own first
    image_size_tiny: int = 224


FAMILIES: dict[str, Family] = {
    "biomedclip": Family(
        "biomedclip", (BIOMEDCLIP_REPO, BIOMEDBERT_REPO), image_size_tiny=TINY_TIMM_SIZE
    ),
    "pubmedclip": Family("pubmedclip", (PUBMEDCLIP_REPO,)),
    "clip-vit-b32": Family("clip-vit-b32", (CLIP_REPO,)),
    "siglip-base": Family("siglip-base", (SIGLIP_REPO,)),
    "medsiglip": Family("medsiglip", (MEDSIGLIP_REPO,), image_size_tiny=448),
}


def build_repo(
    repo: str,
    directory: Path,
    size: str = "tiny",
    seed: int = 0,
    words: Iterable[str] | None = None,
) -> Path:
    """Write the replica of one hub repo into ``directory`` (``words``: BERT vocabulary)."""
    if repo == BIOMEDCLIP_REPO:
        # The open_clip repo alone; its BERT repo is its own entry (built to a scratch folder
        # here only so that the weights have the right shapes).
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            return build_biomedclip_replica(directory, Path(scratch), size=size, seed=seed)
    if repo == BIOMEDBERT_REPO:
        return build_biomedbert_replica(directory, size=size, seed=seed, words=words)
    if repo in (CLIP_REPO, PUBMEDCLIP_REPO):
        return build_clip_replica(directory, size=size, seed=seed)
    if repo == SIGLIP_REPO:
        return build_siglip_replica(directory, size=size, seed=seed)
    if repo == MEDSIGLIP_REPO:
        return build_siglip_replica(directory, size=size, seed=seed, medsiglip=True)
    raise ValueError(f"no replica builder for the hub repo {repo!r}")


def repo_cache_folder(cache_dir: Path, repo: str) -> Path:
    """``models--ORG--NAME`` under an ``HF_HUB_CACHE`` folder."""
    return Path(cache_dir) / ("models--" + repo.replace("/", "--"))


def fake_commit(repo: str, size: str) -> str:
    """A stable 40-hex 'commit' for a replica snapshot."""
    return hashlib.sha1(f"replica:{repo}:{size}".encode()).hexdigest()


def write_hub_cache(
    cache_dir: Path,
    models: Iterable[str] | None = None,
    size: str = "tiny",
    seed: int = 0,
    skip_repos: Iterable[str] = (),
    words: Iterable[str] | None = None,
) -> Path:
    """Fill an offline Hugging Face cache with replicas of ``models`` (default: every family).

    Each repo goes to ``models--ORG--NAME/snapshots/<commit>/`` with ``refs/main`` naming the
    commit, which is all ``huggingface_hub`` needs to serve it offline. Repos in ``skip_repos``
    are left out (to test a model whose second repo is missing). ``words`` go into the
    BERT vocabulary (see :func:`build_biomedbert_replica`).

    Returns:
        ``cache_dir``.
    """
    _check_size(size)
    cache_dir = Path(cache_dir)
    skip = set(skip_repos)
    repos = dict.fromkeys(
        r for name in (models or FAMILIES) for r in FAMILIES[name].repos if r not in skip
    )
    for repo in repos:
        folder = repo_cache_folder(cache_dir, repo)
        commit = fake_commit(repo, size)
        ref = folder / "refs" / "main"
        if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
            continue  # built before (the ref is written last)
        build_repo(repo, folder / "snapshots" / commit, size=size, seed=seed, words=words)
        (folder / "blobs").mkdir(parents=True, exist_ok=True)
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit, encoding="utf-8")
    return cache_dir


@contextmanager
def offline_hub(cache_dir: Path) -> Iterator[Path]:
    """Point this process at ``cache_dir`` as its Hugging Face cache, offline, for the block.

    ``huggingface_hub`` reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into constants at import,
    so both the environment and those constants are set (and restored afterwards).
    """
    from huggingface_hub import constants

    from explorer.models.registry import hub_reachable

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    saved = (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)
    os.environ["HF_HUB_CACHE"] = str(cache_dir)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache_dir), True
    hub_reachable.cache_clear()
    try:
        yield Path(cache_dir)
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        hub_reachable.cache_clear()


def replica_specs(size: str = "tiny", models: Iterable[str] | None = None) -> tuple[ModelSpec, ...]:
    """The registered specs of ``models`` (default: every family), as in
    ``explorer/configs/models.json``; at tiny size a replica whose image tower takes another
    input size (BiomedCLIP's timm test ViT: 160 px) gets that size in its preprocessing."""
    _check_size(size)
    wanted = list(models or FAMILIES)
    by_name = {s.name: s for s in load_specs()}
    out = []
    for name in wanted:
        spec = by_name[name]
        px = FAMILIES[name].image_size_tiny
        if size == "tiny" and spec.preprocess is not None and spec.preprocess.image_size != px:
            spec = replace(spec, preprocess=replace(spec.preprocess, image_size=px))
        out.append(spec)
    return tuple(out)


__all__ = [
    "BIOMEDBERT_REPO",
    "BIOMEDCLIP_REPO",
    "CLIP_REPO",
    "FAMILIES",
    "PUBMEDCLIP_REPO",
    "MEDSIGLIP_REPO",
    "SIGLIP_REPO",
    "SIZES",
    "Family",
    "biomedclip_config",
    "build_biomedbert_replica",
    "build_biomedclip_replica",
    "build_clip_replica",
    "build_repo",
    "build_siglip_replica",
    "fake_commit",
    "offline_hub",
    "replica_corpus",
    "replica_specs",
    "repo_cache_folder",
    "write_hub_cache",
]
