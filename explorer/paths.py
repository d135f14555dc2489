"""Where things are: the checkout, the shipped assets, the configs and the cache folder.

The one home of these locations. Everything is read at call time, so a test or a deployment
can point them elsewhere through the environment:

* ``EXPLORER_ASSETS``: the folder of shipped assets (models, examples); default the checkout's
  ``assets/``, or ``explorer/assets/`` of an installed package (the wheel puts them there, see
  ``setup.py``).
* ``EXPLORER_CACHE``: the cache folder (rendered phantoms, training work, report maps); default
  ``.cache/`` in a checkout, else the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)
  under ``cxr-negation-explorer/``, so an installed package never writes into its own folder.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The ``explorer`` package folder.
PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository folder when the package runs from a checkout, else None."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "assets").is_dir() else None


def project_root() -> Path:
    """The checkout root, or the folder above the package when installed."""
    return checkout_root() or PACKAGE_DIR.parent


def configs_dir() -> Path:
    """``explorer/configs/``: models, prompts and training configs (always inside the package)."""
    return PACKAGE_DIR / "configs"


def assets_dir() -> Path:
    """The shipped assets folder.

    ``$EXPLORER_ASSETS`` if set, else the checkout's ``assets/``, else the installed package's
    ``explorer/assets/``.
    """
    env = os.environ.get("EXPLORER_ASSETS")
    if env:
        return Path(env).expanduser()
    root = checkout_root()
    return root / "assets" if root is not None else PACKAGE_DIR / "assets"


def examples_dir() -> Path:
    """The shipped example images (``<assets>/examples``)."""
    return assets_dir() / "examples"


def cache_dir() -> Path:
    """The cache folder (``$EXPLORER_CACHE``, else ``.cache/`` of the checkout or the user cache)."""
    env = os.environ.get("EXPLORER_CACHE")
    if env:
        return Path(env).expanduser()
    root = checkout_root()
    if root is not None:
        return root / ".cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cxr-negation-explorer"


def resolve(path: str | Path) -> Path:
    """A path as the project's configs write it, made absolute.

    Absolute paths (and ``~``) stay as they are; ``assets/...`` is under :func:`assets_dir` and
    ``.cache/...`` under :func:`cache_dir`, wherever those are; any other relative path is under
    :func:`project_root`.
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "assets":
        return assets_dir().joinpath(*p.parts[1:])
    if p.parts and p.parts[0] == ".cache":
        return cache_dir().joinpath(*p.parts[1:])
    return project_root() / p
