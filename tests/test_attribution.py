"""Attribution wrappers: contracts on every tiny backend, and known answers on toy models."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.attribution import (
    BASELINES,
    DEFAULT_BASELINES,
    IMAGE_METHODS,
    METHODS,
    AttributionError,
    AttributionOptionsError,
    GradCAMOptions,
    IGOptions,
    OcclusionOptions,
    TokenIGOptions,
    attribute_image,
    attribute_pair,
    attribute_text,
    image_similarity_forward,
    integrated_gradients,
    model_input,
    occlusion,
    to_image_space,
    uses_baseline,
)
from explorer.attribution.image import why_no_image_map
from explorer.eval.metrics import pointing_hit
from explorer.models import ModelRegistry, ModelSpec, Preprocess
from explorer.models.base import SpatialLayer, VisionLanguageModel
from explorer.models.tiny import (
    TINY_BUILDERS,
    TINY_CELL_POOL_NAME,
    TINY_CONVNEXT_NAME,
    TINY_PREPROCESS,
    build_tiny_specs,
    tiny_cell_pool_spec,
    tiny_convnext_spec,
)
from explorer.phantom import FindingSpec, render_phantom

CONV_NAME = TINY_CONVNEXT_NAME
POOL_NAME = TINY_CELL_POOL_NAME
NAMES = (*TINY_BUILDERS, CONV_NAME, POOL_NAME)
PROMPT = "there is a large left pleural effusion"
#: IG completeness: |sum(attr) - (f(x) - f(b))| <= REL * |f(x) - f(b)| + ABS.
REL_TOL, ABS_TOL = 0.05, 1e-4
#: Integration points in the completeness tests. Along the black -> phantom path the random
#: tiny towers have sharp bumps: tiny-clip's residual is ~2% of f(x) - f(b) at 64 points and
#: ~1e-4 at 128; the tiny ConvNeXt's pooled features nearly cancel near alpha = 0.75, where
#: its final LayerNorm (eps 1e-12) turns the similarity into a narrow spike that needs ~512.
IG_STEPS = {CONV_NAME: 512, POOL_NAME: 512}
DEFAULT_IG_STEPS = 128


#: Tiny models gain nothing from threads, and on a busy machine they lose a lot.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    specs = (*build_tiny_specs(root), tiny_convnext_spec(root), tiny_cell_pool_spec(root))
    return ModelRegistry(specs, max_loaded=len(specs))


@pytest.fixture(scope="module")
def phantom():
    return render_phantom(
        0, findings=[FindingSpec("pleural effusion", laterality="left", severity="large")], size=160
    )


@pytest.fixture(scope="module")
def image(phantom):
    """A non-square crop, so that a map that is not resampled to the caller's shape shows."""
    return np.ascontiguousarray(phantom.image[:, 16:144])


def _param_grads(model):
    return [p for p in model.module.parameters() if p.grad is not None]


