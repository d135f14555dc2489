"""Affirmed-vs-negated scoring on tiny models and real sample images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from explorer.imaging import load_image
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs
from explorer.plots import findings_figure, findings_order
from explorer.scoring import (
    TextEmbeddingCache,
    embed_texts_once,
    pair_probability,
    score_findings,
)
from explorer.vocab.labels import CHEXPERT_FINDINGS


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    specs = build_tiny_specs(tmp_path_factory.mktemp("tiny"))
    return ModelRegistry(specs).load("tiny-clip", "cpu")


@pytest.fixture(scope="module")
def xray(samples_dir):
    return load_image(samples_dir / "00000001_000.png").pixels


def test_scores_all_findings_consistently(model, xray):
    result = score_findings(model, xray, templates=["there_is", "bare"])
    assert [s.finding for s in result.scores] == list(CHEXPERT_FINDINGS)
    assert result.templates == ("there_is", "bare")
    img = model.embed_image(xray)[0]
    for s in result.scores:
        assert len(s.affirmed) == len(s.negated) == 2
        # recompute the first template's numbers independently
        t = model.embed_texts([s.affirmed[0], s.negated[0]])
        sims = t @ img
        p0 = torch.softmax(model.logit_scale * sims, dim=0)[0].item()
        p1 = torch.softmax(
            model.logit_scale * (model.embed_texts([s.affirmed[1], s.negated[1]]) @ img), 0
        )[0].item()
        assert s.prob_affirmed == pytest.approx((p0 + p1) / 2, abs=1e-5)
        assert s.margin == pytest.approx(s.sim_affirmed - s.sim_negated, abs=1e-6)
        assert -1.0 <= s.text_cosine <= 1.0


def test_custom_finding_and_user_negation(model, xray):
    result = score_findings(
        model,
        xray,
        findings=["Pleural Effusion"],
        custom=["a small right apical pneumothorax"],
        negations={"Pleural Effusion": "the costophrenic angles are sharp"},
        templates=["there_is"],
    )
    custom = result.score("a small right apical pneumothorax")
    assert custom.custom and "no" in custom.negated[0]
    assert result.score("Pleural Effusion").negated == ("the costophrenic angles are sharp",)
    # the table says whose negation it is: the user's sentence, not the templates'
    frame = result.to_frame().set_index("finding")
    assert frame.loc["Pleural Effusion", "your negation"]
    assert not frame.loc["Pleural Effusion", "custom"]
    assert not frame.loc["a small right apical pneumothorax", "your negation"]
    with pytest.raises(ValueError, match="finding"):
        score_findings(model, xray, findings=[], custom=["  "], templates=["there_is"])


def test_typed_text_longer_than_the_model_reads_is_flagged(model, xray):
    limit = model.max_text_tokens
    long = "a small right apical pneumothorax " + "with pleural thickening " * limit
    result = score_findings(model, xray, findings=["Pleural Effusion"], custom=[long.strip()])
    assert result.score(long.strip()).truncated
    assert not result.score("Pleural Effusion").truncated
    frame = result.to_frame().set_index("finding")
    assert frame.loc[long.strip(), "cut to the model's length"]


def test_negation_blind_flag_follows_thresholds(model, xray):
    strict = score_findings(model, xray, templates=["there_is"], blind_margin=0.5)
    assert all(s.negation_blind for s in strict.scores)  # every |p - 0.5| < 0.5
    lax = score_findings(
        model, xray, templates=["there_is"], blind_margin=0.0, blind_text_cosine=1.01
    )
    assert not any(s.negation_blind for s in lax.scores)


def test_text_cache_means_one_image_forward(model, xray):
    cache = TextEmbeddingCache()
    score_findings(model, xray, templates=["there_is"], cache=cache)
    n = len(cache)
    assert n == 2 * len(CHEXPERT_FINDINGS)
    calls = []
    original = model.embed_texts
    model.embed_texts = lambda texts: calls.append(texts) or original(texts)
    try:
        score_findings(model, np.flipud(xray).copy(), templates=["there_is"], cache=cache)
    finally:
        del model.embed_texts
    assert calls == [] and len(cache) == n


def test_frame_and_figure(model, xray):
    result = score_findings(model, xray, templates=["there_is"])
    frame = result.to_frame()
    assert len(frame) == 14 and {"finding", "P(affirmed)", "negation-blind"} <= set(frame.columns)
    fig = findings_figure(result)
    assert len(fig.data[0].y) == 14
    assert sorted(fig.data[0].x) == list(fig.data[0].x)  # sorted by probability
    # a second model's chart in the first one's order reads across row by row
    other = dataclasses.replace(result, scores=tuple(reversed(result.scores)))
    order = findings_order(result)
    assert [y.rstrip(" ⚠") for y in fig.data[0].y] == order
    again = findings_figure(other, order=order)
    assert list(again.data[0].y) == list(fig.data[0].y)
    assert list(findings_figure(other, sort=False).data[0].y) != list(fig.data[0].y)


def test_pair_probability_by_hand():
    sims = torch.tensor([[0.3, 0.1], [0.2, 0.2], [0.0, 0.5]])
    p = pair_probability(sims, 10.0)
    # softmax of (3, 1): 1 / (1 + e^-2); of (0, 5): 1 / (1 + e^5)
    expected = torch.tensor([1 / (1 + np.exp(-2.0)), 0.5, 1 / (1 + np.exp(5.0))])
    assert p.shape == (3,) and torch.allclose(p, expected.float(), atol=1e-6)
    # leading dimensions are kept: [images, templates, 2] -> [images, templates]
    assert pair_probability(sims.reshape(3, 1, 2).expand(3, 4, 2), 10.0).shape == (3, 4)
    # a larger scale sharpens the same verdict
    assert pair_probability(sims[:1], 100.0).item() > p[0].item() > 0.5


class _CountingModel:
    """Embeds a text as [its length, its first character's code]; records every batch."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def embed_texts(self, texts):
        self.batches.append(list(texts))
        return torch.tensor([[len(t), ord(t[0])] for t in texts], dtype=torch.float64)


def test_embed_texts_once_embeds_each_distinct_text_once():
    fake = _CountingModel()
    texts = ["ccc", "a", "bb", "a", "ccc", "dd"]
    emb = embed_texts_once(fake, texts, batch=2)
    assert fake.batches == [["ccc", "a"], ["bb", "dd"]]  # first-appearance order, batches of 2
    assert emb.dtype == torch.float32 and emb.shape == (6, 2)
    assert emb[:, 0].tolist() == [3, 1, 2, 1, 3, 2] and emb[5, 1].item() == ord("d")
    fake = _CountingModel()
    again = embed_texts_once(fake, texts, batch=2, by_length=True)
    assert fake.batches == [["a", "bb"], ["dd", "ccc"]]  # shortest first, ties in text order
    assert torch.equal(again, emb)  # the rows follow ``texts`` either way
    assert embed_texts_once(_CountingModel(), []).numel() == 0


def test_text_cache_embeds_only_missing_texts():
    fake = _CountingModel()
    cache = TextEmbeddingCache()
    first = cache.embed(fake, ["x", "yy", "x"])
    second = cache.embed(fake, ["yy", "zzz"])
    assert fake.batches == [["x", "yy"], ["zzz"]] and len(cache) == 3
    assert first[:, 0].tolist() == [1, 2, 1] and second[:, 0].tolist() == [2, 3]
