"""The phantom examples shipped in ``assets/examples`` (``phantoms.json``), re-rendered on demand.

Each shipped phantom PNG is listed in ``phantoms.json`` with the seed, size and forced findings
it was rendered from, so its ground truth (the lesion masks) can be rendered again instead of
being stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from explorer.paths import examples_dir
from explorer.phantom.records import FindingSpec, Phantom
from explorer.phantom.renderer import render_phantom

#: The file in the examples folder that lists the shipped phantoms.
EXAMPLES_FILE = "phantoms.json"


def shipped_phantoms(folder: Path | None = None) -> Mapping[str, dict]:
    """File name -> ``{"seed", "size", "findings"}`` of every shipped phantom example.

    Args:
        folder: The examples folder (default: :func:`explorer.paths.examples_dir`).

    Returns:
        An empty mapping when the folder has no ``phantoms.json``.
    """
    path = (folder or examples_dir()) / EXAMPLES_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def shipped_phantom(file_name: str, folder: Path | None = None) -> Phantom | None:
    """The phantom a shipped example image was rendered from (with its masks), or ``None``.

    Args:
        file_name: The example's file name (a path's folder is ignored), e.g.
            ``"phantom-left-effusion.png"``; anything not listed gives ``None``.
        folder: The examples folder (default: :func:`explorer.paths.examples_dir`).
    """
    entry = shipped_phantoms(folder).get(Path(file_name).name)
    if not entry:
        return None
    specs = [FindingSpec(f["name"], f["laterality"], f["severity"]) for f in entry["findings"]]
    return render_phantom(int(entry["seed"]), findings=specs, size=int(entry["size"]))
