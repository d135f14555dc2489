"""The linear probe: the supervised upper bound of the zero-shot benchmark."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explorer.data.table import read_manifest
from explorer.eval.probe import fit_probes, format_probe_table, run_linear_probe
from explorer.models import ModelRegistry
from explorer.models.tiny import TINY_CONVNEXT_NAME, tiny_convnext_spec


def test_probes_rank_by_the_feature_that_carries_the_finding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = np.stack([x[:, 2] > 0.3, np.arange(200) < 3], axis=1).astype(float)
    score = fit_probes(x, y, ("Edema", "Rare"))
    test = rng.normal(size=(50, 6))
    out = score(test)
    assert set(out) == {"Edema"}  # too few positives for the other finding: no probe
    assert np.corrcoef(out["Edema"], test[:, 2])[0, 1] > 0.9


def _manifest(folder, name: str, patients: range):
    """Films whose Cardiomegaly label is their brightness (bright: present)."""
    rng = np.random.default_rng(len(name))
    lines = ["file,patient_id,Cardiomegaly,Effusion"]
    for p in patients:
        for k in range(2):
            bright = (p + k) % 2
            img = rng.random((48, 40)) * 80 + (150 if bright else 20)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{p}-{k}.png")
            lines.append(f"{p}-{k}.png,{p},{bright},{int(rng.random() < 0.5)}")
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(folder / f"{name}.csv", folder, name=name)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = tiny_convnext_spec(tmp_path_factory.mktemp("tiny"))
    return ModelRegistry((spec,)).load(TINY_CONVNEXT_NAME, "cpu")


def test_a_probe_finds_what_the_tower_sees_on_held_out_patients(model, tmp_path):
    train = _manifest(tmp_path, "train", range(0, 30))
    test = _manifest(tmp_path, "test", range(100, 115))
    result = run_linear_probe(model, train, test, min_cases=5, resamples=200)
    assert result.train_films == 60 and result.test_films == 30
    assert result.auc["Cardiomegaly"] > 0.95  # brightness: any tower sees it
    assert 0.2 < result.auc["Pleural Effusion"] < 0.8  # a coin flip: nothing to see
    low, high = result.auc_ci["Cardiomegaly"]
    assert low <= result.auc["Cardiomegaly"] <= high
    table = format_probe_table([result])
    assert "AUC Cardiomegaly" in table and "train -> test" in table


def test_a_probe_refuses_test_patients_it_was_fitted_on(model, tmp_path):
    train = _manifest(tmp_path, "train", range(0, 10))
    with pytest.raises(ValueError, match="10 patients are in both"):
        run_linear_probe(model, train, train)
