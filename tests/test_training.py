"""Training: data views, a few steps lowering the loss, resumable export, DDP on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from explorer.phantom.sets import build_phantom_set, flip_finding
from explorer.training import data as data_mod
from explorer.training.data import (
    PhantomTraining,
    claims_vector,
    finding_prompt_pairs,
    prompt_view,
    sample_view,
)
from explorer.training.model import TrainingWrapper, build_dual_encoder
from explorer.training.trainer import TrainConfig, batch_loss

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "image_size": 64,
    "patch_size": 16,
    "vision_width": 32,
    "vision_layers": 1,
    "vision_heads": 2,
    "projection_dim": 32,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_set(cache_dir):
    return build_phantom_set(24, 4242, 64, workers=1)


def _config(tmp: Path, loss: str, steps: int = 2) -> dict:
    return {
        "name": f"tiny-{loss}",
        "loss": loss,
        "out_dir": str(tmp / f"out-{loss}"),
        "work_dir": str(tmp / "work"),
        "steps": steps,
        "batch_size": 6,
        "train_images": 24,
        "warmup_steps": 1,
        "checkpoint_every": 1,
        "log_every": 1,
        "pretrained_text": False,
        "model": TINY_MODEL,
    }


def test_phantom_set_is_cached_and_deterministic(tiny_set, cache_dir):
    again = build_phantom_set(24, 4242, 64, workers=1)
    np.testing.assert_array_equal(again.images, tiny_set.images)
    assert list(cache_dir.glob("phantoms-64-24-4242-*.pkl"))
    assert tiny_set.images.dtype == np.uint8 and tiny_set.truth.shape[0] == 24
    assert set(np.unique(tiny_set.truth)) <= {-1.0, 1.0}


def test_views_and_flipped_twins(tiny_set):
    rng = np.random.default_rng(0)
    flipped = 0
    for report, truth in zip(tiny_set.reports, tiny_set.truth, strict=True):
        view = sample_view(report, rng, p_full=0.5, with_negative=True)
        assert view.text
        if view.negated is not None:
            flipped += 1
            assert view.negated != view.text
            i = data_mod.PHANTOM_FINDINGS.index(view.flipped)
            # the flipped finding's claim changes sign (hedged -> denied, denied -> affirmed)
            assert np.sign(view.negated_claims[i]) != np.sign(view.claims[i])
        # full report claims never contradict the phantom's truth
        full = claims_vector(report.sentences)
        assert not np.any((full > 0) & (truth < 0)) and not np.any((full < 0) & (truth > 0))
    assert flipped >= len(tiny_set) // 2


def test_prompt_views_state_the_truth_and_twin_with_their_negation(tiny_set):
    from explorer.vocab.negation import negate

    rng = np.random.default_rng(0)
    seen = set()
    for truth in tiny_set.truth:
        for _ in range(20):
            view = prompt_view(truth, rng, ("there_is", "bare"))
            j = data_mod.PHANTOM_FINDINGS.index(view.flipped)
            # one claim, on the chosen finding, with the image's ground-truth sign
            assert np.count_nonzero(view.claims) == 1 and view.claims[j] == truth[j]
            np.testing.assert_array_equal(view.negated_claims, -view.claims)
            pair = (view.text, view.negated) if truth[j] > 0 else (view.negated, view.text)
            assert pair in finding_prompt_pairs(view.flipped, ("there_is", "bare"))
            assert negate(pair[0]) == pair[1]  # the negated prompt is the engine's negation
            seen.add((view.flipped, bool(truth[j] > 0)))
    assert {f for f, _ in seen} == set(data_mod.PHANTOM_FINDINGS)
    assert {p for _, p in seen} == {True, False}


def test_prompt_views_use_only_the_named_templates():
    pairs = finding_prompt_pairs("nodule/mass", ("bare",))
    # the benchmark's phrase, the app's CheXpert phrase and the report generator's noun
    assert pairs == (
        ("lung nodule or mass", "no lung nodule or mass"),
        ("lung lesion", "no lung lesion"),
        ("pulmonary nodule", "no pulmonary nodule"),
    )
    assert len(finding_prompt_pairs("nodule/mass")) == 3 * 6  # every template of prompts.json
    assert all("lines or tubes" not in a for a, _ in finding_prompt_pairs("support devices"))


class _Recorder:
    """A tokenizer that remembers the texts it was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.tokenizer(texts, **kwargs)


