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
    phantom = str(examples_dir() / "phantom-normal.png")
    one = ["--template", "there_is"]
    assert main(["score", film, "--json", "--model", "phantom-negaware", *one]) == 0
    domain = json.loads(capsys.readouterr().out)["domain"]
    assert domain["model"] == "phantom-negaware" and domain["outside"] is True
    assert domain["typicality"] < domain["threshold"] and domain["distance"] > 0
    assert main(["score", phantom, "--model", "phantom-negaware", *one]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("domain: Within phantom-negaware's training domain")
    # the embedded default learned real films: the same film is at home there
    assert main(["score", film, "--json", *one]) == 0
    domain = json.loads(capsys.readouterr().out)["domain"]
    assert domain["model"] == "real-negaware" and domain["outside"] is False
    assert main(["score", film, *one]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("domain: Within real-negaware's training domain")


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


# --- references shipped in a model folder (models trained on films that do not travel) ------


def _films(folder, patients: int = 12, per_patient: int = 2):
    """A tiny manifest of noise films, ``per_patient`` films for each patient."""
    from PIL import Image

    from explorer.data.table import read_manifest

    rng = np.random.default_rng(0)
    lines = ["file,patient_id,Cardiomegaly"]
    for p in range(patients):
        for k in range(per_patient):
            name = f"p{p}-{k}.png"
            Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(folder / name)
            lines.append(f"{name},{p},{k % 2}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(folder / "labels.csv", folder)


@pytest.fixture()
def own_folder_model(tmp_path):
    """A tiny model in a folder of its own (not tagged phantom), loaded afresh per test."""
    spec = tiny_convnext_spec(tmp_path / "model")
    return ModelRegistry((spec,)).load(TINY_CONVNEXT_NAME, "cpu")


def test_a_manifest_reference_holds_whole_patients_apart(own_folder_model, tmp_path):
    manifest = _films(tmp_path)
    ordered = guard._by_patient(manifest.rows)
    patients = [r.patient for r in ordered]
    # each patient's films are together, so the last third shares no patient with the rest
    assert len(set(patients[-8:]) & set(patients[:-8])) == 0
    assert sorted(patients) == sorted(r.patient for r in manifest.rows)
    ref = guard.manifest_reference(own_folder_model, manifest)
    assert len(ref.calibration) == 8 and ref.description.startswith("24 training films of 12")
    films = np.stack([r.pixels() for r in manifest.rows])
    share = ref.typicality(ref.distances(image_features(own_folder_model, films)))
    assert (share >= TYPICALITY_THRESHOLD).mean() > 0.9
    # a real radiograph is nothing like noise films
    film = load_radiograph(examples_dir() / "siim-pneumothorax-sample.dcm").pixels
    assert typicality(own_folder_model, film, ref).outside


def test_a_shipped_reference_is_used_only_with_its_weights(own_folder_model, tmp_path, caplog):
    model = own_folder_model
    assert guard.domain_reference(model) is None  # nothing shipped yet
    ref = guard.manifest_reference(model, _films(tmp_path))
    path = guard.write_reference(ref, model)
    assert path == guard.reference_path(model) and path.name == guard.REFERENCE_FILE
    again = ModelRegistry((model.spec,)).load(TINY_CONVNEXT_NAME, "cpu")  # a new process, say
    shipped = guard.domain_reference(again)
    assert shipped is not None and shipped.description == ref.description
    np.testing.assert_allclose(shipped.calibration, ref.calibration)
    # a reference of other weights is refused when written, and ignored when read
    stale = replace(ref, fingerprint="0" * 16)
    with pytest.raises(ValueError, match="other weights"):
        guard.write_reference(stale, model)
    guard._save(stale, path)
    with caplog.at_level("WARNING"):
        assert guard.shipped_reference(again) is None
    assert "computed with other weights" in caplog.text and "explorer guard" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["real-negaware", "real-infonce"])
def test_real_models_see_nih_films_as_theirs_and_a_negative_as_foreign(name, samples_dir):
    """The shipped reference matches the weights; the held-out NIH films are in its domain, and
    a film shown as its negative (the MONOCHROME1 sample, whose stored values are those of the
    MONOCHROME2 one) is not. (Held-out phantoms are *not* told apart by these towers: 98.5 % of
    200 fall within, measured with ``python -m explorer guard --model NAME --phantoms 200``.)"""
    from explorer.data import named_manifest
    from explorer.models import default_registry

    model = default_registry().load(name)
    ref = guard.domain_reference(model)
    assert ref is not None and "training films" in ref.description
    films = [row.pixels() for row in named_manifest("nih-test")]
    judged = [typicality(model, pixels) for pixels in films]
    assert np.mean([not t.outside for t in judged]) >= 0.95
    negative = load_radiograph(samples_dir / "siim-pneumothorax-sample-monochrome1.dcm").pixels
    positive = load_radiograph(samples_dir / "siim-pneumothorax-sample.dcm").pixels
    assert typicality(model, negative).outside and not typicality(model, positive).outside


def test_guard_command_writes_the_reference_and_judges_sets(own_folder_model, tmp_path, capsys):
    import explorer.models
    from explorer.cli import main

    train, other = tmp_path / "train", tmp_path / "other"
    train.mkdir(), other.mkdir()
    _films(train)
    _films(other, patients=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(explorer.models, "load_model", lambda name: own_folder_model)
        args = ["guard", "--model", "m", "--manifest", str(train / "labels.csv")]
        args += ["--check", str(other / "labels.csv"), "--phantoms", "6", "--write", "--json"]
        assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"].startswith("24 training films of 12 patients")
    films, phantoms = out["checks"]
    assert films["images"] == 6 and films["within"] > 0.5  # more noise films: at home
    assert phantoms["set"] == "6 held-out phantoms" and phantoms["images"] == 6
    assert out["written"] == str(guard.reference_path(own_folder_model))
    assert guard.shipped_reference(own_folder_model).fingerprint == out["fingerprint"]
