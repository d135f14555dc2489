"""Pieces both training stages share: the learning-rate schedule and resumable checkpoints."""

from __future__ import annotations

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


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_state(path: Path, model, optimizer, scheduler, step: int) -> None:
    """Everything needed to resume training after ``step`` steps."""
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
        },
        path,
    )


def load_state(path: Path, device, model, optimizer, scheduler) -> int:
    """Restore a :func:`save_state` checkpoint in place; returns the step to resume from."""
    state = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
