"""``python -m explorer.phantom``: log a timing table of the phantom renderer.

Example::

    python -m explorer.phantom --n 100 --sizes 224 256 320
"""

from __future__ import annotations

import argparse
import logging

from explorer.phantom.renderer import render_timing

logger = logging.getLogger("explorer.phantom")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and log mean / 90th-percentile render time per image size."""
    parser = argparse.ArgumentParser(description="Time the phantom renderer (one CPU core).")
    parser.add_argument("--n", type=int, default=60, help="images per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 320])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("%6s %12s %12s", "size", "mean ms", "p90 ms")
    for size, mean, p90 in render_timing(args.sizes, args.n):
        logger.info("%6d %12.2f %12.2f", size, mean, p90)


if __name__ == "__main__":
    main()
