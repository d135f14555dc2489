"""The three training losses on small cases computed by hand, and the soft-label definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explorer.training.losses import info_nce, negation_aware_loss, soft_label_loss
from explorer.vocab.labels import NEGATIVE, POSITIVE, UNCERTAIN
from explorer.vocab.soft_labels import clinical_similarity, label_vector, soft_targets

EYE = torch.eye(2)
ONE = torch.tensor(1.0)
# -log softmax([1, 0])[0] = log(1 + e^-1)
CE_1_0 = math.log(1 + math.exp(-1))


def test_label_vector_encoding():
    labels = {"a": POSITIVE, "b": NEGATIVE, "c": UNCERTAIN, "d": None}
    np.testing.assert_array_equal(
        label_vector(labels, ["a", "b", "c", "d", "e"]), [1.0, -1.0, 0.5, 0.0, 0.0]
    )


def test_clinical_similarity_by_hand():
    a = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    s = clinical_similarity(a)
    assert s[0, 0] == pytest.approx(1.0)
    assert s[0, 1] == pytest.approx(0.0)  # cos = 0
    b = np.array([[-1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    s2 = clinical_similarity(a[:1], b)
    assert s2[0, 0] == 0.0  # contradiction clips to 0
    assert s2[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert s[2, 2] == 0.0  # all-blank vectors are alike to nothing


def test_soft_targets_rows_are_distributions():
    sim = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = soft_targets(sim, mix=0.5, temperature=0.1)
    torch.testing.assert_close(y.sum(dim=1), torch.ones(3))
    assert (y.diagonal() >= 0.5).all()
    assert y[0, 1] > y[0, 2]  # clinically alike pairs share the mass
    torch.testing.assert_close(soft_targets(sim, mix=0.0, temperature=0.1), torch.eye(3))


def test_info_nce_by_hand():
    assert info_nce(EYE, EYE, ONE).item() == pytest.approx(CE_1_0, abs=1e-6)


def test_soft_label_loss_reduces_to_info_nce_without_mixing():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    sim = torch.rand(5, 5)
    scale = torch.tensor(7.0)
    assert soft_label_loss(img, txt, scale, sim, mix=0.0).item() == pytest.approx(
        info_nce(img, txt, scale).item(), abs=1e-5
    )


def test_soft_label_loss_by_hand():
    # S all ones, mix 0.5 -> Y = [[.75, .25], [.25, .75]]; logits = I
    expected = 0.75 * CE_1_0 + 0.25 * (1 + CE_1_0)
    loss = soft_label_loss(EYE, EYE, ONE, torch.ones(2, 2), mix=0.5, temperature=0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_negation_aware_loss_by_hand():
    negated = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # image 0's flipped text equals its true text
    has = torch.tensor([True, False])
    sim = torch.zeros(2, 2)
    loss = negation_aware_loss(EYE, EYE, negated, has, ONE, sim, mix=0.0)
    row0 = math.log(2 + math.exp(-1))  # -log(e / (2e + 1))
    expected = 0.5 * ((row0 + CE_1_0) / 2 + CE_1_0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # without any flipped text it is the soft-label loss
    none = negation_aware_loss(EYE, EYE, negated, torch.tensor([False, False]), ONE, sim, mix=0.0)
    assert none.item() == pytest.approx(
        soft_label_loss(EYE, EYE, ONE, sim, mix=0.0).item(), abs=1e-6
    )


def test_negation_aware_gradient_pushes_image_from_negated_text():
    img = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=-1
    ).requires_grad_()
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    neg = torch.nn.functional.normalize(torch.tensor([[0.9, 0.4], [0.0, 1.0]]), dim=-1)
    loss = negation_aware_loss(
        img, txt, neg, torch.tensor([True, False]), torch.tensor(10.0), torch.eye(2), mix=0.0
    )
    loss.backward()
    step = -img.grad[0]  # gradient descent direction for image 0
    assert torch.dot(step, neg[0] - txt[0]).item() < 0  # moves away from the flipped text