# --- every backend ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_maps_contract(registry, image, name, method):
    model = registry.load(name, "cpu")
    why = why_no_image_map(model, method)
    if why is not None:
        # open_clip's own ViT and any ConvNeXt keep no attention probabilities; only a
        # cell-pooled model has cell shares: said so, in the sentence the app shows
        assert method == "attention" or (method == "cells" and name != POOL_NAME)
        with pytest.raises(AttributionOptionsError, match="no attention map|no cell shares"):
            attribute_image(model, image, PROMPT, method)
        assert why in (model.attention_unavailable("image"), model.cells_unavailable())
        return
    steps = IG_STEPS.get(name, DEFAULT_IG_STEPS)
    result = attribute_image(model, image, PROMPT, method, steps=steps, internal_batch_size=64)
    size = model.preprocess_cfg.image_size
    assert result.method == method and result.prompt == PROMPT
    assert result.attribution.shape == image.shape and result.attribution.dtype == np.float32
    assert result.model_attribution.shape == (size, size)
    assert np.isfinite(result.attribution).all() and np.abs(result.attribution).max() > 0
    assert not result.attribution.flags.writeable
    # the explained score is the model's ordinary cosine similarity for this image and prompt
    with torch.no_grad():
        expected = (model.embed_image(image) * model.encode_text(model.tokenize([PROMPT]))).sum()
    assert result.score == pytest.approx(float(expected), abs=1e-5)
    assert not _param_grads(model)
    if method == "ig":
        gap = result.score - result.baseline_score
        assert result.signed and result.params["baseline"].startswith("black")
        assert abs(result.model_attribution.sum() - gap) <= REL_TOL * abs(gap) + ABS_TOL
        assert abs(result.convergence_delta) <= REL_TOL * abs(gap) + ABS_TOL
    elif method == "gradcam":
        assert not result.signed and result.baseline_score is None
        assert result.attribution.min() >= 0.0
        assert result.params["layer_kind"] == ("conv" if name in (CONV_NAME, POOL_NAME) else "vit")
    elif method == "attention":
        assert not result.signed and result.attribution.min() >= 0.0
        assert result.params["layers"] >= 1
        assert result.params["pooled"] == ("mean" if "siglip" in name else "first")
    elif method == "cells":
        # the shares add up to the similarity exactly (spread over each cell's pixels)
        assert result.signed and result.params["cells"] == (16, 16)
        assert result.model_attribution.sum() == pytest.approx(result.score, rel=1e-4, abs=1e-6)
    else:
        assert result.params["window"] == size // 8 and result.params["stride"] == size // 16


@pytest.mark.parametrize("name", NAMES)
def test_occlusion_of_a_pair_is_one_pass_with_the_same_maps(registry, image, name):
    model = registry.load(name, "cpu")
    calls = []
    original = model.encode_image

    def counted(pixel_values, normalize=True):
        calls.append(len(pixel_values))
        return original(pixel_values, normalize)

    model.encode_image = counted
    try:
        first, second, diff = attribute_pair(
            model, image, PROMPT, "there is no effusion", "occlusion"
        )
        paired = sum(calls)
        calls.clear()
        alone = attribute_image(model, image, "there is no effusion", "occlusion")
        single = sum(calls)
    finally:
        del model.encode_image
    assert paired <= single + 2  # both maps from one set of occluded images (+ the scores)
    np.testing.assert_allclose(second.model_attribution, alone.model_attribution, atol=1e-5)
    np.testing.assert_allclose(diff, first.attribution - second.attribution)
    assert second.prompt == "there is no effusion" and second.params == alone.params


@pytest.mark.parametrize("name", NAMES)
def test_occlusion_follows_the_image(registry, image, name):
    model = registry.load(name, "cpu")
    first = attribute_image(model, image, PROMPT, "occlusion")
    second = attribute_image(model, image[::-1].copy(), PROMPT, "occlusion")
    assert not np.allclose(first.attribution, second.attribution)


@pytest.mark.parametrize("name", NAMES)
def test_text_attribution(registry, image, name):
    model = registry.load(name, "cpu")
    prompt = "there is no pleural effusion"
    result = attribute_text(model, image, prompt, steps=64)
    assert result.tokens == tuple(model.token_strings(model.tokenize([prompt]))[0])
    assert len(result.scores) == len(result.tokens) == len(result.special)
    assert np.isfinite(result.scores).all()
    assert result.special[0] and result.special[-1] and not any(result.special[1:-1])
    assert all(s == 0.0 for s, sp in zip(result.scores, result.special, strict=True) if sp)
    gap = result.score - result.baseline_score
    assert abs(sum(result.scores) - gap) <= REL_TOL * abs(gap) + ABS_TOL
    with torch.no_grad():
        expected = (model.embed_image(image) * model.embed_texts([prompt])).sum()
    assert result.score == pytest.approx(float(expected), abs=1e-5)
    assert result.params["special_tokens"] == "tokenizer special ids"
    assert not _param_grads(model)
    # the words a person reads: the prompt's own, pieces merged, specials left out, scores summed
    words = result.words()
    assert " ".join(w for w, _ in words) == prompt
    assert sum(v for _, v in words) == pytest.approx(sum(result.scores), abs=1e-9)


