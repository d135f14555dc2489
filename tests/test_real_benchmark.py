"""The negation benchmark on a hand-built manifest of real and phantom films.

The manifest mixes the two shipped real NIH films with phantoms rendered here and written as PNG
files, with labels known by construction, so each figure can be recomputed independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from explorer.data.manifest import Box, Manifest, ManifestRow
from explorer.eval.real_benchmark import (
    format_manifest_table,
    row_texts,
    run_manifest_benchmark,
    task_a_difference,
)
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs
from explorer.phantom import render_phantom
from explorer.reports.writer import NORMAL_SENTENCE, omit_finding, write_report
from explorer.scoring import score_findings
from explorer.vocab.prompts import prompt_pair

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "examples"
REAL = ("00000001_000.png", "00027426_000.png")
FINDINGS = ("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    """24 films: 22 phantoms (11 with an effusion, 11 without) and the two real NIH films.

    Pleural Effusion is the phantom's truth (12+ / 11-: one real film negative, one uncertain);
    Cardiomegaly has 11+ / 13-; Pneumothorax 8+ / 14- (left out of the AUC table), blank on
    the real films; patient "p0" has eight films.
    """
    folder = tmp_path_factory.mktemp("films")
    with_eff, without = [], []
    seed = 0
    while len(with_eff) < 12 or len(without) < 10:
        ph = render_phantom(seed, size=64)
        (with_eff if any("effusion" in n for n in ph.names) else without).append((seed, ph.image))
        seed += 1
    rows = []
    for k, (s, image) in enumerate(with_eff[:12] + without[:10]):
        path = folder / f"phantom-{s}.png"
        Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).save(path)
        eff = int(k < 12)
        labels = {
            "No Finding": 0 if eff else 1,
            "Cardiomegaly": int(k % 2 == 0 and k < 18),  # 9 positives
            "Pleural Effusion": eff,
            "Pneumothorax": int(k % 3 == 0),
        }
        rows.append(ManifestRow(path.name, path, labels, patient_id="p0" if k < 8 else f"p{k}"))
    for name, effusion in zip(REAL, (0, -1), strict=True):  # the second film: uncertain
        labels = {
            "No Finding": 0,
            "Cardiomegaly": 1,
            "Pleural Effusion": effusion,
            "Pneumothorax": None,
        }
        rows.append(ManifestRow(name, ASSETS / name, labels, patient_id=name[:8]))
    return Manifest("hand-built", tuple(rows), (), FINDINGS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = build_tiny_specs(tmp_path_factory.mktemp("tiny"))[1]  # tiny transformers CLIP
    return ModelRegistry([spec]).load(spec.name, "cpu")


@pytest.fixture(scope="module")
def result(tiny, manifest):
    return run_manifest_benchmark(tiny, manifest, resamples=200, pointing_methods=())


def test_auc_matches_an_independent_computation(tiny, manifest, result):
    # per-image scores from the app's own scoring path, AUC from scikit-learn
    probs = np.array(
        [score_findings(tiny, r.pixels()).score("Pleural Effusion").prob_affirmed for r in manifest]
    )
    truth = manifest.label_matrix()[:, FINDINGS.index("Pleural Effusion")]
    known = truth >= 0  # the uncertain film is left out
    expected = roc_auc_score(truth[known], probs[known])
    assert result.auc["Pleural Effusion"] == pytest.approx(expected, abs=1e-6)
    assert result.cases["Pleural Effusion"] == (12, 11)
    assert result.mean_auc == pytest.approx(np.mean(list(result.auc.values())))


def test_finding_filter_needs_ten_positives_and_ten_negatives(result):
    assert result.cases["Cardiomegaly"] == (11, 13)  # 9 phantoms + the two real films
    assert result.cases["Pneumothorax"] == (8, 14)  # blank on the real films
    assert set(result.auc) == {"No Finding", "Cardiomegaly", "Pleural Effusion"}
    assert result.images == 24 and result.patients == 24 - 7


def test_fewer_cases_drop_a_finding(tiny, manifest):
    fewer = Manifest("fewer", manifest.rows[3:], (), FINDINGS)
    out = run_manifest_benchmark(tiny, fewer, resamples=20, pointing_methods=())
    assert out.cases["Cardiomegaly"] == (9, 12) and out.cases["Pleural Effusion"] == (9, 11)
    assert set(out.auc) == {"No Finding"}  # 10+ / 11-
    assert "Left out" in format_manifest_table([out])


def test_intervals_contain_the_point_estimates(result):
    for f, auc in result.auc.items():
        low, high = result.auc_ci[f]
        assert low <= auc <= high
    assert result.mean_auc_ci[0] <= result.mean_auc <= result.mean_auc_ci[1]
    assert result.task_a_ci[0] <= result.task_a <= result.task_a_ci[1]
    assert result.mean_auc_ci[0] < result.mean_auc_ci[1]  # 24 films: not a point


def test_task_a_from_written_reports(tiny, manifest, result):
    texts = [row_texts(r) for r in manifest]
    assert {t.source for t in texts} == {"written"}
    rows = [k for k, t in enumerate(texts) if t.negated is not None]
    # every film with a present finding other than No Finding gets a task
    present = [
        k
        for k, r in enumerate(manifest)
        if any(v == 1 for f, v in r.labels.items() if f != "No Finding")
    ]
    assert rows == present and result.task_a_n == len(rows)
    assert result.task_a_sources == {"written": len(rows)}
    img = torch.cat([tiny.embed_image(manifest.rows[k].pixels()).float() for k in rows])
    true = tiny.embed_texts([texts[k].true for k in rows]).float()
    neg = tiny.embed_texts([texts[k].negated for k in rows]).float()
    omit = tiny.embed_texts([texts[k].omitted for k in rows]).float()
    right_a = ((img * true).sum(-1) > (img * neg).sum(-1)).numpy()
    right_b = right_a & ((img * true).sum(-1) > (img * omit).sum(-1)).numpy()
    assert result.task_a == pytest.approx(right_a.mean(), abs=1e-6)
    assert result.task_b == pytest.approx(right_b.mean(), abs=1e-6)


def test_task_a_of_two_models_is_compared_on_the_same_rows(manifest, result, tmp_path):
    from dataclasses import replace

    assert [v >= 0 for v in result.task_a_rows].count(True) == result.task_a_n
    same = task_a_difference(result, result, manifest.patients(), resamples=100)
    assert same.difference == 0 and same.ci == (0.0, 0.0)
    spec = build_tiny_specs(tmp_path)[3]  # another tiny model: other answers on the same rows
    other = run_manifest_benchmark(
        ModelRegistry([spec]).load(spec.name, "cpu"), manifest, resamples=50, pointing_methods=()
    )
    diff = task_a_difference(result, other, manifest.patients(), resamples=200)
    assert diff.difference == pytest.approx(result.task_a - other.task_a)
    assert diff.ci[0] <= diff.difference <= diff.ci[1] and diff.rows == result.task_a_n
    with pytest.raises(ValueError, match="same rows"):
        task_a_difference(result, replace(other, seed=1), manifest.patients())


def test_task_texts_from_given_and_cxr_align_reports():
    labels = {"Pleural Effusion": 1, "Pneumothorax": 0}
    given = ManifestRow(
        "a", ASSETS / REAL[0], labels, report="Small left pleural effusion. No pneumothorax."
    )
    t = row_texts(given)
    assert t.source == "report" and t.finding == "Pleural Effusion"
    assert t.negated == "No left pleural effusion. No pneumothorax."
    assert t.omitted == "No pneumothorax."
    align = ManifestRow(
        "b",
        ASSETS / REAL[1],
        {"Cardiomegaly": 1},
        report="The heart is enlarged.",
        extra={"chosen": "Cardiomegaly", "negation": "The heart is not enlarged.", "omitted": ""},
    )
    t = row_texts(align)
    assert (t.source, t.negated, t.omitted, t.finding) == (
        "cxr-align",
        "The heart is not enlarged.",
        None,
        "Cardiomegaly",
    )
    normal = ManifestRow("c", ASSETS / REAL[0], {"No Finding": 1, "Pneumothorax": 0})
    t = row_texts(normal)
    assert t.negated is None and t.true.startswith(NORMAL_SENTENCE)


def test_given_reports_run_through_the_benchmark(tiny):
    rows = [
        ManifestRow(
            f"r{k}",
            ASSETS / REAL[k % 2],
            {"Pleural Effusion": 1},
            report="Moderate right pleural effusion.",
        )
        for k in range(3)
    ]
    out = run_manifest_benchmark(
        tiny, Manifest("reports", tuple(rows)), resamples=10, pointing_methods=()
    )
    assert out.task_a_n == 3 and out.task_a_sources == {"report": 3}
    assert out.auc == {}  # one class only
    assert np.isnan(out.mean_auc)


def test_task_texts_cut_by_the_model_are_counted_and_said(tiny):
    long = "Moderate right pleural effusion. " + "Stable appearance of the chest. " * 60
    rows = [
        ManifestRow(f"r{k}", ASSETS / REAL[k % 2], {"Pleural Effusion": 1}, report=long)
        for k in range(2)
    ]
    out = run_manifest_benchmark(
        tiny, Manifest("long", tuple(rows)), resamples=10, pointing_methods=()
    )
    assert out.text_limit == tiny.max_text_tokens
    assert out.task_texts_truncated == 6  # true, negated and omitted of both rows
    assert f"reads at most {tiny.max_text_tokens} tokens: 6 task texts" in format_manifest_table(
        [out]
    )


def test_written_report_follows_its_rules():
    labels = {
        "No Finding": 0,
        "Pneumothorax": 0,
        "Cardiomegaly": 1,
        "Edema": -1,
        "Fracture": None,
        "Emphysema": 1,
    }
    text = write_report(labels, seed=3)
    assert text == write_report(labels, seed=3)
    sentences = text.split(". ")
    assert len(sentences) == 4  # stated in label order (hedged too), then the negative
    assert "cardiomegaly" in sentences[0].lower() and "emphysema" in sentences[2].lower()
    assert sentences[1] == "Possible pulmonary edema"
    assert "no" in sentences[3].lower() and "pneumothorax" in sentences[3]
    assert "fracture" not in text.lower()
    assert write_report({"No Finding": 1, "Pneumothorax": 0}).startswith(NORMAL_SENTENCE)
    phrasings = {write_report({"Cardiomegaly": 1}, seed=s) for s in range(40)}
    assert len(phrasings) > 2
    assert omit_finding("Cardiomegaly. No emphysema.", "Emphysema") == "Cardiomegaly."


def test_pointing_on_a_box(tiny):
    from explorer.attribution import attribute_image

    path = ASSETS / REAL[0]
    pixels = ManifestRow("x", path, {}).pixels()
    prompt = prompt_pair("Cardiomegaly", "there_is").affirmed
    attr = attribute_image(tiny, pixels, prompt, "gradcam").attribution
    row, col = np.unravel_index(int(np.argmax(attr)), attr.shape)
    far_row, far_col = (
        (row + attr.shape[0] // 2) % attr.shape[0],
        (col + attr.shape[1] // 2) % attr.shape[1],
    )
    boxes = (
        Box("Cardiomegaly", col - 1, row - 1, 3, 3),  # around the peak: a hit
        Box("Cardiomegaly", far_col, far_row, 2, 2),  # half an image away: a miss
    )
    rows = (ManifestRow("boxed", path, {"Cardiomegaly": 1}, boxes=boxes),)
    out = run_manifest_benchmark(
        tiny, Manifest("boxed", rows), resamples=5, pointing_methods=("gradcam",)
    )
    assert out.pointing_n == 2 and out.pointing == {"gradcam": 0.5}
    assert out.pointing_per_finding == {"gradcam": {"Cardiomegaly": 0.5}}
    # the box around the peak holds more of the map than the one half an image away
    from explorer.eval.metrics import relevance_mass

    near, far = (relevance_mass(attr, b.mask(attr.shape, pixels.shape)) for b in boxes)
    assert near > far
    assert out.relevance_mass["gradcam"] == pytest.approx((near + far) / 2)
    assert 0 <= out.relevance_rank["gradcam"] <= 1


@pytest.mark.slow
def test_phantom_negaware_on_the_manifest(manifest):
    from explorer.models import load_model

    model = load_model("phantom-negaware")
    out = run_manifest_benchmark(model, manifest, resamples=100, pointing_methods=())
    # a model trained on phantoms sees their effusions
    assert out.auc["Pleural Effusion"] > 0.8
    assert 0.0 <= out.task_a <= 1.0 and out.task_b <= out.task_a
    data = json.loads(json.dumps(out.as_dict()))
    assert data["model"] == "phantom-negaware" and len(data["mean_auc_ci"]) == 2


def test_cli_benchmark_on_a_manifest(tiny, manifest, monkeypatch, capsys, tmp_path):
    import explorer.data
    import explorer.models
    from explorer.cli import main

    table = tmp_path / "films.csv"
    table.write_text("file\n")
    seen = {}

    def fake_reader(path, root):
        seen["args"] = (Path(path), root)
        return manifest

    monkeypatch.setattr(explorer.data, "read_manifest", fake_reader, raising=False)
    monkeypatch.setattr(explorer.models, "load_model", lambda name: tiny)
    assert (
        main(
            [
                "benchmark",
                "--model",
                "t",
                "--manifest",
                str(table),
                "--images-root",
                "/films",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert seen["args"] == (table, "/films")
    assert data["manifest"] == "hand-built" and data["benchmark"][0]["images"] == 24
    assert set(data["benchmark"][0]) >= {"mean_auc", "task_a", "task_b", "auc", "auc_ci"}
    monkeypatch.undo()  # the real reader: a missing table is a sentence and exit 2
    assert main(["benchmark", "--model", "t", "--manifest", str(tmp_path / "nope.csv")]) == 2
