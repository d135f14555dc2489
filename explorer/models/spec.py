"""Model specifications as data: what a model is, where its weights live, how to preprocess.

Specs are read from ``explorer/configs/models.json``; each carries its own preprocessing
(size, mean, std, resize mode; :mod:`explorer.models.preprocess`) so that an image is always
prepared the way its model was trained. Hub models state it in the config; the embedded
phantom models say ``"checkpoint"``: their preprocessing is what training wrote next to the
weights (``preprocessor_config.json``, from the training config), read once, not restated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.models.preprocess import Preprocess, from_checkpoint
from explorer.paths import configs_dir, project_root, resolve

#: ``"preprocess": "checkpoint"`` in a spec: read it from the checkpoint folder's own files.
FROM_CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: Short unique name used in the UI and CLI (e.g. ``"biomedclip"``).
        backend: Key of the adapter in the backend registry (``"open_clip"``, ``"transformers"``).
        source: A hub id (``"hf-hub:org/repo"`` for open_clip, ``"org/repo"`` for transformers),
            an open_clip built-in ``"ARCH@pretrained-tag"``, or a local path (relative paths
            resolve against the repository root).
        preprocess: Image preprocessing; ``None`` means "take it from the loaded model".
        description: One line for pickers.
        card: What the model was trained on and what it is not for (shown in the app).
        tags: Free labels such as ``"medical"``, ``"general"``, ``"embedded"``.
    """

    name: str
    backend: str
    source: str
    preprocess: Preprocess | None = None
    description: str = ""
    card: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_local(self) -> bool:
        """True when the weights are a path on disk rather than a hub id."""
        return local_path(self.source) is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        missing = [k for k in ("name", "backend", "source") if not data.get(k)]
        if missing:
            raise ValueError(f"model spec is missing {', '.join(missing)}: {dict(data)!r}")
        source = str(data["source"])
        return cls(
            name=str(data["name"]),
            backend=str(data["backend"]),
            source=source,
            preprocess=_spec_preprocess(data.get("preprocess"), source),
            description=str(data.get("description", "")),
            card=str(data.get("card", "")),
            tags=tuple(data.get("tags", ())),
        )


def _spec_preprocess(section: object, source: str) -> Preprocess | None:
    """A spec's ``preprocess``: a section of numbers, ``"checkpoint"``, or absent (None).

    ``"checkpoint"`` (the embedded phantom models) reads what the local checkpoint states in
    its own files, which training wrote from its config (:func:`from_checkpoint`); None when
    the files are missing (the registry then reports the model as unavailable).
    """
    if not section:
        return None
    if section == FROM_CHECKPOINT:
        path = local_path(source)
        if path is None:
            raise ValueError(f"'preprocess': 'checkpoint' needs a local source, got {source!r}")
        return from_checkpoint(path)
    if isinstance(section, Mapping):
        return Preprocess.from_dict(section)
    raise ValueError(f"'preprocess' must be a section or 'checkpoint', got {section!r}")


def local_path(source: str) -> Path | None:
    """Resolve ``source`` to a local path if it names one (existing or not), else ``None``.

    Hub ids look like ``org/repo`` or ``hf-hub:org/repo``; a local path starts with ``/``, ``.``,
    ``~`` or ``assets/``, or exists on disk.
    """
    if source.startswith("hf-hub:") or "@" in source:
        return None
    if source.startswith(("/", "./", "../", "~", "assets/")):
        return resolve(source)
    candidate = project_root() / source
    return candidate if candidate.exists() else None


def load_specs(path: Path | None = None) -> tuple[ModelSpec, ...]:
    """Read model specs from a JSON file (default: ``explorer/configs/models.json``)."""
    path = path or configs_dir() / "models.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    specs = tuple(ModelSpec.from_dict(d) for d in data["models"])
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate model names in {path.name}: {dupes}")
    return specs


def default_model_name(path: Path | None = None) -> str:
    """The embedded offline default named in the models config."""
    path = path or configs_dir() / "models.json"
    return str(json.loads(path.read_text(encoding="utf-8"))["default"])


__all__ = [
    "FROM_CHECKPOINT",
    "ModelSpec",
    "default_model_name",
    "load_specs",
    "local_path",
]