_PLEURAL = (0.1, 0.2, 0.3)
_EFFUSION = (0.4, 0.5)


@pytest.mark.parametrize(
    ("tokens", "special"),
    [
        # WordPiece (BERT, MiniLM, BiomedBERT)
        (["[CLS]", "no", "pl", "##eur", "##al", "e", "##ff", "##usion", "[SEP]"], (0, 8)),
        # SentencePiece (SigLIP)
        (["▁no", "▁pl", "eur", "al", "▁e", "ff", "usion", "</s>"], (7,)),
        # CLIP BPE, as transformers and open_clip give it
        (
            [
                "<|startoftext|>",
                "no</w>",
                "pl",
                "eur",
                "al</w>",
                "e",
                "ff",
                "usion</w>",
                "<|endoftext|>",
            ],
            (0, 8),
        ),
    ],
    ids=["wordpiece", "sentencepiece", "clip-bpe"],
)
def test_word_pieces_merge_into_words(tokens, special):
    from explorer.attribution.text import merge_word_pieces

    flags = [k in special for k in range(len(tokens))]
    pieces = iter((0.7, *_PLEURAL, *_EFFUSION, 0.6))  # "no", pleural pieces, effusion pieces
    scores = [0.0 if f else next(pieces) for f in flags]
    words = merge_word_pieces(tokens, scores, flags)
    assert [w for w, _ in words] == ["no", "pleural", "effusion"]
    assert [round(v, 6) for _, v in words] == [0.7, 0.6, 1.5]


def test_embedding_from_another_thread_waits_for_a_running_attribution(registry, image):
    """A forward pass from another thread (the server's warm-up, a second request) while an
    attribution hooks the model would be recorded by Captum's layer hooks as the attribution's
    own activation (seen on CI: a warm-up's batch of prompt embeddings became the text
    baseline and LayerIntegratedGradients failed). So embedding waits for the attribution."""
    import threading

    from explorer.attribution.core import attribution_mode

    model = registry.load(NAMES[0], "cpu")
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (model.embed_texts(["no effusion"]), model.embed_image(image), done.set())
    )
    with attribution_mode(model):
        worker.start()
        assert not done.wait(0.5)  # held back while the attribution runs
        model.embed_texts(["the attribution itself may embed"])  # re-entrant
    assert done.wait(60)
    worker.join()


@pytest.mark.parametrize("name", NAMES)
def test_attribution_leaves_the_model_as_found(registry, image, name):
    model = registry.load(name, "cpu")
    before = model.embed_image(image).clone()
    text_before = model.embed_texts([PROMPT]).clone()
    flags = [p.requires_grad for p in model.module.parameters()]
    for method in IMAGE_METHODS:
        if why_no_image_map(model, method) is None:
            attribute_image(model, image, PROMPT, method, steps=8)
    attribute_text(model, image, PROMPT, steps=8)
    if model.attention_stack("text") is not None:
        attribute_text(model, image, PROMPT, method="text_attention")
    assert not _param_grads(model)
    assert [p.requires_grad for p in model.module.parameters()] == flags
    assert not model.module.training
    torch.testing.assert_close(model.embed_image(image), before, atol=0, rtol=0)
    torch.testing.assert_close(model.embed_texts([PROMPT]), text_before, atol=0, rtol=0)


