"""Affirmed-vs-negated scoring on tiny models and real sample images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.imaging import load_image
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs
from explorer.plots import findings_figure
from explorer.scoring import TextEmbeddingCache, score_findings
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
    with pytest.raises(ValueError, match="finding"):
        score_findings(model, xray, findings=[], custom=["  "], templates=["there_is"])


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
