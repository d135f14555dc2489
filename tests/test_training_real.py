"""Training on real films and real reports: films, matched reports, views, augmentation, a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.data.table import read_manifest
from explorer.training.real import (
    REAL_FINDINGS,
    RealTraining,
    ReportPool,
    match_reports,
    matched_view,
    prompt_view,
    read_films,
    training_manifest,
    written_view,
)
from explorer.vocab.negation import is_negated
from explorer.vocab.soft_labels import label_vector

NIH = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
]
#: (file, patient, positives) of the tiny manifest
FILMS = [
    ("a.png", "1", ["Cardiomegaly", "Effusion"]),
    ("b.png", "1", ["Cardiomegaly"]),
    ("c.png", "2", ["No Finding"]),
    ("d.png", "3", ["No Finding"]),
    ("e.png", "4", ["Effusion", "Atelectasis"]),
    ("f.png", "5", ["Pneumothorax"]),
]
REPORTS = (
    "The heart is enlarged. There is a small left pleural effusion.",
    "Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "There is a right pneumothorax. No pleural effusion.",
    "Cardiomegaly. No focal consolidation.",
)


def _manifest(tmp: Path):
    rng = np.random.default_rng(0)
    lines = ["file,patient_id," + ",".join(NIH)]
    for name, patient, positives in FILMS:
        img = (rng.random((48, 40)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp / name)
        lines.append(f"{name},{patient}," + ",".join("1" if f in positives else "0" for f in NIH))
    (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp / "labels.csv"


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    from explorer.reports.labeler import label_reports

    tmp = tmp_path_factory.mktemp("films")
    films = read_films(read_manifest(_manifest(tmp)), 32, tmp / "cache")
    labels = label_reports(REPORTS)
    pool = ReportPool(
        REPORTS, tuple(labels), np.stack([label_vector(d, REAL_FINDINGS) for d in labels])
    )
    return RealTraining(films, pool, match_reports(films, pool, 2))


def _j(finding: str) -> int:
    return REAL_FINDINGS.index(finding)


def test_films_are_read_at_the_size_with_their_nih_labels(real_set, tmp_path):
    films = real_set.films
    assert films.images.shape == (6, 32, 32) and films.images.dtype == np.uint8
    assert films.labels[0]["Pleural Effusion"] == 1 and films.labels[0]["Pneumothorax"] == 0
    assert films.claims[0, _j("Cardiomegaly")] == 1 and films.claims[0, _j("Edema")] == -1
    # NIH has no Fracture label: blank, not negative
    assert films.claims[0, _j("Fracture")] == 0
    k = films.findings.index("Cardiomegaly")
    assert list(films.truth[:, k] > 0) == [True, True, False, False, False, False]
    assert films.patients[:2] == ("1", "1")


def test_the_resized_films_are_cached(real_set, tmp_path):
    manifest = read_manifest(_manifest(tmp_path))
    first = read_films(manifest, 32, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("films-*.npz"))) == 1
    again = read_films(manifest, 32, tmp_path / "cache")
    assert np.array_equal(first.images, again.images)
    assert read_films(manifest, 24, tmp_path / "cache").fingerprint != first.fingerprint


def test_matched_reports_are_the_clinically_closest(real_set):
    # film a (cardiomegaly + effusion) is closest to the report that says both
    assert real_set.matches[0][0] == 0
    # the normal films are closest to the normal report
    assert real_set.matches[2][0] == 1 and real_set.matches[3][0] == 1
    # the pneumothorax film to the pneumothorax report
    assert real_set.matches[5][0] == 2


def test_prompt_views_are_true_of_the_film_and_twin_with_the_other_prompt(real_set):
    rng = np.random.default_rng(0)
    for _ in range(40):
        for i, labels in enumerate(real_set.films.labels):
            view = prompt_view(labels, rng, ())
            j = _j(view.flipped)
            assert view.claims[j] == real_set.films.claims[i, j] != 0
            assert view.negated_claims[j] == -view.claims[j]
            # No Finding is inverted: "there is no acute cardiopulmonary abnormality" affirms it
            denies = (view.claims[j] < 0) != (view.flipped == "No Finding")
            assert is_negated(view.text) == denies
            assert is_negated(view.negated) == (not denies)


def test_no_finding_is_taught_both_ways_so_its_zero_shot_pair_means_something(real_set):
    # Without these views a negation-aware model ranked normal films below abnormal ones on
    # the No Finding pair (nih-test AUC 0.30): "there is acute cardiopulmonary abnormality"
    # had never been shown next to an abnormal film.
    rng = np.random.default_rng(4)
    normal, abnormal = real_set.films.labels[2], real_set.films.labels[0]
    for labels, claim in ((normal, 1), (abnormal, -1)):
        views = [prompt_view(labels, rng, ()) for _ in range(80)]
        about = [v for v in views if v.flipped == "No Finding"]
        assert about and all(v.claims[_j("No Finding")] == claim for v in about)
        # the normal film is told "no acute cardiopulmonary abnormality", the abnormal one not
        assert all(is_negated(v.text) == (claim > 0) for v in about)
        assert all("acute cardiopulmonary abnormality" in v.text for v in about)
    # a normal film's written report has its normality negated as the hard negative
    view = written_view(normal, rng, 1.0, True)
    assert view.flipped == "No Finding" and view.claims[_j("No Finding")] == 1
    assert "acute cardiopulmonary abnormality" in view.negated.lower()
    assert view.negated_claims[_j("No Finding")] == -1


def test_affirming_a_finding_in_a_normal_report_makes_it_abnormal():
    from explorer.training.real import _flip

    labels = {"No Finding": 1, "Pleural Effusion": 0}
    text = "No pleural effusion."  # the normality sentence itself is not there to negate
    claims = label_vector(labels, REAL_FINDINGS)
    flipped, out, finding = _flip(text, labels, claims, np.random.default_rng(0))
    assert finding == "Pleural Effusion" and not is_negated(flipped)
    assert out[_j("Pleural Effusion")] == 1 and out[_j("No Finding")] == -1


def test_written_views_state_the_labels_and_negate_a_present_finding(real_set):
    rng = np.random.default_rng(1)
    labels = real_set.films.labels[0]  # cardiomegaly and effusion
    for _ in range(10):
        view = written_view(labels, rng, 0.5, True)
        assert "cardiomegaly" in view.text.lower() and "effusion" in view.text.lower()
        assert view.claims[_j("Cardiomegaly")] == 1 and view.claims[_j("Pleural Effusion")] == 1
        assert view.flipped in ("Cardiomegaly", "Pleural Effusion")
        assert view.negated != view.text and view.negated_claims[_j(view.flipped)] == -1


def test_matched_views_negate_a_finding_the_film_has(real_set):
    rng = np.random.default_rng(2)
    view = matched_view(real_set.films.labels[0], np.array([0]), real_set.pool, rng, True)
    assert view.text == REPORTS[0]
    assert view.flipped in ("Cardiomegaly", "Pleural Effusion")
    assert view.negated != view.text
    assert view.claims[_j(view.flipped)] == 1 and view.negated_claims[_j(view.flipped)] == -1


def test_views_mix_the_three_kinds_as_configured(real_set):
    from types import SimpleNamespace

    cfg = SimpleNamespace(p_prompt=0.0, p_written=0.0, p_full_report=1.0, prompt_templates=())
    rng = np.random.default_rng(3)
    views = real_set.views(np.arange(6), rng, cfg, True)
    assert all(v.text in REPORTS for v in views)
    cfg = SimpleNamespace(p_prompt=1.0, p_written=0.0, p_full_report=1.0, prompt_templates=())
    views = real_set.views(np.arange(6), rng, cfg, True)
    assert all(len(v.text.split()) <= 6 for v in views)
    assert real_set.image_claims([0, 2]).shape == (2, len(REAL_FINDINGS))


def test_radiograph_augment_moves_a_little_and_never_flips():
    from explorer.training.pretrain import radiograph_augment

    images = np.zeros((16, 64, 64), dtype=np.float32)
    images[:, :, :20] = 1.0  # bright on the image's left
    out = radiograph_augment(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    left, right = out[:, :, :24].mean(axis=(1, 2)), out[:, :, 40:].mean(axis=(1, 2))
    assert (left > 0.6).all() and (right < 0.2).all()
    assert not np.allclose(out[0], out[1])  # each image its own transform
    again = radiograph_augment(images, np.random.default_rng(0))
    assert np.array_equal(out, again)


def test_a_run_resumes_only_on_the_same_report_labels(real_set):
    """A labeler change relabels the pool: the checkpoints of the old labels must not resume."""
    from explorer.training.trainer import TrainConfig, run_fingerprint

    cfg = TrainConfig(name="x", data="real")
    relabelled = ReportPool(
        real_set.pool.texts,
        tuple(d | {"Hernia": 1} for d in real_set.pool.labels),
        real_set.pool.claims,
    )
    other = RealTraining(real_set.films, relabelled, real_set.matches)
    assert run_fingerprint(cfg, real_set) == run_fingerprint(cfg, real_set)
    assert run_fingerprint(cfg, other) != run_fingerprint(cfg, real_set)


def test_the_held_out_test_set_cannot_be_trained_on():
    with pytest.raises(ValueError, match="never be trained on"):
        training_manifest("nih-test")


@pytest.mark.slow
def test_a_real_config_trains_both_stages_and_exports(tmp_path, monkeypatch):
    from explorer.training import real
    from explorer.training.trainer import TrainConfig, load_vision_tower, train

    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    table = _manifest(tmp_path)
    pool = ReportPool(REPORTS, tuple({} for _ in REPORTS), np.zeros((4, len(REAL_FINDINGS))))
    monkeypatch.setattr(real, "iu_report_pool", lambda cache_dir=None: pool)
    cfg = {
        "name": "tiny-real",
        "loss": "negaware",
        "data": "real",
        "manifest": str(table),
        "out_dir": str(tmp_path / "out"),
        "work_dir": str(tmp_path / "work"),
        "steps": 3,
        "batch_size": 4,
        "warmup_steps": 1,
        "p_prompt": 0.4,
        "p_written": 0.3,
        "match_top_k": 2,
        "log_every": 1,
        "pretrained_text": False,
        "lock_image": True,
        "vision_pretrain": {
            "steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
            "augment": "radiograph",
        },
        "model": {
            "image_size": 32,
            "convnext_widths": [8, 16],
            "convnext_depths": [1, 1],
            "projection_dim": 16,
        },
    }
    path = tmp_path / "tiny-real.json"
    path.write_text(json.dumps(cfg))
    out = train(TrainConfig.from_file(path), progress=False)
    meta = json.loads((out / "training_config.json").read_text())
    assert meta["config"]["data"] == "real" and meta["stage1"]["steps"] == 3
    rows = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]
    # the exported tower can start another run (vision_init), and only a matching one
    from explorer.training.model import EncoderConfig, build_dual_encoder

    model, _ = build_dual_encoder(
        EncoderConfig(image_size=32, convnext_widths=(8, 16), convnext_depths=(1, 1)),
        pretrained_text=False,
    )
    load_vision_tower(model.vision_model, out)
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    key = next(k for k in saved if k.startswith("vision_model."))
    got = model.vision_model.state_dict()[key[len("vision_model.") :]]
    assert torch.allclose(got, saved[key].float())
    other, _ = build_dual_encoder(EncoderConfig(image_size=32), pretrained_text=False)
    with pytest.raises(ValueError, match="does not fit"):
        load_vision_tower(other.vision_model, out)
