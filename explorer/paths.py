"""Where things are: the checkout, the shipped assets, the configs and the cache folder.

The one home of these locations. Everything is read at call time, so a test or a deployment
can point them elsewhere through the environment:

* ``EXPLORER_ASSETS``: the folder of shipped assets (models, examples); default the checkout's
  ``assets/``.
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
    """The shipped assets folder (``$EXPLORER_ASSETS``, else the checkout's ``assets/``)."""
    env = os.environ.get("EXPLORER_ASSETS")
    if env:
        return Path(env).expanduser()
    return project_root() / "assets"


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
