"""Model specifications as data: what a model is, where its weights live, how to preprocess.

Specs are read from ``explorer/configs/models.json``; each carries its own preprocessing
(size, mean, std) so that an image is always prepared the way its model was trained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.paths import assets_dir, configs_dir, project_root

RESIZE_MODES = ("shortest", "squash", "pad")


@dataclass(frozen=True)
class Preprocess:
    """How a grayscale [0, 1] image becomes the model's input tensor.

    Attributes:
        image_size: Side of the square input, in pixels.
        mean: Per-channel mean subtracted after scaling to [0, 1] (RGB order).
        std: Per-channel standard deviation divided by (RGB order).
        resize_mode: ``"shortest"`` (resize the short side then centre-crop, as CLIP does),
            ``"squash"`` (resize both sides, ignoring aspect) or ``"pad"`` (letterbox with black).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if self.image_size < 8:
            raise ValueError("image_size must be at least 8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        return cls(
            image_size=int(data.get("image_size", cls.image_size)),
            mean=tuple(float(v) for v in data.get("mean", cls.mean)),
            std=tuple(float(v) for v in data.get("std", cls.std)),
            resize_mode=str(data.get("resize_mode", cls.resize_mode)),
        )


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
        pre = data.get("preprocess")
        return cls(
            name=str(data["name"]),
            backend=str(data["backend"]),
            source=str(data["source"]),
            preprocess=Preprocess.from_dict(pre) if pre else None,
            description=str(data.get("description", "")),
            card=str(data.get("card", "")),
            tags=tuple(data.get("tags", ())),
        )


def local_path(source: str) -> Path | None:
    """Resolve ``source`` to a local path if it names one (existing or not), else ``None``.

    Hub ids look like ``org/repo`` or ``hf-hub:org/repo``; a local path starts with ``/``, ``.``,
    ``~`` or ``assets/``, or exists on disk.
    """
    if source.startswith("hf-hub:") or "@" in source:
        return None
    if source.startswith(("/", "./", "../", "~", "assets/")):
        path = Path(source).expanduser()
        if path.is_absolute():
            return path
        if path.parts[0] == "assets":  # shipped: wherever the assets folder is
            return assets_dir().joinpath(*path.parts[1:])
        return project_root() / path
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
