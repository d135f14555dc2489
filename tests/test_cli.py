"""``python -m explorer``: inspect and models, as a script user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import default_model_ready

from explorer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_json_on_real_dicom(samples_dir, capsys):
    assert (
        main(["inspect", str(samples_dir / "siim-pneumothorax-sample-monochrome1.dcm"), "--json"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "DICOM"
    assert info["photometric"] == "MONOCHROME1"
    assert (info["width"], info["height"]) == (1024, 1024)
    assert 0.0 <= info["pixel_stats"]["min"] < info["pixel_stats"]["max"] <= 1.0


def test_inspect_table_on_png(samples_dir, capsys):
    assert main(["inspect", str(samples_dir / "00000001_000.png")]) == 0
    out = capsys.readouterr().out
    assert "PNG" in out and "512" in out


def test_inspect_bad_file_prints_sentence_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "notes.dcm"
    bad.write_text("this is a text file, not an image\n")
    assert main(["inspect", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.endswith(".") and "Traceback" not in err and len(err.splitlines()) == 1
    assert "notes.dcm" not in err  # never echo the file name


def test_models_json_lists_registry(capsys):
    assert main(["models", "--json", "--no-hub-check"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in data["models"]]
    assert data["default"] in names and "biomedclip" in names
    biomed = next(m for m in data["models"] if m["name"] == "biomedclip")
    assert biomed["backend"] == "open_clip" and isinstance(biomed["available"], bool)


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "explorer", "models", "--no-hub-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "phantom-negaware" in proc.stdout and "loads here" in proc.stdout


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.skipif(not default_model_ready(), reason="embedded default model not built")
def test_score_and_attribute_on_real_image(samples_dir, tmp_path, capsys):
    image = str(samples_dir / "00027426_000.png")
    assert main(["score", image, "--json", "--template", "there_is"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["scores"]) == 14 and data["templates"] == ["there_is"]
    out = tmp_path / "map.png"
    assert (
        main(
            [
                "attribute",
                image,
                "--prompt",
                "there is pleural effusion",
                "--method",
                "gradcam",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert out.stat().st_size > 1000 and info["method"] == "gradcam"
    occ = ["attribute", image, "--prompt", "no pneumothorax", "--method", "occlusion"]
    args = [*occ, "--baseline", "blur", "--window", "16", "--stride", "8", "--out", str(out)]
    assert main([*args, "--json"]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    assert params["window"] == 16 and params["stride"] == 8
    assert params["baseline"].startswith("gaussian blur")
    # options of another method, or a window larger than the image, are named, not ignored
    gradcam = ["attribute", image, "--prompt", "no pneumothorax", "--method", "gradcam"]
    assert main([*gradcam, "--window", "16", "--out", str(out)]) == 2
    assert "--window does not apply to --method gradcam" in capsys.readouterr().err
    assert main([*occ, "--window", "999", "--out", str(out)]) == 2
    assert "window must be between 1 and" in capsys.readouterr().err


@pytest.mark.skipif(not default_model_ready(), reason="embedded default model not built")
def test_map_build_then_place_a_real_image(samples_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "reports.csv"
    texts = [
        "Large left pleural effusion.",
        "No pleural effusion or pneumothorax.",
        "The heart is enlarged.",
        "Heart size is normal. The lungs are clear.",
    ] * 8
    table.write_text("report\n" + "\n".join(texts) + "\n")
    args = ["map", "build", "--corpus", str(table), "--no-progress", "--json"]
    assert main(args) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["reports"] == 32 and built["model"] == "real-negaware"
    assert 0.0 <= built["alignment"]["cluster_agreement"] <= 1.0
    assert built["alignment"]["caution"].startswith("Only 32 reports for k=10 neighbours")
    assert {"labelling", "embedding", "layout (UMAP)"} <= set(built["timings_s"])
    image = str(samples_dir / "00000001_000.png")
    assert main(["map", "place", image, "--corpus", str(table), "-k", "3", "--json"]) == 0
    placed = json.loads(capsys.readouterr().out)
    sims = [n["similarity"] for n in placed["placement"]["neighbours"]]
    assert len(sims) == 3 and sims == sorted(sims, reverse=True)
    assert placed["timings_s"] == built["timings_s"]  # the second call reopened the built map


@pytest.mark.skipif(not default_model_ready(), reason="embedded default model not built")
def test_lesson_handout_is_self_contained(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "handout.html"
    assert main(["lesson", "--out", str(out), "--corpus", "phantom:40"]) == 0
    text = out.read_text(encoding="utf-8")
    for title in ("negation-blind", "side by side", "wrong reason", "report map"):
        assert title in text
    assert text.count("<section>") == 4
    assert "data:image/png;base64," in text  # the attribution overlay is embedded
    assert "<script src=" not in text and len(text) > 3_000_000  # plotly.js inlined, not fetched
    assert text.count("Plotly.newPlot(") == 3  # steps 1, 2 and 4 are interactive figures
    printed = capsys.readouterr().out
    assert "cosine 0." in printed and "40 reports" in printed