@pytest.mark.parametrize("p_prompt", [0.0, 1.0])
def test_batches_use_prompt_views_as_configured(tiny_set, tmp_path, p_prompt):
    raw = {**_config(tmp_path, "negaware"), "p_prompt": p_prompt, "prompt_templates": ["bare"]}
    cfg = TrainConfig.from_file(_write(tmp_path, raw))
    assert cfg.prompt_templates == ("bare",)
    torch.manual_seed(0)
    model, tok = build_dual_encoder(cfg.model, pretrained_text=False)
    recorder = _Recorder(tok)
    rng = np.random.default_rng(0)
    batch_loss(
        TrainingWrapper(model), recorder, PhantomTraining(tiny_set), np.arange(6), rng, cfg, "cpu"
    )
    texts, twins = recorder.calls
    bare = {
        t for f in data_mod.PHANTOM_FINDINGS for p in finding_prompt_pairs(f, ("bare",)) for t in p
    }
    assert all((t in bare) == (p_prompt == 1.0) for t in texts + twins)


def test_flip_finding_negates_present_finding(tiny_set):
    k = next(i for i, t in enumerate(tiny_set.truth) if (t > 0).any())
    finding = data_mod.PHANTOM_FINDINGS[int(np.argmax(tiny_set.truth[k] > 0))]
    flipped = flip_finding(tiny_set.reports[k].sentences, finding)
    assert flipped is not None
    before = claims_vector(tiny_set.reports[k].sentences)[data_mod.PHANTOM_FINDINGS.index(finding)]
    after = claims_vector(flipped)[data_mod.PHANTOM_FINDINGS.index(finding)]
    assert before > 0 and after < 0


