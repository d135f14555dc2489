"""The wheel: code, configs, shipped models and examples, the dependency list; and an installed
copy that finds its assets and its cache outside the checkout.

Built offline (no index, no build isolation: the test environment's setuptools), from a copy of
the files the build reads, so the checkout gets no ``build/`` folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "requirements.txt", "explorer", "assets")


def _requirement_names(lines) -> set[str]:
    return {
        re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        for line in lines
        if line.strip() and not line.strip().startswith("#")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of its build inputs."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*cmd, "--no-index", "--quiet", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("cxr_negation_explorer-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as a site-packages folder (what ``pip install`` lays down)."""
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_wheel_holds_code_configs_models_and_examples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "explorer"
    code_and_data = {
        f"explorer/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    }
    shipped = {
        f"explorer/assets/{p.relative_to(ROOT / 'assets').as_posix()}"
        for folder in ("models", "examples")
        for p in (ROOT / "assets" / folder).rglob("*")
        if p.is_file()
    }
    assert {"explorer/configs/models.json", "explorer/__main__.py"} <= code_and_data
    assert "explorer/assets/models/phantom-negaware/model.safetensors" in shipped
    assert "explorer/assets/examples/00000001_000.png" in shipped
    assert not (code_and_data | shipped) - names
    assert "explorer/assets/README.md" in names  # the provenance and terms travel with them
    assert not any("__pycache__" in n or n.startswith(("tests/", "assets/")) for n in names)


def test_wheel_declares_requirements_txt_as_its_dependencies(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        text = zf.read(meta).decode()
    declared = [
        line.split(":", 1)[1] for line in text.splitlines() if line.startswith("Requires-Dist:")
    ]
    listed = (ROOT / "requirements.txt").read_text().splitlines()
    assert _requirement_names(declared) == _requirement_names(listed)
    assert "gradio==6.31.0" in text.replace(" ", "")


def _run_installed(site: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPLORER_")}
    env |= {"PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_installed_copy_finds_its_assets_and_caches_outside_itself(installed, tmp_path):
    code = (
        "import json, explorer; from explorer import paths; print(json.dumps({"
        "'package': explorer.__file__, 'assets': str(paths.assets_dir()),"
        "'cache': str(paths.cache_dir()), 'checkout': str(paths.checkout_root())}))"
    )
    proc = _run_installed(installed, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert Path(found["package"]).parent == installed / "explorer"
    assert Path(found["assets"]) == installed / "explorer" / "assets"
    assert (Path(found["assets"]) / "models" / "phantom-negaware" / "model.safetensors").is_file()
    assert Path(found["cache"]) == tmp_path / "xdg" / "cxr-negation-explorer"
    assert found["checkout"] == "None"


def test_installed_copy_lists_the_embedded_model_as_loadable(installed, tmp_path):
    proc = _run_installed(
        installed, tmp_path, "-m", "explorer", "models", "--json", "--no-hub-check"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert models["phantom-negaware"]["available"] is True
    assert models["phantom-infonce"]["available"] is True
