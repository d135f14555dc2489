"""Attribution budgets: how many steps a model can afford on this device, from its measured cost.

A map that takes minutes is a map nobody waits for. The first time a model is explained on a
device, a batch of image passes (forward and backward, :data:`IMAGE_PROBE` images) and of text
passes (:data:`TEXT_PROBE` prompts, as token attributions batch them) are timed, and the resident memory the image pass's graph holds is read; from those figures
:func:`attribution_budget` chooses, for a target of :data:`MAP_SECONDS` per map and
:data:`WORDS_SECONDS` per prompt's word weights:

* **integrated gradients**: the most integration points (a multiple of 8, between
  :data:`MIN_STEPS` and the default 128) whose passes fit the target, and the points per pass
  that fit half the memory this process may still use (never more than the default 16);
* **occlusion**: the default window (S/8) moved by the smallest stride (from S/16 up to the
  window) whose occluded images fit the target (both prompts share them: one pass serves both);
* **token attributions**: the most points that fit the words' target.

On a GPU or for the embedded models the measured passes are milliseconds and every default
stands; on two CPU cores a BiomedCLIP-sized model gets fewer steps and a coarser occlusion grid,
and the map says so (:meth:`Budget.sentence`), next to the IG completeness gap that tells what
the fewer steps cost.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explorer.attribution.options import (
    DEFAULT_INTERNAL_BATCH_SIZE,
    DEFAULT_STEPS,
    TEXT_METHOD_OF,
    OcclusionOptions,
)
from explorer.models.base import VisionLanguageModel

#: Target seconds for one image map and for one prompt's word weights.
MAP_SECONDS = 10.0
WORDS_SECONDS = 4.0
#: Fewest integration points a budget may choose (below it the maps stop adding up).
MIN_STEPS = 16
#: Share of the memory still available that one IG pass may use.
MEMORY_SHARE = 0.5
#: Images and prompts in the timed batches (per-item costs fall with the batch, as in IG).
IMAGE_PROBE = 4
TEXT_PROBE = DEFAULT_INTERNAL_BATCH_SIZE


@dataclass(frozen=True)
class Budget:
    """What one model affords on one device, and the measurements it rests on.

    Attributes:
        model: The model's name.
        device: Where it runs (``cpu``, ``cuda``).
        image_pass_s: Seconds of one image's forward and backward pass.
        image_forward_s: Seconds of one image's forward pass.
        text_pass_s: Seconds of one prompt's forward and backward pass.
        image_pass_bytes: Resident memory one image's pass holds until its backward.
        ig_steps: Integration points of image IG.
        ig_batch: Points per pass.
        occlusion_stride: Occlusion stride in model pixels (window: the default).
        token_steps: Integration points of token attributions.
        image_size: The model's input side in pixels.
    """

    model: str
    device: str
    image_pass_s: float
    image_forward_s: float
    text_pass_s: float
    image_pass_bytes: int
    ig_steps: int
    ig_batch: int
    occlusion_stride: int
    token_steps: int
    image_size: int

    def image_options(self, method: str) -> dict[str, Any]:
        """Keyword arguments of ``attribute_image`` / ``attribute_pair`` for ``method``."""
        if method == "ig":
            return {"steps": self.ig_steps, "internal_batch_size": self.ig_batch}
        if method == "occlusion":
            return {"stride": self.occlusion_stride}
        return {}

    def text_options(self, method: str = "layer_ig") -> dict[str, Any]:
        """Keyword arguments of ``attribute_text`` for ``method``."""
        return {"steps": self.token_steps} if method == "layer_ig" else {}

    @property
    def _default_stride(self) -> int:
        return OcclusionOptions().resolved(self.image_size)[1]

    @property
    def _reduced(self) -> dict[str, bool]:
        """Per part (``ig``, ``occlusion``, ``words``): whether it runs with less than its
        default here."""
        return {
            "ig": self.ig_steps < DEFAULT_STEPS or self.ig_batch < DEFAULT_INTERNAL_BATCH_SIZE,
            "occlusion": self.occlusion_stride > self._default_stride,
            "words": self.token_steps < DEFAULT_STEPS,
        }

    @property
    def reduced(self) -> bool:
        """Whether any method runs with less than its default here."""
        return any(self._reduced.values())

    def sentence(self, method: str) -> str:
        """What the budget changed for ``method``, in words ("" when nothing)."""
        reduced = self._reduced
        cost = f"one image pass takes {self.image_pass_s:.2f} s on {self.device}"
        if method == "ig" and reduced["ig"]:
            return (
                f"Budget: {self.ig_steps} integration points ({DEFAULT_STEPS} by default), "
                f"{self.ig_batch} per pass, because {cost}."
            )
        if method == "occlusion" and reduced["occlusion"]:
            return (
                f"Budget: the occlusion window moves {self.occlusion_stride} pixels at a time "
                f"({self._default_stride} by default), because {cost}."
            )
        # the methods whose words are token integrated gradients (attention has its own)
        if reduced["words"] and TEXT_METHOD_OF.get(method, "layer_ig") == "layer_ig":
            return (
                f"Budget: the word weights use {self.token_steps} integration points "
                f"({DEFAULT_STEPS} by default), because one text pass takes "
                f"{self.text_pass_s:.2f} s on {self.device}."
            )
        return ""


def _rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096  # resident pages
    except (OSError, ValueError, IndexError):
        return 0


def _available_bytes(device: torch.device) -> int:
    """Memory this process may still use on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 8 * 1024**3


