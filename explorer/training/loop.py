"""Pieces both training stages share: the learning-rate schedule and resumable checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch


def warmup_cosine(warmup_steps: int, steps: int):
    """LambdaLR factor: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def digest(parts: list) -> str:
    """A short, stable hash of JSON-able ``parts`` (names cached towers and resumable runs)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_state(path: Path, model, optimizer, scheduler, step: int, key: str = "") -> None:
    """Everything needed to resume training after ``step`` steps.

    ``key`` names the run (a hash of its config and data); :func:`load_state` only resumes
    a checkpoint whose key matches.
    """
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "key": key,
        },
        path,
    )


def load_state(path: Path, device, model, optimizer, scheduler, key: str = "") -> int | None:
    """Restore a :func:`save_state` checkpoint in place; returns the step to resume from.

    Returns None, touching nothing, when the checkpoint was written by a run with another
    ``key`` (a changed config or renderer): resuming it would mix two trainings.
    """
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("key", "") != key:
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