def test_forward_matches_preprocessing(registry, image):
    """The attributed forward normalises exactly like ``prepare_pixels``."""
    model = registry.load("tiny-clip", "cpu")
    text = model.embed_texts([PROMPT])
    forward = image_similarity_forward(model, text)
    with torch.no_grad():
        ours = forward(model_input(model, image))
        reference = (model.encode_image(model.preprocess(image)) * text).sum(-1)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_pair_difference_and_progress(registry, image):
    model = registry.load("tiny-siglip", "cpu")
    seen = []
    aff, neg, diff = attribute_pair(
        model,
        image,
        "there is pleural effusion",
        "there is no pleural effusion",
        "ig",
        steps=16,
        internal_batch_size=4,
        progress=lambda frac, msg: seen.append((frac, msg)),
    )
    assert aff.prompt != neg.prompt
    np.testing.assert_array_equal(diff, aff.attribution - neg.attribution)
    fractions = [f for f, _ in seen]
    assert len(fractions) > 4 and fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)


def test_occlusion_states_and_uses_its_baseline(registry, image):
    model = registry.load("tiny-dual-encoder", "cpu")
    black = attribute_image(model, image, PROMPT, "occlusion")
    assert black.params["baseline"] == "black (all zeros)"
    blur = attribute_image(model, image, PROMPT, "occlusion", baseline="blur")
    assert blur.params["baseline"].startswith("gaussian blur")
    assert not np.allclose(blur.model_attribution, black.model_attribution)
    with pytest.raises(ValueError, match="baseline"):
        attribute_image(model, image, PROMPT, "occlusion", baseline="white")


def test_ig_baselines(registry, image):
    model = registry.load("tiny-dual-encoder", "cpu")
    for baseline in ("mean", "blur", 0.5, np.full(image.shape, 0.25, np.float32)):
        result = attribute_image(model, image, PROMPT, "ig", baseline=baseline, steps=64)
        gap = result.score - result.baseline_score
        assert abs(result.model_attribution.sum() - gap) <= REL_TOL * abs(gap) + ABS_TOL
    with pytest.raises(ValueError, match="baseline"):
        attribute_image(model, image, PROMPT, "ig", baseline="white")


def test_bad_arguments(registry, image):
    model = registry.load("tiny-clip", "cpu")
    with pytest.raises(ValueError, match="method"):
        attribute_image(model, image, PROMPT, "lime")
    with pytest.raises(ValueError, match="prompt"):
        attribute_image(model, image, "  ", "ig")
    with pytest.raises(ValueError, match="grayscale"):
        attribute_image(model, np.stack([image, image]), PROMPT, "ig")
    with pytest.raises(ValueError, match="window"):
        attribute_image(model, image, PROMPT, "occlusion", window=1000)


@pytest.mark.parametrize("mode", ["squash", "shortest", "pad"])
def test_maps_return_to_the_right_place(mode):
    """A map read off the model input lands on the caller's pixel it came from."""
    pre = Preprocess(32, TINY_PREPROCESS.mean, TINY_PREPROCESS.std, mode)
    model = ToyModel(pre)
    img = np.zeros((60, 90), np.float32)
    img[38:44, 40:46] = 1.0  # a bright dot, inside the centre crop
    back = to_image_space(model_input(model, img)[0, 0], pre, img.shape)
    assert back.shape == img.shape
    row, col = np.unravel_index(np.argmax(back), back.shape)
    assert 36 <= row <= 46 and 38 <= col <= 48
    if mode == "shortest":  # the sides the crop cut away were never seen: zero
        assert np.abs(back[:, :8]).max() == 0 and np.abs(back[:, -8:]).max() == 0


# --- known answers ---------------------------------------------------------------------------


