"""explorer.paths: the checkout, the assets, the configs and the cache folder, read at call time."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from explorer import paths

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    """No EXPLORER_CACHE / EXPLORER_ASSETS / XDG_CACHE_HOME from the caller's shell."""
    for key in ("EXPLORER_CACHE", "EXPLORER_ASSETS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_checkout_defaults(no_env):
    assert paths.checkout_root() == CHECKOUT
    assert paths.project_root() == CHECKOUT
    assert paths.assets_dir() == CHECKOUT / "assets"
    assert paths.examples_dir() == CHECKOUT / "assets" / "examples"
    assert paths.cache_dir() == CHECKOUT / ".cache"
    assert (paths.configs_dir() / "models.json").is_file()
    assert (paths.assets_dir() / "models" / "phantom-negaware" / "config.json").is_file()


def test_explorer_cache_is_read_at_call_time(no_env, tmp_path):
    no_env.setenv("EXPLORER_CACHE", str(tmp_path / "one"))
    assert paths.cache_dir() == tmp_path / "one"
    no_env.setenv("EXPLORER_CACHE", str(tmp_path / "two"))
    assert paths.cache_dir() == tmp_path / "two"
    no_env.delenv("EXPLORER_CACHE")
    assert paths.cache_dir() == CHECKOUT / ".cache"


def test_explorer_assets_is_read_at_call_time(no_env, tmp_path):
    no_env.setenv("EXPLORER_ASSETS", str(tmp_path / "a"))
    assert paths.assets_dir() == tmp_path / "a"
    assert paths.examples_dir() == tmp_path / "a" / "examples"
    no_env.setenv("EXPLORER_ASSETS", str(tmp_path / "b"))
    assert paths.examples_dir() == tmp_path / "b" / "examples"
    no_env.delenv("EXPLORER_ASSETS")
    assert paths.assets_dir() == CHECKOUT / "assets"


def test_env_paths_expand_the_home_folder(no_env, tmp_path):
    no_env.setenv("HOME", str(tmp_path))
    no_env.setenv("EXPLORER_CACHE", "~/c")
    no_env.setenv("EXPLORER_ASSETS", "~/a")
    assert paths.cache_dir() == tmp_path / "c"
    assert paths.assets_dir() == tmp_path / "a"


def test_resolve_follows_the_assets_and_cache_folders(no_env, tmp_path):
    no_env.setenv("EXPLORER_ASSETS", str(tmp_path / "assets"))
    no_env.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    assert paths.resolve("assets/models/m") == tmp_path / "assets" / "models" / "m"
    assert paths.resolve(".cache/train") == tmp_path / "cache" / "train"
    assert paths.resolve("spaces/README.md") == CHECKOUT / "spaces" / "README.md"
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"
    no_env.delenv("EXPLORER_CACHE")
    assert paths.resolve(".cache/train") == CHECKOUT / ".cache" / "train"


def _installed_paths(site: Path):
    """A copy of explorer/paths.py in a fake installed package (no pyproject.toml above it)."""
    package = site / "explorer"
    package.mkdir(parents=True)
    shutil.copy(Path(paths.__file__), package / "paths.py")
    (package / "assets" / "models").mkdir(parents=True)
    spec = importlib.util.spec_from_file_location("installed_explorer_paths", package / "paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_layout_uses_the_user_cache_and_packaged_assets(no_env, tmp_path):
    site = tmp_path / "site-packages"
    installed = _installed_paths(site)
    assert installed.checkout_root() is None
    assert installed.assets_dir() == site / "explorer" / "assets"
    no_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert installed.cache_dir() == tmp_path / "xdg" / "cxr-negation-explorer"
    no_env.delenv("XDG_CACHE_HOME")
    no_env.setenv("HOME", str(tmp_path / "home"))
    assert installed.cache_dir() == tmp_path / "home" / ".cache" / "cxr-negation-explorer"
    assert not installed.cache_dir().is_relative_to(site)
    no_env.setenv("EXPLORER_CACHE", str(tmp_path / "mine"))
    no_env.setenv("EXPLORER_ASSETS", str(tmp_path / "shipped"))
    assert installed.cache_dir() == tmp_path / "mine"
    assert installed.assets_dir() == tmp_path / "shipped"


def test_a_folder_with_pyproject_but_no_assets_is_not_a_checkout(no_env, tmp_path):
    site = tmp_path / "src"
    installed = _installed_paths(site)
    (site / "pyproject.toml").write_text("[project]\nname = 'other'\n")
    assert installed.checkout_root() is None
    (site / "assets").mkdir()
    assert installed.checkout_root() == site
    assert installed.cache_dir() == site / ".cache"
    assert installed.assets_dir() == site / "assets"
