"""The Hugging Face Space: check its README front matter, stage its files, publish in one step.

A Space is a git repository whose root holds the app file, ``requirements.txt`` and a README
whose YAML front matter configures it. This project keeps that README in ``spaces/README.md``;
:func:`stage_space` copies the app (``app.py``, ``requirements.txt``, ``explorer/``,
``assets/``) and that README into one folder, and :func:`publish_space` creates the Space (if
needed), sets ``EXPLORER_DEFAULT_MODEL`` there and uploads the folder. From the command line::

    python -m explorer space --check                       # validate, offline
    python -m explorer space --out build/space             # stage, offline
    python -m explorer space --push OWNER/NAME             # stage + publish (needs HF_TOKEN)
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from explorer.paths import project_root

ROOT = project_root()
SPACE_README = ROOT / "spaces" / "README.md"
SPACE_FILES = ("app.py", "requirements.txt", "explorer", "assets")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache")
#: The model the Space opens with (it has the hub); offline runs fall back to the embedded one.
SPACE_DEFAULT_MODEL = "biomedclip"
REQUIRED = ("title", "emoji", "sdk", "sdk_version", "python_version", "app_file", "models", "tags")
#: Hardware flavours a Space README may suggest (huggingface_hub's SpaceHardware values).
HARDWARE = (
    "cpu-basic",
    "cpu-upgrade",
    "t4-small",
    "t4-medium",
    "l4x1",
    "a10g-small",
    "a10g-large",
    "a100-large",
    "zero-a10g",
)


@dataclass(frozen=True)
class FrontMatterCheck:
    """The parsed front matter and every problem found with it (empty when valid)."""

    meta: dict
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def read_front_matter(readme: Path = SPACE_README) -> dict:
    """The YAML block between the leading ``---`` lines of a Space README."""
    import yaml

    text = readme.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not match:
        raise ValueError(f"{readme} does not start with a '---' YAML front matter block")
    meta = yaml.safe_load(match.group(1))
    if not isinstance(meta, dict):
        raise ValueError(f"the front matter of {readme} is not a mapping")
    return meta


def pinned_version(package: str, requirements: Path = ROOT / "requirements.txt") -> str | None:
    """The ``==`` version of ``package`` in a requirements file, if it is pinned."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(rf"^\s*{re.escape(package)}\s*==\s*([\w.]+)", line, flags=re.I)
        if match:
            return match.group(1)
    return None


def hub_models() -> set[str]:
    """Hub repositories of the registered models (what the front matter's ``models`` may list)."""
    from explorer.models.spec import load_specs

    return {s.source.removeprefix("hf-hub:").split("@")[0] for s in load_specs() if not s.is_local}


def check_front_matter(readme: Path = SPACE_README, root: Path = ROOT) -> FrontMatterCheck:
    """Validate the Space README against the repository it will run from."""
    meta = read_front_matter(readme)
    problems = [f"'{key}' is missing" for key in REQUIRED if not meta.get(key)]
    if meta.get("sdk") not in (None, "gradio"):
        problems.append(f"sdk must be 'gradio', not {meta['sdk']!r}")
    gradio_pin = pinned_version("gradio", root / "requirements.txt")
    if gradio_pin is None:
        problems.append("requirements.txt does not pin gradio with ==")
    elif str(meta.get("sdk_version")) != gradio_pin:
        problems.append(
            f"sdk_version {meta.get('sdk_version')} differs from gradio=={gradio_pin} "
            "in requirements.txt"
        )
    if not re.fullmatch(r"3\.\d+", str(meta.get("python_version", ""))):
        problems.append(f"python_version must look like '3.11', not {meta.get('python_version')!r}")
    app_file = meta.get("app_file")
    if app_file and not (root / str(app_file)).is_file():
        problems.append(f"app_file {app_file} does not exist")
    known = hub_models()
    for model in meta.get("models") or []:
        if model not in known:
            problems.append(f"model {model} is not a registered hub model")
    if not isinstance(meta.get("tags", []), list):
        problems.append("tags must be a list")
    hardware = meta.get("suggested_hardware")
    if hardware is not None and hardware not in HARDWARE:
        problems.append(f"suggested_hardware {hardware!r} is not one of {', '.join(HARDWARE)}")
    return FrontMatterCheck(meta, tuple(problems))


def stage_space(out: Path, root: Path = ROOT) -> Path:
    """Copy what the Space runs from into ``out`` (emptied first); return ``out``."""
    check = check_front_matter(root / "spaces" / "README.md", root)
    if not check.ok:
        raise ValueError("the Space README is not valid: " + "; ".join(check.problems))
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in SPACE_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=IGNORE)
        else:
            shutil.copy2(src, out / name)
    shutil.copy2(root / "spaces" / "README.md", out / "README.md")
    return out


def publish_space(folder: Path, repo_id: str, token: str | None = None, api=None) -> str:
    """Create (or reuse) the Space ``repo_id``, set its default model, upload ``folder``.

    Returns:
        The Space's URL.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(
        repo_id,
        repo_type="space",
        space_sdk="gradio",
        exist_ok=True,
        space_variables=[{"key": "EXPLORER_DEFAULT_MODEL", "value": SPACE_DEFAULT_MODEL}],
    )
    api.add_space_variable(repo_id, "EXPLORER_DEFAULT_MODEL", SPACE_DEFAULT_MODEL)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="space",
        folder_path=str(folder),
        commit_message="Publish CXR Negation Explorer",
    )
    return str(url)