def test_ig_and_occlusion_on_a_known_linear_function():
    """f(x) = <w, x> with w nonzero only in one block: all attribution lies in that block."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, generator=gen)
    w = torch.zeros(1, 1, 16, 16)
    w[..., 4:8, 10:14] = torch.rand(1, 1, 4, 4, generator=gen) + 0.5

    def forward(batch):
        return (batch * w).flatten(1).sum(1)

    attr, delta = integrated_gradients(forward, x, 0.0, steps=8, internal_batch_size=3)
    torch.testing.assert_close(attr, w * x, atol=1e-6, rtol=1e-5)  # IG of a linear map is exact
    assert abs(delta) < 1e-4
    occ = occlusion(forward, x, window=2, stride=2, batch_size=5)
    inside = torch.zeros_like(w, dtype=torch.bool)
    inside[..., 4:8, 10:14] = True
    assert occ[~inside].abs().max() == 0 and (occ[inside] > 0).all()
    # non-overlapping windows: each pixel carries its window's whole drop
    torch.testing.assert_close(occ.sum() / 4, forward(x)[0], atol=1e-5, rtol=1e-5)
    # an image baseline: each window is repainted from it, so the drop is <w, x - baseline>
    base = torch.full_like(x, 0.25)
    occ_base = occlusion(forward, x, window=2, stride=2, baseline=base, batch_size=5)
    torch.testing.assert_close(occ_base.sum() / 4, forward(x - base)[0], atol=1e-5, rtol=1e-5)


class _ToyImageTower(nn.Module):
    """Channel 0 = brightness above mid-gray, channel 1 = darkness below it, pooled over a
    region; embedding ``[0.1, bright, dark]``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor([[1 / 3] * 3, [-1 / 3] * 3]).view(2, 3, 1, 1))
        self.act = nn.ReLU()
        self.register_buffer("region", torch.ones(size, size))

    def forward(self, pixel_values):
        feats = self.act(self.mix(pixel_values))  # normalised 4x - 2: >0 above mid-gray
        pooled = (feats * self.region).sum((2, 3)) / self.region.sum()
        return torch.cat([torch.full_like(pooled[:, :1], 0.1), pooled], dim=1)


class ToyModel(VisionLanguageModel):
    """A hand-built adapter whose answers are known: 'bright' and 'dark' words align with the
    image tower's two channels; every other word is a small random vector."""

    VOCAB = ("[PAD]", "[CLS]", "[SEP]", "bright", "dark", "there", "is", "a", "region")

    def __init__(self, pre: Preprocess, region: np.ndarray | None = None) -> None:
        self.spec = ModelSpec(name="toy", backend="toy", source="toy")
        self.device = torch.device("cpu")
        self.preprocess_cfg = pre
        self.tower = _ToyImageTower(pre.image_size)
        if region is not None:
            self.tower.region.copy_(torch.as_tensor(region, dtype=torch.float32))
        self.embedding = nn.Embedding(len(self.VOCAB), 3)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.embedding.weight.copy_(0.05 * torch.randn(len(self.VOCAB), 3, generator=gen))
            self.embedding.weight[0] = torch.tensor([0.2, 0.0, 0.0])
            self.embedding.weight[3] = torch.tensor([0.0, 1.0, 0.0])
            self.embedding.weight[4] = torch.tensor([0.0, 0.0, 1.0])
        self._module = nn.ModuleDict({"tower": self.tower, "embedding": self.embedding}).eval()

    def encode_image(self, pixel_values, normalize=True):
        out = self.tower(pixel_values)
        return F.normalize(out, dim=-1) if normalize else out

    def tokenize(self, texts):
        rows = [[1, *(self.VOCAB.index(w) for w in t.lower().split()), 2] for t in texts]
        length = max(len(r) for r in rows) + 2  # some padding
        ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def encode_text(self, tokens, normalize=True):
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        out = (self.embedding(tokens["input_ids"]) * mask).sum(1) / mask.sum(1)
        return F.normalize(out, dim=-1) if normalize else out

    def token_strings(self, tokens):
        return [
            [self.VOCAB[i] for i, m in zip(row, mask, strict=True) if m]
            for row, mask in zip(
                tokens["input_ids"].tolist(), tokens["attention_mask"].tolist(), strict=True
            )
        ]

    @property
    def pad_token_id(self):
        return 0

    @property
    def token_embedding_layer(self):
        return self.embedding

    @property
    def spatial_layer(self):
        return SpatialLayer(self.tower.act, "conv")

    @property
    def logit_scale(self):
        return 10.0

    @property
    def module(self):
        return self._module


