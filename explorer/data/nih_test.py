"""Make the shipped real test set ``assets/nih-test/`` from the NIH ChestX-ray14 copy.

``python -m explorer.data.nih_test [--source ../shared/data/nih-cxr14] [--out assets/nih-test]``
draws a patient-disjoint held-out part of the NIH films with
:func:`explorer.data.splits.patient_split` (seed :data:`SEED`): every patient with a boxed film
goes to the test side first (the pointing game needs boxes), then a seeded draw of whole patients
fills it to about :data:`TEST_FILMS` films. Each film is downsampled to :data:`SIZE` px (8-bit
grayscale PNG, LANCZOS), its boxes scaled with it, and ``labels.csv`` keeps the NIH table's
columns. The same source and seed give the same set. Never train on these films: training reads
:func:`explorer.data.named.nih_train_manifest`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from explorer.data.manifest import Box
from explorer.data.named import shared_nih_dir
from explorer.data.splits import patient_split
from explorer.data.table import BOX_COLUMNS, read_frame, read_manifest
from explorer.paths import assets_dir

log = logging.getLogger(__name__)

SEED = 0
TEST_FILMS = 300
SIZE = 256


def _format_boxes(text: str, sx: float, sy: float) -> str:
    """NIH ``Finding:x y w h|...`` with x, w scaled by ``sx`` and y, h by ``sy`` (names kept)."""
    parts = []
    for part in (p.strip() for p in text.split("|") if p.strip()):
        name, _, coords = part.rpartition(":")
        x, y, w, h = (float(v) for v in coords.split())
        values = (x * sx, y * sy, w * sx, h * sy)
        parts.append(f"{name}:" + " ".join(f"{v:.1f}" for v in values))
    return "|".join(parts)


def build(source: Path, out: Path, films: int = TEST_FILMS, seed: int = SEED, size: int = SIZE):
    """Write ``out/images/*.png`` and ``out/labels.csv``; returns the test manifest as read back."""
    from PIL import Image

    table = source / "labels.csv"
    full = read_manifest(table, source / "images")
    if full.problems:
        raise RuntimeError(f"{table} has problems: {full.problems[:3]}")
    boxed = [r.patient for r in full.rows if r.boxes]
    _, test = patient_split(full, films / len(full), seed, always_test=boxed)
    keep = {r.key for r in test.rows}
    frame = read_frame(table)
    frame = frame[frame["file"].isin(keep)].reset_index(drop=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    box_col = next(c for c in frame.columns if c in BOX_COLUMNS)
    for k, rec in frame.iterrows():
        with Image.open(source / "images" / rec["file"]) as im:
            gray = im.convert("L")
            sx, sy = size / gray.size[0], size / gray.size[1]
            small = gray.resize((size, size), Image.Resampling.LANCZOS)
        small.save(out / "images" / rec["file"], "PNG", optimize=True)
        if rec[box_col]:
            frame.loc[k, box_col] = _format_boxes(rec[box_col], sx, sy)
    frame.to_csv(out / "labels.csv", index=False)
    made = read_manifest(out / "labels.csv", out / "images", name="nih-test")
    log.info("wrote %d films of %d patients to %s", len(made), len(set(made.patients())), out)
    return made


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m explorer.data.nih_test", description=__doc__)
    p.add_argument("--source", type=Path, default=shared_nih_dir(), help="NIH copy folder")
    p.add_argument("--out", type=Path, default=assets_dir() / "nih-test", help="output folder")
    p.add_argument("--films", type=int, default=TEST_FILMS, help="about this many films")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--size", type=int, default=SIZE, help="side of the PNGs in pixels")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    made = build(args.source, args.out, args.films, args.seed, args.size)
    boxes: list[Box] = [b for r in made.rows for b in r.boxes]
    log.info("%d boxes on %d films", len(boxes), sum(1 for r in made.rows if r.boxes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