@pytest.mark.parametrize("loss", ["infonce", "soft", "negaware"])
@pytest.mark.slow
def test_a_few_steps_lower_the_loss(tiny_set, tmp_path, loss):
    cfg = TrainConfig.from_file(_write(tmp_path, _config(tmp_path, loss)))
    torch.manual_seed(0)
    model, tok = build_dual_encoder(cfg.model, pretrained_text=True)
    wrapper = TrainingWrapper(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    index = np.arange(6)

    def step_loss():
        return batch_loss(
            wrapper,
            tok,
            PhantomTraining(tiny_set),
            index,
            np.random.default_rng(1),
            cfg,
            torch.device("cpu"),
        )[0]

    first = step_loss().item()
    for _ in range(12):
        loss_value = step_loss()
        opt.zero_grad()
        loss_value.backward()
        opt.step()
    assert step_loss().item() < first * 0.8


def _write(tmp: Path, cfg: dict) -> Path:
    path = tmp / f"{cfg['name']}.json"
    path.write_text(json.dumps(cfg))
    return path


def _run(args: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXPLORER_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_cli_exports_loadable_model_and_resumes(tmp_path, cache_dir):
    cfg = _config(tmp_path, "negaware", steps=3)
    path = _write(tmp_path, cfg)
    proc = _run(
        [sys.executable, "-m", "explorer", "train", "--config", str(path), "--no-progress"],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = Path(cfg["out_dir"])
    assert (out / "model.safetensors").exists() and (out / "train_log.jsonl").exists()
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    first = load_file(out / "model.safetensors")
    verbose = [sys.executable, "-m", "explorer", "-v", "train", "--config", str(path)]
    # a rerun of the same config resumes from the checkpoint at step 2 (written every step but
    # the last), redoes step 3 and ends with the same weights
    proc = _run([*verbose, "--no-progress"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming tiny-negaware from step 2" in proc.stderr
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rows after the checkpoint were redone
    again = load_file(out / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
    # a changed config must not resume the other run's checkpoint: it trains afresh
    cfg["steps"] = 4
    path = _write(tmp_path, cfg)
    proc = _run([*verbose[:-1], str(path), "--no-progress"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "resuming tiny-negaware" not in proc.stderr and "written by another config" in proc.stderr
    )
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the export loads through the registry's transformers adapter
    from explorer.models import ModelRegistry, ModelSpec, Preprocess

    spec = ModelSpec(
        "exported", "transformers", str(out), Preprocess(64, (0.5,) * 3, (0.25,) * 3, "squash")
    )
    model = ModelRegistry([spec]).load("exported", "cpu")
    emb = model.embed_image(np.zeros((64, 64), dtype=np.float32))
    assert emb.shape == (1, 32) and torch.isfinite(emb).all()


@pytest.mark.slow
@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_replicas_identical(tmp_path, cache_dir):
    cfg = _config(tmp_path, "negaware", steps=2)
    cfg["name"] = "tiny-ddp"
    path = _write(tmp_path, cfg)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += ["-m", "explorer", "train", "--config", str(path), "--no-progress"]
    proc = _run(args, cache_dir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((Path(cfg["out_dir"]) / "training_config.json").read_text())
    assert meta["world_size"] == 2
    a, b = meta["replica_checksums"]
    assert a == b


# --- stage 1 (supervised image tower) and stage 2 on a locked tower ---------------------------


def test_shifted_moves_each_image_within_the_limit():
    from explorer.training.pretrain import shift_offsets, shifted

    img = np.arange(3 * 20 * 20, dtype=np.float32).reshape(3, 20, 20)
    assert np.array_equal(shifted(img, np.zeros((3, 2), int), shift=0), img)
    offsets = shift_offsets(3, np.random.default_rng(0), shift=3)
    assert offsets.shape == (3, 2) and offsets.min() >= 0 and offsets.max() <= 6
    out = shifted(img, offsets, shift=3)
    assert out.shape == img.shape
    for k, (dy, dx) in enumerate(offsets):  # a translated copy of its own input, edges repeated
        assert np.array_equal(out[k], np.pad(img[k], 3, mode="edge")[dy : dy + 20, dx : dx + 20])
    # a stack of maps per image ([B, F, S, S]) moves as one, like its image
    maps = np.stack([img, img[::-1]], axis=1)
    moved = shifted(maps, offsets, shift=3)
    assert np.array_equal(moved[:, 0], out)
    assert np.array_equal(moved[:, 1], shifted(img[::-1].copy(), offsets, shift=3))


@pytest.mark.slow
def test_stage1_learns_the_labels_and_is_cached(tiny_set, tmp_path):
    from explorer.training.pretrain import VisionPretrain, pretrain_vision

    cfg = TrainConfig.from_file(_write(tmp_path, _config(tmp_path, "infonce")))
    settings = VisionPretrain(steps=30, batch_size=12, lr=3e-3, warmup_steps=1)
    torch.manual_seed(0)
    model, _ = build_dual_encoder(cfg.model, pretrained_text=False)
    before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    args = (tiny_set, settings, cfg.preprocess, tmp_path / "work", "k1", 0, torch.device("cpu"))
    summary = pretrain_vision(model.vision_model, *args, progress=False)
    assert summary["steps"] == 30 and summary["bce_last_50"] < 0.69  # below chance (ln 2)
    after = model.vision_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "work" / "vision-k1.pt").exists()
    # a second call with the same key loads the cached tower instead of training again
    fresh, _ = build_dual_encoder(cfg.model, pretrained_text=False)
    assert pretrain_vision(fresh.vision_model, *args, progress=False) == summary
    for k, v in fresh.vision_model.state_dict().items():
        assert torch.equal(v, after[k])


@pytest.fixture(scope="module")
def masked_set(cache_dir):
    return build_phantom_set(24, 4242, 64, keep_masks=True, workers=1)


def test_cell_targets_mark_the_cells_a_mask_touches(masked_set):
    from explorer.phantom import PHANTOM_FINDINGS
    from explorer.training.pretrain import cell_targets

    index = np.arange(6)
    still = np.full((6, 2), 3)  # offset == shift: no movement
    fine, coarse = cell_targets(masked_set, index, still, [8, 2], shift=3)
    assert fine.shape == (6, len(PHANTOM_FINDINGS), 8, 8) and coarse.shape[-1] == 2
    for b, k in enumerate(index):
        for j, name in enumerate(PHANTOM_FINDINGS):
            mask = masked_set.masks[k].get(name, np.zeros((64, 64), bool))
            expect = mask.reshape(8, 8, 8, 8).any(axis=(1, 3))  # 8x8 cells of 8 px
            assert np.array_equal(fine[b, j].numpy() > 0, expect), (k, name)
    assert float(fine.sum()) > 0  # the set has findings with masks
    # the targets move with the image: a shift by a whole cell moves a mask by one cell
    moved = cell_targets(masked_set, index, np.full((6, 2), 0), [8], shift=8)[0]
    assert torch.equal(moved[..., 1:, 1:], fine[..., :-1, :-1])


def test_cell_targets_of_images_without_masks_are_empty(masked_set):
    from explorer.training.pretrain import cell_targets

    bare = np.array([k for k in range(len(masked_set)) if not masked_set.masks[k]])
    assert len(bare), "the fixture set should have a phantom without findings"
    some = np.array([k for k in range(len(masked_set)) if masked_set.masks[k]][:2])
    index = np.concatenate([bare[:1], some])
    out = cell_targets(masked_set, index, np.full((len(index), 2), 3), [4], shift=3)[0]
    assert float(out[0].sum()) == 0 and float(out[1:].sum()) > 0
    assert float(cell_targets(masked_set, bare[:1], np.full((1, 2), 3), [4], shift=3)[0].sum()) == 0


@pytest.mark.slow
def test_stage1_with_lesion_maps_learns_them(masked_set, tiny_set, tmp_path):
    from explorer.training.pretrain import VisionPretrain, pretrain_vision

    cfg = TrainConfig.from_file(_write(tmp_path, _config(tmp_path, "infonce")))
    settings = VisionPretrain(steps=30, batch_size=12, lr=3e-3, warmup_steps=1, mask_weight=1.0)
    torch.manual_seed(0)
    model, _ = build_dual_encoder(cfg.model, pretrained_text=False)
    args = (settings, cfg.preprocess, tmp_path / "work", "k2", 0, torch.device("cpu"))
    summary = pretrain_vision(model.vision_model, masked_set, *args, progress=False)
    assert summary["bce_last_50"] < 0.69 and summary["cell_bce_last_50"] < 0.69
    with pytest.raises(ValueError, match="keep_masks"):
        pretrain_vision(model.vision_model, tiny_set, *args[:3], "k3", 0, torch.device("cpu"))


def test_pooled_path_matches_the_pixel_path(tiny_set, tmp_path):
    cfg = TrainConfig.from_file(_write(tmp_path, _config(tmp_path, "infonce")))
    model, _ = build_dual_encoder(cfg.model, pretrained_text=False)
    model.eval()
    from explorer.models.preprocess import prepare_pixels
    from explorer.training.pretrain import pooled_features

    px = prepare_pixels(tiny_set.pixels(np.arange(4)), cfg.preprocess)
    ids = torch.tensor([[101, 2053, 102]] * 4)
    wrapper = TrainingWrapper(model)
    with torch.no_grad():
        a = wrapper(pixel_values=px, input_ids=ids, attention_mask=torch.ones_like(ids))[0]
        pooled = pooled_features(model.vision_model, tiny_set, cfg.preprocess, torch.device("cpu"))
        b = wrapper(pooled=pooled[:4], input_ids=ids, attention_mask=torch.ones_like(ids))[0]
    assert pooled.shape[0] == len(tiny_set)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_train_with_a_locked_image_tower_keeps_stage1_weights(tmp_path, cache_dir):
    cfg = _config(tmp_path, "negaware", steps=3)
    cfg["name"] = "tiny-lit"
    cfg["vision_pretrain"] = {"steps": 3, "batch_size": 6, "warmup_steps": 1}
    cfg["lock_image"] = True
    proc = _run(
        [sys.executable, "-m", "explorer", "train", "--config", str(_write(tmp_path, cfg))],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage 1: image tower" in proc.stderr  # its progress bar
    (tower_file,) = (tmp_path / "work").glob("vision-*.pt")
    tower = torch.load(tower_file, weights_only=True)
    from safetensors.torch import load_file

    exported = load_file(str(Path(cfg["out_dir"]) / "model.safetensors"))
    for key, value in tower.items():
        saved = exported[f"vision_model.{key}"].float()
        torch.testing.assert_close(saved, value.half().float())  # only the fp16 export rounding
    meta = json.loads((Path(cfg["out_dir"]) / "training_config.json").read_text())
    assert meta["stage1"]["steps"] == 3 and meta["config"]["lock_image"] is True
    # a stage-2 run with a different loss reuses the same tower (same key) without retraining
    cfg2 = {**cfg, "name": "tiny-lit-2", "loss": "infonce", "out_dir": str(tmp_path / "out2")}
    proc = _run(
        [sys.executable, "-m", "explorer", "-v", "train", "--config", str(_write(tmp_path, cfg2))],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reusing the image tower" in proc.stderr


@pytest.mark.slow
def test_bucketed_text_features_match_one_padded_call(tmp_path):
    from explorer.models.base import as_features
    from explorer.training.model import bucketed_text_features

    cfg = TrainConfig.from_file(_write(tmp_path, _config(tmp_path, "negaware")))
    model, tokenizer = build_dual_encoder(cfg.model, pretrained_text=False)
    model.eval()
    words = [
        "no",
        "left",
        "pleural",
        "effusion",
        "is",
        "seen",
        "the",
        "heart",
        "size",
        "is",
        "normal",
    ]
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 40, size=37)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    assert lengths.min() < enc["input_ids"].shape[1] // 2  # the padding is real
    with torch.no_grad():
        whole = as_features(model.get_text_features(**enc))
        chunked = bucketed_text_features(model, enc["input_ids"], enc["attention_mask"], chunk=8)
    torch.testing.assert_close(chunked, whole, atol=2e-5, rtol=1e-4)
    # the wrapper's true and flipped texts go through it together, in their own order
    half = len(texts) // 2
    a = tokenizer(texts[:half], padding=True, return_tensors="pt")
    b = tokenizer(texts[half : 2 * half], padding=True, return_tensors="pt")
    with torch.no_grad():
        _, txt, neg, _ = TrainingWrapper(model)(
            pooled=torch.zeros(half, model.config.vision_config.hidden_size),
            input_ids=a["input_ids"],
            attention_mask=a["attention_mask"],
            neg_ids=b["input_ids"],
            neg_mask=b["attention_mask"],
        )
    torch.testing.assert_close(
        txt, torch.nn.functional.normalize(whole[:half], dim=-1), atol=2e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        neg, torch.nn.functional.normalize(whole[half : 2 * half], dim=-1), atol=2e-5, rtol=1e-4
    )


def test_stage1_cache_key_ignores_text_only_settings():
    from dataclasses import asdict

    from explorer.training.model import EncoderConfig
    from explorer.training.pretrain import VisionPretrain, cache_key

    settings = VisionPretrain(steps=10)
    base = asdict(EncoderConfig(image_size=64))
    key = cache_key(settings, base, 24, 0)
    assert cache_key(settings, {**base, "text_max_length": 192, "projection_dim": 8}, 24, 0) == key
    assert cache_key(settings, {**base, "image_size": 96}, 24, 0) != key
    assert cache_key(settings, {**base, "convnext_depths": (1, 1, 3, 1)}, 24, 0) != key
    assert cache_key(VisionPretrain(steps=11), base, 24, 0) != key


def test_convnext_tower_takes_its_stage_count_from_the_widths():
    from explorer.models.base import as_features
    from explorer.training.model import EncoderConfig

    cfg = EncoderConfig(
        image_size=64, convnext_widths=(8, 16, 24), convnext_depths=(1, 1, 1), projection_dim=16
    )
    model, _ = build_dual_encoder(cfg, pretrained_text=False)
    out = model.vision_model(pixel_values=torch.zeros(1, 3, 64, 64))
    assert len(model.vision_model.encoder.stages) == 3
    assert tuple(out.last_hidden_state.shape) == (1, 24, 4, 4)  # 64 px / (4 * 2 * 2)
    features = as_features(model.get_image_features(pixel_values=torch.zeros(1, 3, 64, 64)))
    assert tuple(features.shape) == (1, 16)  # the projection is sized from the last width
