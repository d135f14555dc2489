"""Model cards: a ``README.md`` with Hugging Face YAML front matter beside an exported model.

``python -m explorer.training.card assets/models/real-negaware --benchmark BENCH.json``

The card is written from what the folder and the benchmark say, never typed by hand: the
training record (``training_config.json``: the config, the hardware, the seconds each stage
took), the last line of ``train_log.jsonl``, and the JSON that ``python -m explorer benchmark
--manifest ... --probe ... --json`` printed (this model's row, every other model's row for
comparison, the paired task-A differences and the linear probe). Rerun it after retraining and
benchmarking, so the card's table is the measured one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from explorer.attribution.options import METHODS

#: Where each kind of training data came from, and what that means for a user.
DATA = {
    "real": {
        "datasets": ["nih-chest-xray14", "indiana-university-chest-xray-reports"],
        "license": "cc-by-nc-4.0",
        "license_note": (
            "The weights are released for non-commercial research and teaching: the text side was "
            "trained on the Indiana University chest X-ray reports (Open-i), licensed CC BY-NC-ND "
            "4.0. The films are NIH ChestX-ray14 (NIH Clinical Center, unrestricted use with "
            "attribution: Wang et al., CVPR 2017). The code that trained them is Apache-2.0."
        ),
        "data": (
            "Films: the training side of the NIH ChestX-ray14 films beside the project (every "
            "patient of the shipped `nih-test` set left out), NIH's NLP-mined labels mapped to "
            "CheXpert findings. Text: the 3,955 real Indiana University reports, labelled by the "
            "project's labeler. No report belongs to any film: each film is matched with reports "
            "whose labels are clinically like its own (decoupled matching, as in MedCLIP), with "
            "reports written from its own labels and with one-line finding prompts."
        ),
    },
    "phantom": {
        "datasets": ["synthetic-chest-phantoms"],
        "license": "apache-2.0",
        "license_note": "Trained on synthetic phantoms rendered by this project: no patient data.",
        "data": "Synthetic chest radiograph phantoms and generated reports (explorer/phantom/).",
    },
}

LOSS = {
    "negaware": (
        "dynamic soft labels + negation hard negatives (Ko & Park, CVPR 2025): contrastive "
        "targets softened by the clinical similarity of image and text labels, and each text's "
        "negated twin (one present finding denied by the project's negation engine) as an "
        "extra negative"
    ),
    "infonce": "plain CLIP InfoNCE: no soft labels, no negation hard negatives (the baseline)",
}


def _front_matter(name: str, data: dict, loss: str) -> str:
    lines = [
        "---",
        f"license: {data['license']}",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        "language:",
        "- en",
        "base_model: sentence-transformers/all-MiniLM-L6-v2",
        "datasets:",
        *(f"- {d}" for d in data["datasets"]),
        "tags:",
        *(f"- {t}" for t in ("medical", "chest-x-ray", "clip", "negation", loss)),
        f"model_name: {name}",
        "---",
    ]
    return "\n".join(lines)


def _interval(value: float, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def benchmark_table(bench: dict, name: str) -> str:
    """Markdown table of ``bench`` (a ``benchmark --manifest --json`` output), ``name`` first."""
    rows = sorted(bench["benchmark"], key=lambda r: r["model"] != name)
    probe = next((p for p in bench.get("probe", []) if p["model"] == name), None)
    head = ["metric", *(f"`{r['model']}`" for r in rows)] + (["linear probe"] if probe else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(label: str, cells: list[str], probe_cell: str = "-") -> None:
        out.append("| " + " | ".join([label, *cells] + ([probe_cell] if probe else [])) + " |")

    line(
        f"zero-shot AUC, mean ({len(rows[0]['auc'])} findings)",
        [_interval(r["mean_auc"], r.get("mean_auc_ci")) for r in rows],
        _interval(probe["mean_auc"], probe.get("mean_auc_ci")) if probe else "-",
    )
    for finding, (pos, neg) in rows[0]["cases"].items():
        if finding in rows[0]["auc"]:
            line(
                f"AUC {finding} ({pos}+ / {neg}-)",
                [_interval(r["auc"][finding], r["auc_ci"].get(finding)) for r in rows],
                f"{probe['auc'][finding]:.3f}" if probe and finding in probe["auc"] else "-",
            )
    line(
        f"task A ({rows[0]['task_a_n']} films)",
        [_interval(r["task_a"], r.get("task_a_ci")) for r in rows],
    )
    line("task B", [_interval(r["task_b"], r.get("task_b_ci")) for r in rows])
    for method in rows[0].get("pointing", {}):
        shown = METHODS[method].display if method in METHODS else method
        line(
            f"pointing, {shown} ({rows[0]['pointing_n']} boxes)",
            [f"{r['pointing'][method]:.3f}" for r in rows],
        )
    for diff in bench.get("task_a_difference", []):
        if diff["model"] == name:
            out.append(
                f"\nTask A, `{name}` minus `{diff['baseline']}` on the same {diff['rows']} films: "
                f"{_interval(diff['difference'], diff['ci'])} (paired patient bootstrap)."
            )
    return "\n".join(out)


def write_card(folder: Path, bench: dict, command: str = "") -> Path:
    """Write ``folder/README.md`` from the folder's training record and ``bench``."""
    folder = Path(folder)
    record = json.loads((folder / "training_config.json").read_text(encoding="utf-8"))
    cfg = record["config"]
    name, loss = cfg["name"], cfg["loss"]
    data = DATA[cfg.get("data", "phantom")]
    log_lines = (folder / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    last = json.loads(log_lines[-1]) if log_lines else {}
    stage1 = record.get("stage1", {})
    minutes = (record.get("train_seconds", 0) + stage1.get("seconds", 0)) / 60
    manifest = bench["benchmark"][0]["manifest"]
    min_cases = bench["benchmark"][0].get("min_cases", 10)  # the benchmark says what it used
    text = f"""{_front_matter(name, data, loss)}

# {name}

A small CLIP-style dual encoder for chest radiographs, made by the CXR Negation Explorer project
to show what negation-aware training changes. **Research and teaching only; not a medical
device; not for diagnosis.**

- **Architecture**: transformers `VisionTextDualEncoderModel`: a ConvNeXt image tower
  (widths {cfg["model"].get("convnext_widths")}, {cfg["model"]["image_size"]} px input) and the
  all-MiniLM-L6-v2 text tower, projected to {cfg["model"]["projection_dim"]} dimensions; fp16
  safetensors with its tokenizer and image processor (`preprocessor_config.json`).
- **Loss**: {LOSS.get(loss, loss)}.
- **Data**: {data["data"]}
- **Training**: two stages. The image tower first learned the labels (binary cross-entropy,
  {stage1.get("steps", "?")} steps of {cfg["vision_pretrain"]["batch_size"]} films, radiograph
  augmentation: small shifts, scale and contrast, no horizontal flip); then, with it locked, the
  projections and the top text layers were trained contrastively for {cfg["steps"]} steps of
  {cfg["batch_size"]}. Seed {cfg["seed"]}; {record.get("device", "cpu")},
  {record.get("world_size", 1)} process(es); about {minutes:.0f} minutes in all (stage 1
  {stage1.get("seconds", 0) / 60:.1f} min, stage 2 {record.get("train_seconds", 0) / 60:.1f}
  min) on 2 CPU cores. Last logged step: {json.dumps(last)}. The whole log is `train_log.jsonl`;
  the config is `training_config.json`.
- **Reproduce**: `python -m explorer train --config explorer/configs/train/{name}.json`.

## How to use

In the app it is a choice of the Model menu; on the command line
`python -m explorer score FILM.png --model {name}`. With transformers alone:

```python
from transformers import AutoImageProcessor, AutoTokenizer, VisionTextDualEncoderModel

model = VisionTextDualEncoderModel.from_pretrained("{name}")  # this folder
tokenizer = AutoTokenizer.from_pretrained("{name}")
processor = AutoImageProcessor.from_pretrained("{name}")  # squashes the film to a square
```

## Licence

{data["license_note"]}

## Evaluation on `{manifest}` (patient-disjoint from training)

{benchmark_table(bench, name)}

Zero-shot AUC: the softmax over each affirmed / negated prompt pair, templates averaged, for
findings with at least {min_cases} positive and {min_cases} negative films; task A: the film against its report
and the same report with one present finding negated (chance 0.5); task B adds the report with
that finding omitted (chance 0.33); intervals are 95 % patient-bootstrap intervals. The linear
probe is a logistic regression on this image tower's features fitted on the training films:
what the tower can tell, with labels. Produced by `{command or "python -m explorer benchmark"}`.

## Intended use

Exploring, in the CXR Negation Explorer app, how an image-text model separates "there is X"
from "no X" on real frontal chest films; comparing the negation-aware and InfoNCE losses;
teaching. Not for clinical decisions, triage or screening.

## Limitations

- Trained on a few hundred real films at low resolution with NLP-mined labels: its zero-shot
  AUCs are modest and its probabilities sit near 0.5; read them as rankings, not as diagnoses.
- Frontal adult films only. Lateral views, photographs of screens, paediatric films and
  inverted (negative) images lie outside what it saw: the app's domain guard warns on them.
- The reports it learned from are from one US institution; the films from another.
- Its attribution maps rarely land in expert boxes (see the pointing rows): do not read them as
  localisation.
"""
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an exported model folder")
    parser.add_argument("--benchmark", type=Path, required=True, help="benchmark --json output")
    parser.add_argument("--command", default="", help="the benchmark command, for the record")
    args = parser.parse_args(argv)
    bench = json.loads(args.benchmark.read_text(encoding="utf-8"))
    print(write_card(args.folder, bench, args.command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
