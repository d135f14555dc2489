"""Backend registry, spec registry and a lazy cache of loaded models.

Backends register a constructor under a key (``@register_backend("open_clip")``); specs name
their backend by that key, so adding a backend never touches dispatch code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch

from explorer.errors import ModelUnavailableError, UnknownModelError
from explorer.models.base import VisionLanguageModel, default_device
from explorer.models.spec import ModelSpec, default_model_name, load_specs, local_path

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelSpec, torch.device], VisionLanguageModel]


@dataclass(frozen=True)
class Backend:
    """A way to build models: its factory and the Python packages it needs."""

    name: str
    factory: BackendFactory
    requires: tuple[str, ...]


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str, requires: Iterable[str] = ()
) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: make ``factory(spec, device)`` available under ``name``."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = Backend(name, factory, tuple(requires))
        return factory

    return wrap


def backends() -> tuple[str, ...]:
    return tuple(sorted(_BACKENDS))


@register_backend("open_clip", requires=("open_clip",))
def _open_clip(spec: ModelSpec, device: torch.device) -> VisionLanguageModel:
    from explorer.models.openclip_backend import OpenClipModel

    return OpenClipModel(spec, device)


@register_backend("transformers", requires=("transformers",))
def _transformers(spec: ModelSpec, device: torch.device) -> VisionLanguageModel:
    from explorer.models.hf_backend import TransformersModel

    return TransformersModel(spec, device)


@register_backend("cell_pool", requires=("transformers", "safetensors"))
def _cell_pool(spec: ModelSpec, device: torch.device) -> VisionLanguageModel:
    from explorer.models.cell_pool import CellPooledModel

    return CellPooledModel(spec, device)


# --- hub reachability -----------------------------------------------------------------------

HUB_HOST = "huggingface.co"


def hub_offline_by_env() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (checked once per process)."""
    if hub_offline_by_env():
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_repo(spec: ModelSpec) -> str | None:
    if spec.is_local:
        return None
    src = spec.source.removeprefix("hf-hub:")
    return None if "@" in src else src


