"""The domain guard on a tiny ConvNeXt dual encoder and on hand-made feature clouds."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from explorer import guard
from explorer.guard import (
    PHANTOM_TAG,
    TYPICALITY_THRESHOLD,
    fit_reference,
    image_features,
    judge,
    phantom_reference,
    typicality,
)
from explorer.imaging import load_radiograph
from explorer.models import ModelRegistry
from explorer.models.tiny import TINY_CONVNEXT_NAME, tiny_convnext_spec
from explorer.paths import examples_dir
from explorer.phantom.sets import build_phantom_set
from explorer.phantom.splits import HELDOUT_SEED

#: Training phantoms in the tiny model's reference (small: the test renders them).
COUNT = 90


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    spec = tiny_convnext_spec(tmp_path_factory.mktemp("tiny"))
    phantom = replace(spec, name="tiny-phantom", tags=(*spec.tags, PHANTOM_TAG))
    return ModelRegistry((spec, phantom))


@pytest.fixture(scope="module")
def model(registry):
    return registry.load("tiny-phantom", "cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(model, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        return phantom_reference(model, COUNT)


def test_cloud_centre_is_typical_and_far_point_is_not():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 5))
    ref = fit_reference("cloud", feats, "300 points")
    assert len(ref.calibration) == 100 and np.all(np.diff(ref.calibration) >= 0)
    centre = judge(ref, np.zeros(5))
    far = judge(ref, np.full(5, 8.0))
    assert centre.typicality == 1.0 and not centre.outside
    assert far.typicality == 0.0 and far.outside
    assert "Outside cloud's training domain" in far.sentence and "typicality 0.0%" in far.sentence
    # each calibration point is as typical as its rank says
    assert ref.typicality(ref.calibration[-1]) == pytest.approx(1 / 100)
    with pytest.raises(ValueError, match="at least 8"):
        fit_reference("cloud", feats[:5], "5 points")


def test_phantoms_are_typical_and_other_images_are_not(model, reference):
    size = model.preprocess_cfg.image_size
    held = build_phantom_set(24, HELDOUT_SEED, size, cache=False)
    held_typ = reference.typicality(
        reference.distances(image_features(model, held.pixels(range(24))))
    )
    assert np.median(held_typ) > 0.2
    assert (held_typ >= TYPICALITY_THRESHOLD).mean() >= 0.9
    real = load_radiograph(examples_dir() / "00000001_000.png").pixels
    noise = np.random.default_rng(1).random((size, size), dtype=np.float32)
    for other in (real, noise):
        result = typicality(model, other, reference)
        assert result.outside and result.typicality < TYPICALITY_THRESHOLD
        assert result.distance > reference.percentile(99)


def test_reference_is_deterministic_and_cached(model, reference, cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    assert reference.seconds > 0  # computed the first time
    files = list((cache / "domain").glob("tiny-phantom-*.npz"))
    assert len(files) == 1

    def no_render(*args, **kwargs):
        raise AssertionError("the cached reference should have been read")

    monkeypatch.setattr("explorer.phantom.sets.build_phantom_set", no_render)
    again = phantom_reference(model, COUNT)
    assert again.seconds == 0.0 and again.fingerprint == reference.fingerprint
    np.testing.assert_array_equal(again.mean, reference.mean)
    np.testing.assert_array_equal(again.calibration, reference.calibration)
    # computed afresh (no cache) it comes out the same
    monkeypatch.undo()
    fresh = phantom_reference(model, COUNT, cache=False)
    np.testing.assert_allclose(fresh.calibration, reference.calibration, rtol=1e-6)
    image = load_radiograph(examples_dir() / "phantom-normal.png").pixels
    assert typicality(model, image, reference) == typicality(model, image, fresh)


def test_domain_reference_once_per_model_and_none_without_training_images(
    registry, model, cache, monkeypatch
):
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    monkeypatch.setattr(guard, "REFERENCE_COUNT", COUNT)
    first = guard.domain_reference(model)
    assert first is not None and guard.domain_reference(model) is first
    plain = registry.load(TINY_CONVNEXT_NAME, "cpu")
    assert guard.domain_reference(plain) is None
    result = typicality(plain, np.zeros((64, 64), np.float32))
    assert not result.has_reference and not result.outside and result.typicality is None
    assert result.sentence.startswith(f"No domain check for {TINY_CONVNEXT_NAME}")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["has_reference"] is False and data["typicality"] is None


def test_result_round_trips_to_json(model, reference):
    image = load_radiograph(examples_dir() / "siim-pneumothorax-sample.dcm").pixels
    data = json.loads(json.dumps(typicality(model, image, reference).to_dict()))
    assert data["outside"] is True and data["has_reference"] is True
    assert 0.0 <= data["typicality"] < data["threshold"]
    assert data["reference"].startswith(f"{COUNT} training phantoms")


def test_score_command_reports_the_domain(capsys):
    """``score --json`` carries the guard's figure; the text output warns in one line."""
    from conftest import default_model_ready

    from explorer.cli import main

    if not default_model_ready():
        pytest.skip("embedded default model not built")
    film = str(examples_dir() / "00027426_000.png")
    assert main(["score", film, "--json", "--template", "there_is"]) == 0
    domain = json.loads(capsys.readouterr().out)["domain"]
    assert domain["model"] == "phantom-negaware" and domain["outside"] is True
    assert domain["typicality"] < domain["threshold"] and domain["distance"] > 0
    phantom = str(examples_dir() / "phantom-normal.png")
    assert main(["score", phantom, "--template", "there_is"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("domain: Within phantom-negaware's training domain")


@pytest.mark.slow
def test_every_shipped_real_film_is_outside_a_phantom_models_domain():
    """All 300 films of the shipped nih-test set (and the real examples) get the warning."""
    from conftest import default_model_ready

    from explorer.data import named_manifest
    from explorer.models import default_registry

    if not default_model_ready():
        pytest.skip("embedded default model not built")
    model = default_registry().load("phantom-negaware")
    films = [row.pixels() for row in named_manifest("nih-test")]
    films += [
        load_radiograph(examples_dir() / name).pixels
        for name in ("00000001_000.png", "00027426_000.png", "siim-pneumothorax-sample.dcm")
    ]
    judged = [typicality(model, pixels) for pixels in films]
    assert len(judged) == 303 and all(t.has_reference for t in judged)
    assert [t for t in judged if not t.outside] == []
