"""The Hugging Face Space: front matter, staging and the one-step publish (with a fake hub)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from explorer.ops.space import (
    ROOT,
    SPACE_DEFAULT_MODEL,
    check_front_matter,
    pinned_version,
    publish_space,
    read_front_matter,
    stage_space,
)


def test_space_front_matter_is_valid_and_matches_requirements():
    check = check_front_matter()
    assert check.ok, check.problems
    meta = check.meta
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert str(meta["sdk_version"]) == pinned_version("gradio")
    assert "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in meta["models"]
    assert meta["suggested_hardware"] and meta["python_version"].startswith("3.")


def _copy_root(tmp_path: Path, readme: str) -> Path:
    root = tmp_path / "repo"
    (root / "spaces").mkdir(parents=True)
    (root / "spaces" / "README.md").write_text(readme)
    shutil.copy(ROOT / "requirements.txt", root / "requirements.txt")
    (root / "app.py").write_text("print('hi')\n")
    return root


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("sdk_version: 6.31.0", "sdk_version: 5.0.0"), "differs from gradio=="),
        (("sdk: gradio", "sdk: streamlit"), "sdk must be 'gradio'"),
        (("app_file: app.py", "app_file: main.py"), "app_file main.py does not exist"),
        (('python_version: "3.11"', "python_version: three"), "python_version"),
        (("suggested_hardware: cpu-upgrade", "suggested_hardware: quantum"), "not one of"),
        (("emoji: 🫁\n", ""), "'emoji' is missing"),
        (
            ("  - microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "  - someone/else"),
            "not a registered hub model",
        ),
    ],
)
def test_front_matter_problems_are_named(tmp_path, change, problem):
    text = (ROOT / "spaces" / "README.md").read_text()
    assert change[0] in text
    root = _copy_root(tmp_path, text.replace(change[0], change[1], 1))
    check = check_front_matter(root / "spaces" / "README.md", root)
    assert not check.ok and any(problem in p for p in check.problems), check.problems


def test_readme_without_front_matter_is_refused(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# just a title\n")
    with pytest.raises(ValueError, match="front matter"):
        read_front_matter(path)


def test_stage_space_has_what_the_space_runs(tmp_path):
    out = stage_space(tmp_path / "space")
    assert read_front_matter(out / "README.md") == read_front_matter()
    for name in ("app.py", "requirements.txt", "explorer/ui/serving.py", "explorer/configs"):
        assert (out / name).exists(), name
    assert (out / "assets/models/phantom-negaware/model.safetensors").is_file()
    assert not list(out.rglob("__pycache__")) and not (out / "tests").exists()
    assert not (out / ".cache").exists() and not (out / ".venv").exists()


class FakeHub:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/spaces/{repo_id}"

    def add_space_variable(self, repo_id, key, value):
        self.calls.append(("variable", repo_id, {key: value}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload", kwargs["repo_id"], kwargs))


def test_publish_creates_the_space_sets_the_model_and_uploads(tmp_path):
    hub = FakeHub()
    folder = tmp_path / "space"
    folder.mkdir()
    url = publish_space(folder, "me/cxr-negation-explorer", api=hub)
    assert url.endswith("/spaces/me/cxr-negation-explorer")
    (_, _, create), (_, _, variable), (_, _, upload) = hub.calls
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    assert variable == {"EXPLORER_DEFAULT_MODEL": SPACE_DEFAULT_MODEL}
    assert upload["folder_path"] == str(folder) and upload["repo_type"] == "space"


def test_space_cli_check(capsys):
    from explorer.cli import main

    assert main(["space", "--check"]) == 0
    assert "is valid" in capsys.readouterr().out