def _measure(model: VisionLanguageModel) -> tuple[float, float, float, int]:
    """Seconds of one image pass (forward + backward), one image forward, one text pass, and
    the bytes one image pass holds."""
    from explorer.attribution.core import attribution_mode
    from explorer.attribution.image import image_similarity_forward

    size = model.preprocess_cfg.image_size
    rng = np.random.default_rng(0)
    with attribution_mode(model), torch.inference_mode(False):
        text = model.encode_text(model.tokenize(["there is a pleural effusion"])).detach()
        forward = image_similarity_forward(model, text)
        shape = (IMAGE_PROBE, 1, size, size)
        x = torch.as_tensor(rng.random(shape, dtype=np.float32), device=model.device)
        with torch.no_grad():
            forward(x[:1])  # warm (first-call allocations, lazy modules)
            t0 = time.perf_counter()
            forward(x)
            image_forward = (time.perf_counter() - t0) / IMAGE_PROBE
        before = _rss_bytes()
        with torch.enable_grad():
            probe = x.clone().requires_grad_(True)
            t0 = time.perf_counter()
            out = forward(probe).sum()
            held = max(0, _rss_bytes() - before) // IMAGE_PROBE
            out.backward()
            image_pass = (time.perf_counter() - t0) / IMAGE_PROBE
            if model.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(model.device) // IMAGE_PROBE
                held = max(held, peak)
            tokens = model.tokenize(["there is a small left pleural effusion"] * TEXT_PROBE)
            embedding = model.token_embedding_layer
            hook = embedding.register_forward_hook(lambda _m, _i, o: o.requires_grad_(True))
            try:
                t0 = time.perf_counter()
                model.encode_text(tokens).sum().backward()
                text_pass = (time.perf_counter() - t0) / TEXT_PROBE
            finally:
                hook.remove()
        model.module.zero_grad(set_to_none=True)
    return image_pass, image_forward, text_pass, int(held)


def _fit_steps(pass_s: float, seconds: float) -> int:
    steps = int(seconds / max(pass_s, 1e-6)) // 8 * 8
    return int(min(DEFAULT_STEPS, max(MIN_STEPS, steps)))


def _fit_stride(size: int, forward_s: float, seconds: float) -> int:
    window, stride = OcclusionOptions().resolved(size)
    while stride < window:
        positions = (math.ceil((size - window) / stride) + 1) ** 2
        if positions * forward_s <= seconds:
            break
        stride += 1
    return stride


#: Model -> device -> its budget (a model the registry lets go is forgotten with it).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def attribution_budget(
    model: VisionLanguageModel,
    map_seconds: float = MAP_SECONDS,
    words_seconds: float = WORDS_SECONDS,
) -> Budget:
    """The budget of ``model`` on its device (measured once per model object, then cached)."""
    device = str(model.device)
    with _LOCK:
        hit = _CACHE.get(model, {}).get(device)
        if hit is not None:
            return hit
        image_pass, image_forward, text_pass, held = _measure(model)
        size = model.preprocess_cfg.image_size
        room = int(_available_bytes(model.device) * MEMORY_SHARE)
        batch = DEFAULT_INTERNAL_BATCH_SIZE
        if held > 0:
            batch = int(max(1, min(DEFAULT_INTERNAL_BATCH_SIZE, room // held)))
        budget = Budget(
            model=model.name,
            device=str(model.device.type),
            image_pass_s=image_pass,
            image_forward_s=image_forward,
            text_pass_s=text_pass,
            image_pass_bytes=held,
            ig_steps=_fit_steps(image_pass, map_seconds),
            ig_batch=batch,
            occlusion_stride=_fit_stride(size, image_forward, map_seconds),
            token_steps=_fit_steps(text_pass, words_seconds),
            image_size=size,
        )
        _CACHE.setdefault(model, {})[device] = budget
        return budget


__all__ = ["MAP_SECONDS", "MIN_STEPS", "WORDS_SECONDS", "Budget", "attribution_budget"]
