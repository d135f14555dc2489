"""Rendered phantom sets for training and evaluation, and the report edits both use.

A :class:`PhantomSet` holds rendered images (uint8), each image's ground truth over
:data:`PHANTOM_FINDINGS` (+1 present, -1 absent) and its generated report. Sets are cached on
disk keyed by (size, count, base seed, :func:`render_version`) so the two shipped models and
the benchmark render each set once. Which base seeds train and which are held out is in
:mod:`explorer.phantom.splits`.

Report edits: :func:`join_sentences` (sentences -> report text) and :func:`flip_finding` (the
sentences with one finding's polarity flipped) make the training set's negated twins and the
benchmark's hard negatives. :func:`zero_shot_phrase` is how a phantom finding is phrased in
the benchmark's zero-shot prompts (and among the training prompts).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from explorer.paths import cache_dir
from explorer.phantom.records import PHANTOM_FINDINGS
from explorer.phantom.renderer import render_phantom
from explorer.phantom.reports import Report, ReportSentence, generate_report
from explorer.phantom.splits import SEED_STRIDE

log = logging.getLogger(__name__)

#: How a phantom finding is phrased in the benchmark's zero-shot prompts (default: its own name).
ZERO_SHOT_PHRASES = {"nodule/mass": "lung nodule or mass"}


def zero_shot_phrase(finding: str) -> str:
    """The phrase the benchmark puts into its prompt templates for a phantom finding."""
    return ZERO_SHOT_PHRASES.get(finding, finding)


@dataclass(frozen=True)
class PhantomSet:
    """Rendered phantoms with their truth and reports.

    Attributes:
        images: ``[N, S, S]`` uint8 (display intensities, bone bright).
        truth: ``[N, F]`` float32 over ``PHANTOM_FINDINGS``: +1 present, -1 absent.
        reports: The generated report of each image.
        seeds: The render seed of each image.
        masks: Optional per-image dict finding -> bool mask (kept for evaluation sets).
    """

    images: np.ndarray
    truth: np.ndarray
    reports: tuple[Report, ...]
    seeds: tuple[int, ...]
    masks: tuple[dict[str, np.ndarray], ...] | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def pixels(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 ``[B, S, S]`` in [0, 1] for the given indices."""
        return self.images[np.asarray(index)].astype(np.float32) / 255.0


def _render_one(args: tuple[int, int, bool]) -> tuple[np.ndarray, np.ndarray, Report, dict | None]:
    seed, size, keep_masks = args
    ph = render_phantom(seed, size=size)
    present = set(ph.names)
    truth = np.array([1.0 if f in present else -1.0 for f in PHANTOM_FINDINGS], dtype=np.float32)
    report = generate_report(ph, seed)
    masks = {f.name: np.packbits(f.mask) for f in ph.findings} if keep_masks else None
    img = np.clip(np.rint(ph.image * 255.0), 0, 255).astype(np.uint8)
    return img, truth, report, masks


def render_version() -> str:
    """A short hash of the phantom package's code (this module included): a cached set, or a
    model trained on one, is stale when it changes."""
    h = hashlib.sha1()
    for mod in sorted(Path(__file__).parent.glob("*.py")):
        h.update(mod.read_bytes())
    return h.hexdigest()[:10]


def build_phantom_set(
    count: int,
    base_seed: int,
    size: int,
    keep_masks: bool = False,
    workers: int | None = None,
    cache: bool = True,
) -> PhantomSet:
    """Render ``count`` phantoms (in parallel) or read them from the on-disk cache.

    Raises:
        ValueError: ``count`` is :data:`SEED_STRIDE` or more (the set would reach into the
            next seed range).
    """
    if count >= SEED_STRIDE:
        raise ValueError(f"at most {SEED_STRIDE - 1} phantoms per set")
    key = f"phantoms-{size}-{count}-{base_seed}-{int(keep_masks)}-{render_version()}.pkl"
    path = cache_dir() / key
    if cache and path.exists():
        with path.open("rb") as fh:
            return pickle.load(fh)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    jobs = [(base_seed + k, size, keep_masks) for k in range(count)]
    log.info("rendering %d phantoms at %d px with %d workers", count, size, workers)
    if workers > 1 and count > 64:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_render_one, jobs, chunksize=64))
    else:
        rows = [_render_one(j) for j in jobs]
    shape = (size, size)
    masks = None
    if keep_masks:
        masks = tuple(
            {
                k: np.unpackbits(v)[: size * size].reshape(shape).astype(bool)
                for k, v in r[3].items()
            }
            for r in rows
        )
    data = PhantomSet(
        images=np.stack([r[0] for r in rows]),
        truth=np.stack([r[1] for r in rows]),
        reports=tuple(r[2] for r in rows),
        seeds=tuple(j[0] for j in jobs),
        masks=masks,
    )
    if cache:
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return data


# --- report edits ------------------------------------------------------------------------------


def join_sentences(sentences: Sequence[ReportSentence]) -> str:
    """Sentences -> report text, with section headers when both sections are present."""
    findings = [s.text for s in sentences if s.section == "findings"]
    impression = [s.text for s in sentences if s.section == "impression"]
    if findings and impression:
        return f"FINDINGS: {' '.join(findings)} IMPRESSION: {' '.join(impression)}"
    return " ".join(findings or impression)


def flip_finding(
    sentences: Sequence[ReportSentence], finding: str
) -> tuple[ReportSentence, ...] | None:
    """The sentences with every sentence about ``finding`` negated (or affirmed if negative).

    Returns ``None`` when the negation engine cannot rewrite one of them.
    """
    from explorer.vocab.negation import NegationError, negate

    out = []
    for s in sentences:
        if finding in s.findings:
            try:
                text = negate(s.text)
            except NegationError:
                return None
            s = replace(s, text=text, status=0 if s.status in (1, -1) else 1)
        out.append(s)
    return tuple(out)


__all__ = [
    "ZERO_SHOT_PHRASES",
    "PhantomSet",
    "build_phantom_set",
    "flip_finding",
    "join_sentences",
    "render_version",
    "zero_shot_phrase",
]
