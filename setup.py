"""Build glue for what pyproject.toml cannot say: the top-level ``assets/`` folder ships too.

The shipped models and examples stay at the repository's top level (the Space and the README
point there); the wheel installs them as ``explorer/assets/``, where
:func:`explorer.paths.assets_dir` looks when the package runs outside a checkout. Data folders
are listed as (namespace) packages, as setuptools wants; the files each one ships are the
``package-data`` in ``pyproject.toml``, with the metadata and the dependencies.
"""

from setuptools import find_namespace_packages, setup


def _packages(where: str, prefix: str) -> list[str]:
    """Every folder under ``where`` whose name is importable, as packages named ``prefix...``."""
    found = find_namespace_packages(where=where, exclude=["*__pycache__"])
    return [
        prefix,
        *(f"{prefix}.{p}" for p in found if all(s.isidentifier() for s in p.split("."))),
    ]


setup(
    packages=[*_packages("explorer", "explorer"), *_packages("assets", "explorer.assets")],
    package_dir={"explorer.assets": "assets"},
)
