"""A full negation benchmark and pointing game on a tiny model and a tiny held-out set.

The metrics themselves are checked by hand in ``tests/test_metrics.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from explorer.eval.benchmark import format_table, hard_negative_texts, run_benchmark
from explorer.eval.metrics import auc_score
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs
from explorer.phantom import PHANTOM_FINDINGS
from explorer.phantom import sets as phantom_sets
from explorer.phantom.splits import HELDOUT_SEED
from explorer.vocab.prompts import prompt_pairs


@pytest.fixture(scope="module")
def tiny_heldout(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_hard_negatives_flip_a_present_finding(tiny_heldout):
    data = phantom_sets.build_phantom_set(12, HELDOUT_SEED, 64, workers=1)
    true, negated, omitted, which = hard_negative_texts(data)
    assert len(true) == len(negated) == len(which) == 12
    for k, neg in enumerate(negated):
        if (data.truth[k] > 0).any():
            assert neg is not None and neg != true[k] and omitted[k] != true[k]
            assert data.truth[k, PHANTOM_FINDINGS.index(which[k])] > 0  # a present finding
        else:
            assert neg is None and which[k] is None


def test_run_benchmark_on_tiny_model(tiny_heldout, tmp_path):
    spec = build_tiny_specs(tmp_path)[1]  # tiny transformers CLIP
    model = ModelRegistry([spec]).load(spec.name, "cpu")
    result = run_benchmark(model, images=24, size=64)
    assert result.images == 24 and 0 < result.task_a_n <= 24
    assert 0.0 <= result.task_b <= result.task_a <= 1.0
    # the per-finding accuracies are the overall one, split by the negated finding
    assert set(result.task_a_by_finding) <= set(PHANTOM_FINDINGS)
    _, _, _, which = hard_negative_texts(phantom_sets.build_phantom_set(24, HELDOUT_SEED, 64))
    counts = {f: sum(w == f for w in which) for f in result.task_a_by_finding}
    pooled = sum(result.task_a_by_finding[f] * n for f, n in counts.items()) / result.task_a_n
    assert pooled == pytest.approx(result.task_a)
    assert set(result.auc) == set(PHANTOM_FINDINGS)
    assert list(result.auc_by_template) == [p.template_id for p in prompt_pairs("cardiomegaly")]
    assert all(0.0 <= v <= 1.0 for v in result.auc_by_template.values())
    assert result.recall["R@1"] <= result.recall["R@5"] <= result.recall["R@10"] <= 1.0
    table = format_table([result])
    assert "task A" in table and spec.name in table
    assert "mean AUC, template 'there_is' alone" in table
    assert f"task A, {next(iter(result.task_a_by_finding))} negated" in table
    # the zero-shot AUC is the pair softmax ("there is X" vs its negation, times the logit
    # scale), averaged over the templates, scored against the truth
    data = phantom_sets.build_phantom_set(24, HELDOUT_SEED, 64)
    image = model.embed_image(data.pixels(np.arange(24))).float()
    j = PHANTOM_FINDINGS.index("pleural effusion")
    pairs = prompt_pairs(phantom_sets.zero_shot_phrase("pleural effusion"))
    aff = model.embed_texts([p.affirmed for p in pairs]).float()
    neg = model.embed_texts([p.negated for p in pairs]).float()
    logits = model.logit_scale * np.stack([(image @ aff.T).numpy(), (image @ neg.T).numpy()], -1)
    prob = np.exp(logits[..., 0]) / np.exp(logits).sum(-1)
    expected = auc_score(data.truth[:, j] > 0, prob.mean(axis=1))
    assert result.auc["pleural effusion"] == pytest.approx(expected, abs=1e-6)


def test_pointing_game_on_tiny_model(tiny_heldout, tmp_path):
    from explorer.eval.benchmark import format_pointing, run_pointing_game

    spec = build_tiny_specs(tmp_path)[1]
    model = ModelRegistry([spec]).load(spec.name, "cpu")
    result = run_pointing_game(model, images=6, size=64, methods=("gradcam", "ig"), steps=4)
    assert result.findings > 0
    assert 0.0 <= result.hits["gradcam"] <= 1.0 and 0.0 <= result.hits["ig"] <= 1.0
    assert set(result.per_finding["gradcam"]) <= set(PHANTOM_FINDINGS)
    assert result.params["ig"]["steps"] == 4
    assert "gradcam" in format_pointing([result])
    assert 0.0 <= result.gradcam_ceiling <= 1.0
    grid = "x".join(map(str, result.params["gradcam"]["grid"]))
    assert f"perfect map at Grad-CAM's {grid} grid (ceiling)" in format_pointing([result])
    # every localised finding is either affirmed by the model or missed, and each part's hit
    # rate weighs into the whole
    assert 0 <= result.affirmed <= result.findings
    for m in ("gradcam", "ig"):
        parts = [
            (rate, n)
            for rate, n in (
                (result.hits_affirmed[m], result.affirmed),
                (result.hits_missed[m], result.findings - result.affirmed),
            )
            if n
        ]
        assert sum(rate * n for rate, n in parts) / result.findings == pytest.approx(result.hits[m])
    # the split follows the softmax over the "there is X" / "no X" pair
    from explorer.eval.benchmark import LOCALISED_MAX_AREA
    from explorer.vocab.prompts import prompt_pair

    data = phantom_sets.build_phantom_set(6, HELDOUT_SEED, 64, keep_masks=True)
    affirmed = 0
    for k in range(len(data)):
        image = model.embed_image(data.pixels([k])[0]).reshape(-1)
        for finding, mask in data.masks[k].items():
            if mask.any() and mask.mean() < LOCALISED_MAX_AREA:
                pair = prompt_pair(phantom_sets.zero_shot_phrase(finding), "there_is")
                logits = (
                    model.logit_scale * model.embed_texts([pair.affirmed, pair.negated]) @ image
                )
                affirmed += int(logits.softmax(0)[0] >= 0.5)
    assert result.affirmed == affirmed
    table = format_pointing([result])
    assert f"{result.findings} ({result.affirmed})" in table
    assert "ig, findings the model affirms" in table and "ig, findings it misses" in table
    # how much of each map lies on the lesion, and the trust checks on the first findings
    for m in ("gradcam", "ig"):
        assert 0.0 <= result.relevance_mass[m] <= 1.0 and 0.0 <= result.relevance_rank[m] <= 1.0
        checks = result.trust[m]
        assert set(checks) == {
            "randomisation_rho",
            "deletion",
            "deletion_random",
            "insertion",
            "insertion_random",
        }
        assert -1.0 <= checks["randomisation_rho"] <= 1.0
    assert result.trust_n == min(result.findings, 8)
    assert "gradcam, randomisation rho" in table and "ig, relevance mass" in table
