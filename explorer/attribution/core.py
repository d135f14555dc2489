"""What the image and text attributions share: the error, the lock, checks and small helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from explorer.errors import ExplorerError
from explorer.models.base import MODEL_LOCK, VisionLanguageModel
from explorer.progress import Progress

ForwardFunc = Callable[[torch.Tensor], torch.Tensor]


class AttributionError(ExplorerError):
    """An attribution could not be computed (for instance the model produced NaNs)."""


def relative(delta: float, gap: float) -> float:
    """``|delta| / |gap|``, the completeness residual relative to the explained difference."""
    return abs(delta) / max(abs(gap), 1e-12)


class Counted:
    """Wrap a forward function to report progress by the number of samples evaluated."""

    def __init__(
        self, func: Callable[..., torch.Tensor], total: int, progress: Progress | None, msg: str
    ) -> None:
        self.func, self.total, self.progress, self.msg = func, max(1, total), progress, msg
        self.done = 0

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.func(x, *args)
        self.done += int(x.shape[0])
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total), self.msg)
        return out


@contextmanager
def attribution_mode(model: VisionLanguageModel) -> Iterator[None]:
    """Eval mode for the call (restored afterwards), one attribution at a time."""
    module = model.module
    was_training = module.training
    with MODEL_LOCK:  # one attribution at a time, and no embedding meanwhile
        if was_training:
            module.eval()
        try:
            yield
        finally:
            if was_training:
                module.train()


def as_image(pixels: np.ndarray) -> np.ndarray:
    """A writable float32 copy of one grayscale ``[H, W]`` image with finite values."""
    arr = np.array(pixels, dtype=np.float32, copy=True)
    if arr.ndim != 2:
        raise ValueError(f"expected one grayscale image [H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the image contains NaN or infinite values")
    return arr


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt must be a non-empty string")
    return prompt


def check_finite(value: torch.Tensor | np.ndarray | float, what: str) -> None:
    """Raise :class:`AttributionError` when ``value`` holds a NaN or an infinity."""
    ok = (
        bool(torch.isfinite(value).all())
        if isinstance(value, torch.Tensor)
        else bool(np.isfinite(value).all())
    )
    if not ok:
        raise AttributionError(f"The {what} came out as NaN or infinite; no map was produced.")


def frozen(arr: np.ndarray) -> np.ndarray:
    """A read-only contiguous float32 copy (or view) of ``arr``."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    arr.setflags(write=False)
    return arr