def _squares(size: int = 96):
    """Mid-gray image with a bright square (top left) and a dark square (bottom right)."""
    img = np.full((size, size), 0.5, np.float32)
    bright, dark = np.zeros((size, size), bool), np.zeros((size, size), bool)
    bright[10:30, 12:32] = True
    dark[60:80, 58:78] = True
    img[bright], img[dark] = 0.95, 0.05
    return img, bright, dark


def test_gradcam_follows_the_channel_the_prompt_reads():
    img, bright, dark = _squares()
    model = ToyModel(Preprocess(32, (0.5,) * 3, (0.25,) * 3, "squash"))
    cam_bright = attribute_image(model, img, "bright", "gradcam").attribution
    cam_dark = attribute_image(model, img, "dark", "gradcam").attribution
    assert pointing_hit(cam_bright, bright) and not pointing_hit(cam_bright, dark)
    assert pointing_hit(cam_dark, dark) and not pointing_hit(cam_dark, bright)
    assert cam_bright[dark].max() == 0  # the dark square only lowers 'bright': ReLU'd away


def test_maps_point_at_the_only_region_the_model_reads(phantom):
    """A model that pools its 'bright' feature over the lesion mask only: IG and occlusion must
    point inside the lesion, and put (nearly) all their mass there."""
    size = 64
    mask = phantom.findings[0].mask
    pooled = F.interpolate(torch.tensor(mask, dtype=torch.float32)[None, None], size, mode="area")
    region = (pooled[0, 0] >= 0.5).float().numpy()
    model = ToyModel(Preprocess(size, (0.5,) * 3, (0.25,) * 3, "squash"), region=region)
    for method in ("ig", "occlusion"):
        result = attribute_image(model, phantom.image, "there is a bright region", method)
        assert pointing_hit(result.attribution, mask, dilate_px=3), method
        mass = np.abs(result.model_attribution)
        if method == "ig":  # the gradient is exactly zero outside the pooled region
            assert mass[region == 0].max() == 0 and mass.sum() > 0
        else:  # windows reach a few pixels beyond the region, no further
            near = F.max_pool2d(torch.tensor(region)[None, None], 17, 1, 8)[0, 0].numpy()
            assert mass[near == 0].max() == 0


def test_text_attribution_finds_the_word_the_image_matches():
    img = np.full((96, 96), 0.9, np.float32)  # bright all over: the image embedding is 'bright'
    model = ToyModel(Preprocess(32, (0.5,) * 3, (0.25,) * 3, "squash"))
    result = attribute_text(model, img, "there is a bright region", steps=64)
    assert result.tokens == ("[CLS]", "there", "is", "a", "bright", "region", "[SEP]")
    assert result.params["special_tokens"] == "first and last real positions"
    scores = np.array(result.scores)
    assert np.argmax(scores) == 4 and scores[4] > 0.5 * np.abs(scores).sum()
    gap = result.score - result.baseline_score
    assert abs(scores.sum() - gap) <= REL_TOL * abs(gap) + ABS_TOL
    # 'dark' is the wrong word for a bright image
    dark = attribute_text(model, img, "there is a dark region", steps=64)
    assert dark.scores[4] < result.scores[4]


class _PadIsEndToy(ToyModel):
    """Like OpenAI CLIP's tokenizer: padding, unknown and end-of-text share one id."""

    _tokenizer = SimpleNamespace(
        all_special_ids=[0, 1, 2], unk_token_id=2, eos_token_id=2, pad_token_id=2
    )

    @property
    def pad_token_id(self):
        return 2


def test_text_baseline_never_reuses_a_special_token():
    img = np.full((96, 96), 0.9, np.float32)
    model = _PadIsEndToy(Preprocess(32, (0.5,) * 3, (0.25,) * 3, "squash"))
    result = attribute_text(model, img, "there is a bright region", steps=32)
    assert result.params["special_tokens"] == "tokenizer special ids"
    assert result.special == (True, False, False, False, False, False, True)
    assert result.params["baseline_token_id"] == 0  # not the end-of-text id 2
    assert result.relative_delta < REL_TOL


