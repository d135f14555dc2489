"""Contact sheets of phantom cases, for looking at the renderer's output.

``python -m explorer.phantom.sheet OUT.png`` writes a sheet with a grid of sampled cases and,
for every finding, the normal twin, the finding and its mask outline side by side.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from explorer.phantom.records import PHANTOM_FINDINGS, FindingSpec, Phantom
from explorer.phantom.renderer import render_phantom

logger = logging.getLogger(__name__)

_SHORT = {
    "cardiomegaly": "cardiomeg",
    "pleural effusion": "effusion",
    "pneumothorax": "PTX",
    "consolidation": "consol",
    "atelectasis": "atelect",
    "pulmonary edema": "edema",
    "nodule/mass": "nod/mass",
    "enlarged cardiomediastinum": "wide med",
    "rib fracture": "rib fx",
    "support devices": "devices",
}
_LAT = {"left": "L", "right": "R", "bilateral": "bi", None: ""}
_DEFAULT_FORCED: dict[str, FindingSpec] = {
    "cardiomegaly": FindingSpec("cardiomegaly", severity="moderate"),
    "pleural effusion": FindingSpec("pleural effusion", "right", "moderate"),
    "pneumothorax": FindingSpec("pneumothorax", "left", "moderate"),
    "consolidation": FindingSpec("consolidation", "right", "large"),
    "atelectasis": FindingSpec("atelectasis", "left", "large"),
    "pulmonary edema": FindingSpec("pulmonary edema", severity="moderate"),
    "nodule/mass": FindingSpec("nodule/mass", "right", "large"),
    "enlarged cardiomediastinum": FindingSpec("enlarged cardiomediastinum", severity="large"),
    "rib fracture": FindingSpec("rib fracture", "right"),
    "support devices": FindingSpec(
        "support devices", details=("endotracheal tube", "right internal jugular line", "pacemaker")
    ),
}


def _gray(img: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def _outlined(phantom: Phantom, colour: tuple[int, int, int] = (255, 60, 60)) -> Image.Image:
    rgb = np.repeat((phantom.image[..., None] * 255).astype(np.uint8), 3, axis=2)
    for f in phantom.findings:
        edge = f.mask & ~ndimage.binary_erosion(f.mask)
        rgb[edge] = colour
    return Image.fromarray(rgb)


def _caption(tile: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, tile.width, 11), fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 0))
    return tile


def case_label(phantom: Phantom) -> str:
    """Short caption: seed and abbreviated findings."""
    if not phantom.findings:
        return f"{phantom.seed}: normal"
    parts = [f"{_SHORT[f.name]}{_LAT[f.laterality]}" for f in phantom.findings]
    return f"{phantom.seed}: " + ",".join(parts)


def case_grid(seeds: Sequence[int], cols: int = 4, size: int = 224) -> Image.Image:
    """Grid of sampled cases with captions."""
    rows = (len(seeds) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * size))
    for k, seed in enumerate(seeds):
        ph = render_phantom(seed, size=size)
        sheet.paste(
            _caption(_gray(ph.image), case_label(ph)), ((k % cols) * size, (k // cols) * size)
        )
    return sheet


def finding_grid(
    seed: int = 7, size: int = 224, names: Sequence[str] = PHANTOM_FINDINGS
) -> Image.Image:
    """For each finding: normal twin, finding, mask outline (one row of three per finding,
    two findings per sheet row)."""
    twin = _gray(render_phantom(seed, findings=[], size=size).image)
    per_row = 2
    rows = (len(names) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * 3 * size, rows * size))
    for k, name in enumerate(names):
        ph = render_phantom(seed, findings=[_DEFAULT_FORCED[name]], size=size)
        f = ph.findings[0]
        desc = " ".join(x for x in (f.laterality, f.severity, name) if x)
        x0, y0 = (k % per_row) * 3 * size, (k // per_row) * size
        sheet.paste(_caption(twin.copy(), f"{seed}: normal twin"), (x0, y0))
        sheet.paste(_caption(_gray(ph.image), desc), (x0 + size, y0))
        sheet.paste(_caption(_outlined(ph), "mask"), (x0 + 2 * size, y0))
    return sheet


def contact_sheet(
    seeds: Sequence[int] = tuple(range(12)), seed: int = 7, size: int = 224
) -> Image.Image:
    """Sampled-case grid (6 per row) on top of the per-finding twin/finding/mask grid."""
    top = case_grid(seeds, cols=6, size=size)
    bottom = finding_grid(seed, size=size)
    width = max(top.width, bottom.width)
    sheet = Image.new("RGB", (width, top.height + bottom.height))
    sheet.paste(top, (0, 0))
    sheet.paste(bottom, (0, top.height))
    return sheet


def _to_palette(sheet: Image.Image, grays: int) -> Image.Image:
    """Palette image with ``grays`` gray levels plus the outline and caption colours."""
    levels = np.linspace(0, 255, max(2, min(grays, 250))).round().astype(np.uint8)
    colours = [(int(g), int(g), int(g)) for g in levels] + [(255, 60, 60), (255, 255, 0)]
    flat = [c for rgb in colours for c in rgb]
    pal = Image.new("P", (1, 1))
    pal.putpalette(flat + flat[-3:] * (256 - len(colours)))
    return sheet.quantize(palette=pal, dither=Image.Dither.NONE)


def main(argv: list[str] | None = None) -> None:
    """Command line: write a contact sheet PNG."""
    parser = argparse.ArgumentParser(description="Write a phantom contact sheet.")
    parser.add_argument("out", help="output PNG path")
    parser.add_argument("--seed", type=int, default=7, help="seed of the per-finding rows")
    parser.add_argument("--cases", type=int, default=12, help="number of sampled cases")
    parser.add_argument("--first", type=int, default=0, help="first sampled seed")
    parser.add_argument("--size", type=int, default=224, help="render size of each tile")
    parser.add_argument("--tile", type=int, default=0, help="shown tile size (0 = --size)")
    parser.add_argument("--colors", type=int, default=0, help="gray levels (0 = full RGB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = list(range(args.first, args.first + args.cases))
    sheet = contact_sheet(seeds, args.seed, args.size)
    if args.tile and args.tile != args.size:
        scale = args.tile / args.size
        sheet = sheet.resize(
            (round(sheet.width * scale), round(sheet.height * scale)), Image.LANCZOS
        )
    if args.colors:
        sheet = _to_palette(sheet, args.colors)
    sheet.save(args.out, optimize=True)
    logger.info("wrote %s (%dx%d)", args.out, sheet.width, sheet.height)


if __name__ == "__main__":
    main()
