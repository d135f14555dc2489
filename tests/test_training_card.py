"""Model cards: written from the training record and the benchmark JSON; the shipped real models
carry theirs, with Hugging Face front matter."""

import json

import pytest
import yaml

from explorer.models.spec import local_path
from explorer.paths import configs_dir
from explorer.training.card import benchmark_table, write_card

REAL_MODELS = ["real-negaware", "real-infonce"]


def _row(model: str, mean: float, task_a: float) -> dict:
    return {
        "model": model,
        "manifest": "tiny-test",
        "auc": {"Cardiomegaly": mean + 0.1, "Edema": mean - 0.1},
        "auc_ci": {"Cardiomegaly": [0.5, 0.9], "Edema": [0.4, 0.8]},
        "cases": {"Cardiomegaly": [12, 30], "Edema": [11, 31], "Hernia": [2, 40]},
        "mean_auc": mean,
        "mean_auc_ci": [mean - 0.05, mean + 0.05],
        "task_a": task_a,
        "task_a_ci": [task_a - 0.07, task_a + 0.07],
        "task_a_n": 30,
        "task_b": 0.4,
        "task_b_ci": None,
        "pointing": {"ig": 0.25},
        "pointing_n": 4,
    }


BENCH = {
    "benchmark": [_row("other", 0.55, 0.52), _row("mine", 0.71, 0.66)],
    "task_a_difference": [
        {"model": "mine", "baseline": "other", "difference": 0.14, "ci": [0.02, 0.25], "rows": 30}
    ],
    "probe": [{"model": "mine", "mean_auc": 0.73, "mean_auc_ci": [0.7, 0.76], "auc": {}}],
}


def test_table_puts_the_model_first_with_intervals_probe_and_paired_difference():
    table = benchmark_table(BENCH, "mine")
    head, _, mean_row, *rest = table.splitlines()
    assert head == "| metric | `mine` | `other` | linear probe |"
    assert mean_row == (
        "| zero-shot AUC, mean (2 findings) | 0.710 [0.660, 0.760] | 0.550 [0.500, 0.600] "
        "| 0.730 [0.700, 0.760] |"
    )
    assert "| AUC Cardiomegaly (12+ / 30-) | 0.810 [0.500, 0.900] |" in table
    assert "Hernia" not in table  # too few films: no AUC, no row
    assert "| task B | 0.400 | 0.400 | - |" in table  # no interval: the value alone
    assert "`mine` minus `other` on the same 30 films: 0.140 [0.020, 0.250]" in table


def test_card_is_written_from_the_folder_record(tmp_path):
    from dataclasses import asdict

    from explorer.training.trainer import TrainConfig

    cfg = TrainConfig.from_file(configs_dir() / "train" / "real-infonce.json")

    record = {"config": asdict(cfg), "device": "cpu", "world_size": 1, "train_seconds": 600.0}
    record["stage1"] = {"steps": 2400, "seconds": 780.0}
    (tmp_path / "training_config.json").write_text(json.dumps(record), encoding="utf-8")
    (tmp_path / "train_log.jsonl").write_text('{"step": 450, "loss": 3.1}\n', encoding="utf-8")
    text = write_card(tmp_path, BENCH, "python -m explorer benchmark ...").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "cc-by-nc-4.0" and meta["library_name"] == "transformers"
    assert meta["model_name"] == "real-infonce" and "infonce" in meta["tags"]
    assert "about 23 minutes in all" in text and '{"step": 450, "loss": 3.1}' in text
    assert "plain CLIP InfoNCE" in text and "negation engine" not in text
    assert "explorer/configs/train/real-infonce.json" in text


@pytest.mark.parametrize("name", REAL_MODELS)
def test_shipped_real_models_carry_their_card(name):
    folder = local_path(f"assets/models/{name}")
    text = (folder / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["model_name"] == name and meta["license"] and meta["datasets"]
    assert "## Evaluation on `nih-test`" in text and "## Limitations" in text
    assert f"| metric | `{name}` |" in text  # the table leads with this model
    assert (folder / "train_log.jsonl").stat().st_size > 0
