"""Can a map be trusted? The randomisation sanity check and the deletion / insertion curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.attribution.checks import (
    _spearman,
    deletion_insertion,
    randomised_copy,
    tower_parameters,
    trust_report,
)
from explorer.imaging import load_radiograph
from explorer.models import ModelRegistry, load_model
from explorer.models.tiny import build_tiny_specs
from explorer.paths import examples_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    specs = build_tiny_specs(tmp_path_factory.mktemp("tiny"))
    return ModelRegistry(specs, default="tiny-clip").load("tiny-clip", "cpu")


@pytest.fixture(scope="module")
def phantom():
    """The embedded phantom model and a phantom with a known left effusion."""
    pixels = load_radiograph(examples_dir() / "phantom-left-effusion.png").pixels
    return load_model("phantom-negaware"), pixels


def test_the_image_tower_is_found_by_its_gradient_and_only_it_is_scrambled(tiny):
    names = tower_parameters(tiny)
    assert names and not any("text" in n for n in names)
    before = {n: p.detach().clone() for n, p in tiny.module.named_parameters()}
    clone, count = randomised_copy(tiny, share=0.5, seed=0)
    assert count == round(len(names) * 0.5)
    changed = {
        n
        for n, p in clone.module.named_parameters()
        if not torch.equal(p.detach().cpu(), before[n].cpu())
    }
    assert changed == set(names[-count:])  # the top half of the image tower, nothing else
    for n, p in tiny.module.named_parameters():  # the served model is untouched
        assert torch.equal(p.detach(), before[n])


def test_rank_correlation_of_map_magnitudes():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert _spearman(a, a) == pytest.approx(1.0)
    assert _spearman(a, -a) == pytest.approx(1.0)  # magnitudes: a sign flip is the same map
    assert abs(_spearman(a, rng.random((16, 16)))) < 0.2
    assert _spearman(np.zeros((4, 4)), a) == 0.0  # a blank map ranks nothing


def test_curves_reward_the_true_order_and_punish_its_reverse(phantom):
    """Deletion by Grad-CAM's own order lowers the similarity faster than random; deleting in
    the reverse order (the least attributed first) is slower than random."""
    from explorer.attribution import attribute_image

    model, pixels = phantom
    prompt = "there is a pleural effusion"
    cam = attribute_image(model, pixels, prompt, "gradcam").model_attribution
    deletion, deletion_random, insertion, insertion_random = deletion_insertion(
        model, pixels, prompt, cam
    )
    assert deletion < deletion_random and insertion > insertion_random
    reverse = deletion_insertion(model, pixels, prompt, -cam)
    assert reverse[0] > deletion_random and reverse[2] < insertion_random


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_the_phantom_models_maps_pass_the_randomisation_check(phantom, method):
    model, pixels = phantom
    report = trust_report(model, pixels, "there is a pleural effusion", method)
    assert report.passes_randomisation and report.randomised_tensors > 0
    assert report.sentence().startswith("**Can this map be trusted?**")
    assert ("explains the model" in report.sentence()) == report.passes_randomisation