def test_train_mode_is_restored_and_nans_are_refused():
    img, _, _ = _squares()
    model = ToyModel(Preprocess(32, (0.5,) * 3, (0.25,) * 3, "squash"))
    model.module.train()
    attribute_image(model, img, "bright", "ig", steps=4)
    assert model.module.training
    model.module.eval()
    with torch.no_grad():
        model.tower.region.fill_(float("nan"))
    with pytest.raises(AttributionError):
        attribute_image(model, img, "bright", "gradcam")


# --- methods, options and the registry --------------------------------------------------------


def test_registry_states_each_method_once():
    assert IMAGE_METHODS == ("ig", "gradcam", "occlusion", "attention", "cells")
    assert BASELINES == ("black", "mean", "blur")
    assert DEFAULT_BASELINES == {"ig": "black", "occlusion": "black"}
    assert [uses_baseline(m) for m in IMAGE_METHODS] == [True, False, True, False, False]
    assert not uses_baseline("layer_ig")  # a token id, not an image baseline
    # a method takes a baseline exactly when its options have one, and only then has a default
    for name, entry in METHODS.items():
        has_field = "baseline" in {f.name for f in dataclasses.fields(entry.options)}
        assert uses_baseline(name) == has_field == (name in DEFAULT_BASELINES)
        assert entry.display and entry.needs and entry.explains in ("image", "text")
    with pytest.raises(AttributionOptionsError, match="method must be one of"):
        uses_baseline("lime")


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: IGOptions(steps=0), "steps"),
        (lambda: IGOptions(steps=2.5), "steps"),
        (lambda: IGOptions(internal_batch_size=0), "internal_batch_size"),
        (lambda: IGOptions(baseline="white"), "baseline"),
        (lambda: IGOptions(baseline=1.5), "baseline"),
        (lambda: IGOptions(baseline=None), "baseline"),
        (lambda: OcclusionOptions(window=0), "window"),
        (lambda: OcclusionOptions(stride=0), "stride"),
        (lambda: OcclusionOptions(window=4, stride=8), "stride"),
        (lambda: OcclusionOptions(batch=0), "batch"),
        (lambda: OcclusionOptions(baseline="white"), "baseline"),
        (lambda: TokenIGOptions(steps=-1), "steps"),
        (lambda: TokenIGOptions(baseline_token_id=-2), "baseline_token_id"),
    ],
)
def test_bad_options_give_a_sentence_naming_them(make, named):
    with pytest.raises(AttributionOptionsError) as info:
        make()
    text = str(info.value)
    assert named in text and text.endswith(".") and text[0].isupper()
    assert isinstance(info.value, ValueError)  # callers that caught ValueError still do


def test_options_defaults_and_resolution():
    assert IGOptions() == IGOptions(steps=128, internal_batch_size=16, baseline="black")
    assert OcclusionOptions().resolved(160) == (20, 10)
    assert OcclusionOptions(window=16).resolved(160) == (16, 10)
    assert OcclusionOptions().resolved(8) == (1, 1)
    assert dataclasses.fields(GradCAMOptions) == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        IGOptions().steps = 3


