"""The phantom examples shipped in ``assets/examples`` (``phantoms.json``), re-rendered on demand.

Each shipped phantom PNG is listed in ``phantoms.json`` with the seed, size and forced findings
it was rendered from, so its ground truth (the lesion masks) can be rendered again instead of
being stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from explorer.paths import examples_dir
from explorer.phantom.records import FindingSpec, Phantom
from explorer.phantom.renderer import render_phantom

#: The file in the examples folder that lists the shipped phantoms.
EXAMPLES_FILE = "phantoms.json"
#: How a phantom rendered on request from a seed (the Batch tab's phantoms) is named.
SEEDED_NAME = "phantom-{seed}.png"
_SEEDED_RE = re.compile(r"^phantom-(\d{1,9})\.png$")


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


def seeded_phantom(file_name: str, pixels: np.ndarray) -> Phantom | None:
    """The phantom behind an image named like :data:`SEEDED_NAME`, if the pixels are its own.

    A file called ``phantom-5000.png`` is re-rendered from seed 5000 at the image's size, and
    accepted only when its pixels match the rendering (to 8-bit rounding): another image that
    happens to carry such a name gets no mask.
    """
    match = _SEEDED_RE.match(Path(file_name).name)
    if match is None or pixels.ndim != 2 or pixels.shape[0] != pixels.shape[1]:
        return None
    phantom = render_phantom(int(match.group(1)), size=int(pixels.shape[0]))
    if np.abs(phantom.image - np.asarray(pixels, dtype=np.float32)).max() > 1.5 / 255:
        return None
    return phantom