def _cached_file(repo: str, filename: str) -> str | None:
    """The cached path of ``filename`` in hub repo ``repo``, or None (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        hit = try_to_load_from_cache(repo, filename)
    except Exception:  # a malformed repo id or cache folder: treat as not cached
        return None
    return hit if isinstance(hit, str) else None


def _in_hub_cache(repo: str) -> bool:
    return any(_cached_file(repo, f) for f in ("open_clip_config.json", "config.json"))


def _open_clip_text_repos(repo: str) -> tuple[str, ...]:
    """Hub repos an open_clip repo's config sends its text tower and tokenizer to.

    BiomedCLIP's ``open_clip_config.json`` names ``microsoft/BiomedNLP-BiomedBERT-...`` for
    its text config and tokenizer: a second repo that must be cached (or downloadable) too.
    Read from the cached config; nothing when it is not cached.
    """
    path = _cached_file(repo, "open_clip_config.json")
    if path is None:
        return ()
    try:
        with open(path, encoding="utf-8") as fh:
            text_cfg = json.load(fh).get("model_cfg", {}).get("text_cfg", {})
    except (OSError, ValueError, AttributeError):
        return ()
    names = (text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name"))
    return tuple(
        dict.fromkeys(
            n
            for n in names
            if isinstance(n, str)
            and n.count("/") == 1
            and not n.startswith((".", "/", "~"))
            and n != repo
        )
    )


def hub_repos(spec: ModelSpec) -> tuple[str, ...]:
    """Every hub repo ``spec`` needs, its own first (empty for local and built-in models).

    The second and later repos are known once the first repo's config is cached (open_clip
    models whose text tower lives in a transformers repo, such as BiomedCLIP).
    """
    repo = _hub_repo(spec)
    if repo is None:
        return ()
    extra = _open_clip_text_repos(repo) if spec.backend == "open_clip" else ()
    return (repo, *extra)


#: Files in a cached repo that need a Python package beyond the backend's own to be read.
_FILE_PACKAGES = {"spiece.model": ("sentencepiece", "google.protobuf")}


def _missing_file_packages(repos: Iterable[str]) -> list[str]:
    missing = []
    for repo in repos:
        for filename, packages in _FILE_PACKAGES.items():
            if _cached_file(repo, filename) is None:
                continue
            missing += [p for p in packages if not _module_available(p)]
    return list(dict.fromkeys(missing))


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def _cache_state(spec: ModelSpec) -> tuple[list[str], list[str]]:
    """(cached repos, repos not cached) among those ``spec`` needs."""
    repos = hub_repos(spec)
    cached = [r for r in repos if _in_hub_cache(r)]
    return cached, [r for r in repos if r not in cached]


@dataclass(frozen=True)
class ModelStatus:
    """Whether a registered model can load here, and why not."""

    name: str
    backend: str
    source: str
    available: bool
    reason: str
    local: bool
    description: str = ""


class ModelRegistry:
    """Specs by name, plus a cache of loaded models (at most ``max_loaded`` at once)."""

    def __init__(
        self, specs: Iterable[ModelSpec], default: str | None = None, max_loaded: int = 3
    ) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.add(spec)
        self.default = default
        self.max_loaded = max_loaded
        self._loaded: dict[tuple[str, str], VisionLanguageModel] = {}
        self._failed: dict[str, str] = {}  # name -> reason of the last failed load
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls) -> ModelRegistry:
        return cls(load_specs(), default=default_model_name())

    # --- specs ------------------------------------------------------------------------------
    def add(self, spec: ModelSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"a model named '{spec.name}' is already registered")
        self._specs[spec.name] = spec

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs) or "none"
            raise UnknownModelError(
                f"There is no model called '{name}'. Known models: {known}."
            ) from None

    # --- availability -----------------------------------------------------------------------
    def status(self, name: str, check_hub: bool = True) -> ModelStatus:
        """Cheap check (no weights loaded) of whether ``name`` can load here."""
        spec = self.spec(name)
        ok, reason = self._availability(spec, check_hub)
        return ModelStatus(
            spec.name, spec.backend, spec.source, ok, reason, spec.is_local, spec.description
        )

    def _availability(self, spec: ModelSpec, check_hub: bool) -> tuple[bool, str]:
        if spec.name in self._failed:
            return False, self._failed[spec.name]
        backend = _BACKENDS.get(spec.backend)
        if backend is None:
            return False, f"its backend '{spec.backend}' is not one of {', '.join(backends())}"
        missing = [p for p in backend.requires if importlib.util.find_spec(p) is None]
        if missing:
            return False, f"the Python package {', '.join(missing)} is not installed"
        path = local_path(spec.source)
        if path is not None:
            return (
                (True, "local files")
                if path.exists()
                else (False, f"its files are missing ({spec.source})")
            )
        cached, missing_repos = _cache_state(spec)
        missing_pkgs = _missing_file_packages(cached)
        if missing_pkgs:
            return False, (
                f"its tokenizer needs the Python package {', '.join(missing_pkgs)}, "
                "which is not installed"
            )
        if cached and not missing_repos:
            return True, "in the local Hugging Face cache"
        if (not check_hub and not hub_offline_by_env()) or hub_reachable():
            return True, "downloads from the Hugging Face hub on first use"
        if cached:
            return False, (
                "the Hugging Face hub cannot be reached from here and part of it is not cached "
                f"({', '.join(missing_repos)})"
            )
        return (
            False,
            "the Hugging Face hub cannot be reached from here and the weights are not cached",
        )

    # --- loading ----------------------------------------------------------------------------
    def load(self, name: str, device: torch.device | str | None = None) -> VisionLanguageModel:
        """Load (or return the cached) model ``name``.

        Raises:
            UnknownModelError: ``name`` is not registered.
            ModelUnavailableError: it is registered but cannot be loaded here; the message says why.
        """
        spec = self.spec(name)
        device = torch.device(device) if device is not None else default_device()
        key = (name, str(device))
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            ok, reason = self._availability(spec, check_hub=False)
            if not ok:
                raise ModelUnavailableError(name, reason)
            if spec.is_local is False and hub_offline_by_env():
                cached, missing_repos = _cache_state(spec)
                if not cached:
                    raise ModelUnavailableError(
                        name, "the app runs offline and the weights are not cached"
                    )
                if missing_repos:
                    raise ModelUnavailableError(
                        name,
                        "the app runs offline and part of it is not cached "
                        f"({', '.join(missing_repos)})",
                    )
            log.info("loading model %s (%s) on %s", name, spec.backend, device)
            try:
                model = _BACKENDS[spec.backend].factory(spec, device)
            except Exception as exc:  # any backend failure becomes one typed, readable error
                log.warning("model %s failed to load: %s", name, exc)
                self._failed[name] = _explain(exc)
                raise ModelUnavailableError(name, self._failed[name]) from exc
            while len(self._loaded) >= self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[key] = model
            return model

    def load_or_default(
        self, name: str | None, device: torch.device | str | None = None
    ) -> tuple[VisionLanguageModel, str | None]:
        """Load ``name``; if it cannot load, load the embedded default and say so.

        Returns:
            The model and a notice for the user (``None`` when ``name`` itself loaded).
        """
        if not name or name == self.default:
            return self.load(self.default or name, device), None
        try:
            return self.load(name, device), None
        except ModelUnavailableError as err:
            if self.default is None:
                raise
            notice = f"{err} Showing the embedded default '{self.default}' instead."
            return self.load(self.default, device), notice

    def preferred(self, name: str | None) -> tuple[str | None, str | None]:
        """The model to open with: ``name`` (e.g. from ``EXPLORER_DEFAULT_MODEL``) if it can load.

        Returns:
            The model name and a notice for the user when ``name`` was asked for but the
            embedded default is used instead (not registered, or cannot load here, e.g. the
            hub is unreachable and its weights are not cached).
        """
        if not name or name == self.default:
            return self.default, None
        if name not in self._specs:
            return self.default, (
                f"The requested default model '{name}' is not registered; "
                f"showing the embedded default '{self.default}'."
            )
        st = self.status(name)
        if st.available:
            return name, None
        return self.default, (
            f"The requested default model '{name}' cannot load here: {st.reason}. "
            f"Showing the embedded default '{self.default}' instead."
        )

    def loaded(self) -> tuple[tuple[str, str], ...]:
        """The (name, device) of every model loaded now."""
        with self._lock:
            return tuple(self._loaded)

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
            self._failed.clear()


def _explain(exc: BaseException) -> str:
    """A short, readable reason for a backend exception."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if any(
        w in lowered
        for w in (
            "connection",
            "connect to",
            "offline",
            "resolve",
            "max retries",
            "network",
            "timed out",
        )
    ):
        return "its weights would have to be downloaded and the Hugging Face hub cannot be reached"
    if isinstance(exc, (FileNotFoundError, OSError)):
        return f"its files could not be read ({_whole_sentences(text, 200).rstrip('.')})"
    return _whole_sentences(text, 300)


def _whole_sentences(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a sentence end, else at a word, never
    mid-word (a reason shown to a person must not stop half-way through a word)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    if end > limit // 3:
        return head[: end + 1]
    return head[: head.rfind(" ")].rstrip(" ,;:") + " …" if " " in head else head + " …"


@lru_cache(maxsize=1)
def default_registry() -> ModelRegistry:
    """The registry built from ``explorer/configs/models.json`` (created on first use)."""
    return ModelRegistry.from_config()


__all__ = [
    "Backend",
    "ModelRegistry",
    "ModelStatus",
    "backends",
    "default_registry",
    "hub_reachable",
    "hub_repos",
    "local_path",
    "register_backend",
]