def test_options_object_and_keywords_give_the_same_map(registry, image):
    model = registry.load("tiny-clip", "cpu")
    by_kw = attribute_image(model, image, PROMPT, "occlusion", window=8, stride=4, baseline="blur")
    opts = OcclusionOptions(window=8, stride=4, baseline="blur")
    by_opts = attribute_image(model, image, PROMPT, "occlusion", options=opts)
    np.testing.assert_array_equal(by_kw.attribution, by_opts.attribution)
    assert by_kw.params == by_opts.params
    ig = attribute_image(model, image, PROMPT, "ig", options=IGOptions(steps=8, baseline=0.5))
    assert ig.params["steps"] == 8 and ig.params["baseline"] == "constant 0.5"
    # Grad-CAM ignores a baseline given by keyword (the app passes one for every method)
    cam = attribute_image(model, image, PROMPT, "gradcam", baseline="black")
    assert "baseline" not in cam.params
    with pytest.raises(AttributionOptionsError, match="not both"):
        attribute_image(model, image, PROMPT, "ig", options=IGOptions(), steps=4)
    with pytest.raises(AttributionOptionsError, match="IGOptions"):
        attribute_image(model, image, PROMPT, "ig", options=OcclusionOptions())
    text = attribute_text(model, image, PROMPT, options=TokenIGOptions(steps=8))
    assert text.params["steps"] == 8
    with pytest.raises(AttributionOptionsError, match="not both"):
        attribute_text(model, image, PROMPT, options=TokenIGOptions(), steps=8)


def test_registry_and_cli_parser_do_not_import_torch():
    """The command line builds its parser from the registry without loading torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from explorer.attribution import BASELINES, IMAGE_METHODS, uses_baseline\n"
        "from explorer.cli import build_parser\n"
        "build_parser()\n"
        "assert uses_baseline('ig') and IMAGE_METHODS and BASELINES\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_parameters_read_as_words():
    from explorer.attribution import describe_params

    ig = {"input_size": 224, "scaled": False, "steps": 128, "internal_batch_size": 16}
    ig |= {"baseline": "black (all zeros)", "integration": "gausslegendre"}
    assert describe_params(ig) == (
        "on the 224-pixel image the model sees; 128 steps; baseline: black (all zeros)"
    )
    occlusion = {"input_size": 160, "window": 20, "stride": 10, "baseline": "blur"}
    assert "a 20-pixel square painted over the image, moved 10 pixels at a time" in (
        describe_params(occlusion)
    )
    assert "a 7 x 7 grid" in describe_params({"grid": [7, 7], "layer": "stages.3"})


# --- token IG completeness and progress ---------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_token_ig_adds_up_within_one_percent_and_reports_progress(registry, image, name):
    model = registry.load(name, "cpu")
    seen = []
    result = attribute_text(
        model, image, "there is no pleural effusion", progress=lambda f, m: seen.append((f, m))
    )
    assert result.relative_delta < 0.01, f"completeness gap {result.relative_delta:.2%}"
    gap = result.score - result.baseline_score
    assert abs(sum(result.scores) - gap) <= 0.01 * abs(gap) + 1e-6
    fractions = [f for f, _ in seen]
    assert len(fractions) > 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in seen)


class _MasksPaddingToy(ToyModel):
    """Like open_clip's HF text tower (BiomedCLIP): the mask comes from the padding id, not
    from the caller, so padding ids inside a sequence are dropped from attention."""

    VOCAB = (*ToyModel.VOCAB, "[MASK]")

    def encode_text(self, tokens, normalize=True):
        ids = tokens["input_ids"]
        mask = (ids != 0).float()[..., None]
        emb = self.embedding(ids) * mask
        out = emb.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return F.normalize(out, dim=-1) if normalize else out

    @property
    def text_baseline_token_id(self):
        return self.VOCAB.index("[MASK]")


def test_token_ig_baseline_is_not_masked_away():
    img = np.full((96, 96), 0.9, np.float32)
    model = _MasksPaddingToy(Preprocess(32, (0.5,) * 3, (0.25,) * 3, "squash"))
    result = attribute_text(model, img, "there is a bright region", steps=64)
    assert result.params["baseline_token_id"] == model.VOCAB.index("[MASK]")
    assert result.relative_delta < 0.01
    # padding ids as the baseline: the baseline run drops them, the integration path does not
    padded = attribute_text(model, img, "there is a bright region", steps=64, baseline_token_id=0)
    assert padded.relative_delta > 0.1
