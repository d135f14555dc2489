"""The registered hub models, end to end, on replicas in a fake offline Hugging Face cache.

Every hub family is rebuilt small with random weights in its hub repo's exact layout
(:mod:`explorer.models.replicas`) and loaded by the registry from an ``HF_HUB_CACHE`` folder
with ``HF_HUB_OFFLINE=1``: the ``hf-hub:`` (open_clip) and plain-id (transformers) paths the
app takes with the real downloads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explorer.errors import ModelUnavailableError
from explorer.models import ModelRegistry, load_specs
from explorer.models.replicas import (
    BIOMEDBERT_REPO,
    BIOMEDCLIP_REPO,
    FAMILIES,
    MEDSIGLIP_REPO,
    SIGLIP_REPO,
    fake_commit,
    offline_hub,
    replica_specs,
    repo_cache_folder,
    write_hub_cache,
)

pytest.importorskip("open_clip")
pytest.importorskip("sentencepiece")

HUB_NAMES = tuple(FAMILIES)
TEXTS = ["there is pleural effusion", "there is no pleural effusion", "heart size is normal"]

#: Files each hub repo holds (the replicas write at least these, by these names).
LAYOUT = {
    BIOMEDCLIP_REPO: {"open_clip_config.json", "open_clip_pytorch_model.bin"},
    BIOMEDBERT_REPO: {"config.json", "vocab.txt", "pytorch_model.bin"},
    "openai/clip-vit-base-patch32": {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "preprocessor_config.json",
    },
    SIGLIP_REPO: {
        "config.json",
        "model.safetensors",
        "spiece.model",
        "tokenizer_config.json",
        "preprocessor_config.json",
    },
    MEDSIGLIP_REPO: {
        "config.json",
        "model.safetensors",
        "spiece.model",
        "tokenizer_config.json",
        "preprocessor_config.json",
    },
}


#: Tiny models gain nothing from threads, and on a busy machine they lose a lot.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry(hub_registry):
    return hub_registry


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((240, 200), dtype=np.float32)


def test_replicas_have_the_hub_layout(hub_cache):
    for repo, files in LAYOUT.items():
        folder = repo_cache_folder(hub_cache, repo)
        commit = (folder / "refs" / "main").read_text().strip()
        assert commit == fake_commit(repo, "tiny") and len(commit) == 40
        present = {p.name for p in (folder / "snapshots" / commit).iterdir()}
        assert files <= present, f"{repo} lacks {sorted(files - present)}"
    # BiomedCLIP's open_clip config sends its text tower and tokenizer to the BERT repo
    snap = repo_cache_folder(hub_cache, BIOMEDCLIP_REPO) / "snapshots"
    cfg = json.loads(next(snap.glob("*/open_clip_config.json")).read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == BIOMEDBERT_REPO
    assert cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == BIOMEDBERT_REPO


def test_replica_specs_are_the_registered_ones():
    registered = {s.name: s for s in load_specs()}
    for spec in replica_specs():
        assert spec.source == registered[spec.name].source
        assert spec.backend == registered[spec.name].backend


@pytest.mark.parametrize("name", HUB_NAMES)
def test_every_hub_family_loads_offline_and_encodes(registry, hub_cache, image, name):
    with offline_hub(hub_cache):
        status = registry.status(name)
        assert status.available, status.reason
        assert "cache" in status.reason
        model = registry.load(name, "cpu")
    img = model.embed_image(image)
    txt = model.embed_texts(TEXTS)
    assert img.shape[0] == 1 and txt.shape == (len(TEXTS), img.shape[1])
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(len(TEXTS)))
    assert not torch.allclose(txt[0], txt[1])
    tokens = model.tokenize(TEXTS)
    strings = model.token_strings(tokens)
    assert [len(s) for s in strings] == tokens["attention_mask"].sum(dim=1).tolist()


def test_models_command_reports_the_cached_replicas(hub_cache, capsys):
    from explorer.cli import main

    with offline_hub(hub_cache):
        assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    for name in HUB_NAMES:
        assert rows[name]["available"], rows[name]
        assert "cache" in rows[name]["reason"]


def test_biomedclip_without_its_bert_repo_cannot_load_and_says_why(tmp_path):
    cache = write_hub_cache(tmp_path, ["biomedclip"], skip_repos=[BIOMEDBERT_REPO])
    with offline_hub(cache):
        reg = ModelRegistry(replica_specs(models=["biomedclip"]))
        status = reg.status("biomedclip")
        assert not status.available
        assert BIOMEDBERT_REPO in status.reason and "not cached" in status.reason
        with pytest.raises(ModelUnavailableError, match="BiomedBERT"):
            reg.load("biomedclip", "cpu")
        # the same from the quick check the app makes at start-up
        assert not reg.status("biomedclip", check_hub=False).available


def test_siglip_says_when_its_tokenizer_package_is_missing(hub_cache, monkeypatch):
    from explorer.models import registry as registry_module

    real = registry_module._module_available
    monkeypatch.setattr(
        registry_module, "_module_available", lambda n: n != "sentencepiece" and real(n)
    )
    with offline_hub(hub_cache):
        status = ModelRegistry(replica_specs(models=["siglip-base"])).status("siglip-base")
    assert not status.available and "sentencepiece" in status.reason


def test_biomedclip_pads_to_the_longest_text_with_the_same_embeddings(registry, hub_cache):
    with offline_hub(hub_cache):
        model = registry.load("biomedclip", "cpu")
    texts = [*TEXTS, "the heart size is normal . the lungs are clear . " * 4]
    tokens = model.tokenize(texts)
    assert tokens["input_ids"].shape[1] == max(model.count_tokens(texts)) < 256
    full = model._tokenizer(texts)  # open_clip pads every text to the context length
    assert full.shape[1] == 256
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        padded = model.encode_text({"input_ids": full, "attention_mask": full != 0})
    torch.testing.assert_close(trimmed, padded, atol=1e-5, rtol=0)
    assert model.max_text_tokens == 256
    assert model.truncated([" ".join(["effusion"] * 300), TEXTS[0]]) == [True, False]


@pytest.mark.parametrize("name", HUB_NAMES)
def test_token_ig_adds_up_on_every_hub_family(registry, hub_cache, image, name):
    from explorer.attribution import attribute_text

    with offline_hub(hub_cache):
        model = registry.load(name, "cpu")
    seen = []
    result = attribute_text(model, image, TEXTS[1], progress=lambda f, m: seen.append(f))
    assert result.relative_delta < 0.01, f"completeness gap {result.relative_delta:.2%}"
    assert seen and seen[-1] == 1.0
    if name == "biomedclip":  # its tower masks padding ids, so the baseline is [MASK]
        tok = model._tokenizer.tokenizer
        assert result.params["baseline_token_id"] == tok.mask_token_id != tok.pad_token_id
        padded = attribute_text(model, image, TEXTS[1], baseline_token_id=tok.pad_token_id)
        assert padded.relative_delta > 0.1  # the gap the padding baseline left (issue 26)
