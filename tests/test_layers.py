"""The layering rule, checked by reading every import in ``explorer/`` (module- and function-level).

vocabulary -> library -> training / evaluation -> CLI / UI / ops: a module may import its own
layer and the layers below it, never one above. gradio is imported only under ``explorer/ui/``.
The README's layout section states the same table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "explorer"

#: Layer of each top-level part of the package (lower numbers are lower layers).
LAYERS: dict[str, int] = {
    # 0 vocabulary: typed errors, where things are, label names, prompts, negation, soft labels
    "errors": 0,
    "paths": 0,
    "progress": 0,
    "vocab": 0,
    # 1 library
    "imaging": 1,
    "models": 1,
    "scoring": 1,
    "attribution": 1,
    "reports": 1,
    "plots": 1,
    "phantom": 1,
    "data": 1,
    "guard": 1,
    # 2 training and evaluation
    "training": 2,
    "eval": 2,
    # 3 applications: command line, web UI, operations, the lesson
    "lesson": 3,
    "cli": 3,
    "__main__": 3,
    "ops": 3,
    "ui": 3,
}
LAYER_NAMES = ("vocabulary", "library", "training / evaluation", "CLI / UI / ops")


def part_of(module: str) -> str:
    """``explorer.reports.map`` -> ``reports``; ``explorer`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, package: bool = False) -> list[tuple[int, str]]:
    """Every module ``source`` imports (absolute, relative resolved), with its line number.

    ``package``: ``source`` is a package's ``__init__.py`` (``from . import x`` stays inside it).
    """
    here = module.split(".") if package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # ``from explorer import ui`` imports the submodule ``explorer.ui``
            if name == "explorer":
                found += [(node.lineno, f"explorer.{a.name}") for a in node.names]
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    """Each import that breaks the rule, as ``file:line: a (layer) imports b (layer)``."""
    bad: list[str] = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        own = part_of(module)
        rel = path.relative_to(package.parent)
        if own and own not in LAYERS:
            bad.append(f"{rel}: '{own}' has no layer in tests/test_layers.py")
            continue
        source = path.read_text(encoding="utf-8")
        for line, name in imports_of(source, module, path.name == "__init__.py"):
            if name.split(".")[0] == "gradio" and own != "ui":
                bad.append(f"{rel}:{line}: imports gradio outside explorer/ui/")
            if not name.startswith("explorer.") or not own:
                continue
            other = part_of(name)
            if other not in LAYERS:
                bad.append(f"{rel}:{line}: imports {name}, which has no layer")
            elif LAYERS[other] > LAYERS[own]:
                bad.append(
                    f"{rel}:{line}: {own} ({LAYER_NAMES[LAYERS[own]]}) imports {name} "
                    f"({LAYER_NAMES[LAYERS[other]]})"
                )
    return bad


def test_no_module_imports_a_layer_above_its_own():
    assert violations() == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts = {p for p in parts if not p.startswith((".", "_")) or p == "__main__"}
    parts -= {"configs", "assets"}  # data, not code
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("vocab/bad.py", "from explorer.scoring import score_findings\n", "vocab (vocabulary)"),
        ("models/bad.py", "def f():\n    import explorer.eval.metrics\n", "models (library)"),
        ("scoring.py", "import gradio as gr\n", "imports gradio outside"),
        ("training/bad.py", "from explorer import ui\n", "imports explorer.ui"),
        ("reports/bad.py", "from ..ops import speed\n", "imports explorer.ops"),
    ],
)
def test_the_check_catches_a_bad_import(tmp_path, where, source, expected):
    package = tmp_path / "explorer"
    target = package / where
    target.parent.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    target.write_text(source)
    found = violations(package)
    assert len(found) == 1 and expected in found[0], found


def test_an_allowed_import_passes(tmp_path):
    package = tmp_path / "explorer"
    (package / "eval").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "eval" / "ok.py").write_text(
        "from explorer.scoring import x\nfrom explorer.vocab.labels import y\nfrom . import z\n"
    )
    assert violations(package) == []


def test_evaluation_does_not_import_training():
    """Evaluation and training share a layer, but the benchmarks must not lean on training code:
    the held-out seeds and phantom sets come from ``explorer.phantom``."""
    found = []
    for path in sorted((PACKAGE / "eval").rglob("*.py")):
        module = module_name(path)
        for line, name in imports_of(
            path.read_text(encoding="utf-8"), module, path.name == "__init__.py"
        ):
            if name == "explorer.training" or name.startswith("explorer.training."):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}")
    assert (PACKAGE / "eval" / "benchmark.py").exists()  # the check reads real files
    assert found == []
