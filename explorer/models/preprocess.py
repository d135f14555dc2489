"""Preprocessing, the one home: how a grayscale image becomes a model's input, and back.

The forward transform and its inverse sit side by side and share one description of the
geometry (:func:`placement`):

* :func:`to_model_grid` - grayscale ``[H, W]`` (or ``[B, H, W]``) in [0, 1] -> ``[B, 1, S, S]``
  at the model's input size (resized, centre-cropped or letterboxed), still in [0, 1];
* :func:`normalize` - that grid -> the ``[B, 3, S, S]`` tensor the image tower reads (gray
  repeated to three channels, minus the mean, over the standard deviation);
* :func:`prepare_pixels` - both at once: what every adapter's ``preprocess`` returns;
* :func:`to_image_space` - the inverse of the geometry: an ``[S, S]`` map over the model input
  resampled onto the caller's ``[H, W]`` image, a map pixel landing on the image pixel it
  came from.

:class:`Preprocess` says which transform a model wants; it is read from
``explorer/configs/models.json``, from a checkpoint's own files
(:func:`from_checkpoint`, ``preprocessor_config.json`` or ``open_clip_config.json``), or from a
loaded model's processor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("shortest", "squash", "pad")

#: File names a checkpoint folder states its preprocessing in (transformers, open_clip).
HF_PROCESSOR_FILE = "preprocessor_config.json"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"


@dataclass(frozen=True)
class Preprocess:
    """How a grayscale [0, 1] image becomes the model's input tensor.

    Attributes:
        image_size: Side of the square input, in pixels.
        mean: Per-channel mean subtracted after scaling to [0, 1] (RGB order).
        std: Per-channel standard deviation divided by (RGB order).
        resize_mode: ``"shortest"`` (resize the short side then centre-crop, as CLIP does),
            ``"squash"`` (resize both sides, ignoring aspect) or ``"pad"`` (letterbox with black).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if self.image_size < 8:
            raise ValueError("image_size must be at least 8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """From a ``models.json`` ``preprocess`` section (missing keys take the defaults)."""
        return cls(
            image_size=int(data.get("image_size", cls.image_size)),
            mean=tuple(float(v) for v in data.get("mean", cls.mean)),
            std=tuple(float(v) for v in data.get("std", cls.std)),
            resize_mode=str(data.get("resize_mode", cls.resize_mode)),
        )

    @classmethod
    def from_image_processor(cls, config: Mapping[str, Any]) -> Preprocess:
        """From a transformers image processor's settings (``preprocessor_config.json``).

        ``size`` ``{"shortest_edge": S}`` is CLIP's resize-then-centre-crop (``"shortest"``);
        ``{"height": S, "width": S}`` or a plain ``S`` resizes both sides (``"squash"``).
        """
        size = config["size"]
        if isinstance(size, Mapping):
            side = size.get("shortest_edge") or size.get("height")
            mode = "shortest" if "shortest_edge" in size else "squash"
        else:
            side, mode = size, "squash"
        return cls(
            int(side),
            tuple(float(v) for v in config["image_mean"]),
            tuple(float(v) for v in config["image_std"]),
            mode,
        )

    @classmethod
    def from_open_clip(cls, config: Mapping[str, Any]) -> Preprocess:
        """From an open_clip ``preprocess_cfg`` (``size``, ``mean``, ``std``, ``resize_mode``)."""
        size = config.get("size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        mode = {"squash": "squash", "longest": "pad"}.get(config.get("resize_mode", ""), "shortest")
        return cls.from_dict(
            {
                "image_size": size,
                "mean": config.get("mean", cls.mean),
                "std": config.get("std", cls.std),
                "resize_mode": mode,
            }
        )

    def image_processor_settings(self) -> dict[str, Any]:
        """The settings of a transformers ``ViTImageProcessor`` that resizes like this.

        Only ``"squash"`` has such a processor (a ViT processor resizes both sides); the
        inverse of :meth:`from_image_processor`.

        Raises:
            ValueError: The resize mode is not ``"squash"``.
        """
        if self.resize_mode != "squash":
            raise ValueError(
                f"only the 'squash' resize mode can be written as a ViT image processor, "
                f"got {self.resize_mode!r}"
            )
        side = int(self.image_size)
        return {
            "size": {"height": side, "width": side},
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }


def from_checkpoint(folder: Path) -> Preprocess | None:
    """The preprocessing a checkpoint folder states in its own files, or None.

    Reads ``preprocessor_config.json`` (transformers) or the ``preprocess_cfg`` of
    ``open_clip_config.json`` (open_clip); None when the folder has neither.
    """
    folder = Path(folder)
    hf = folder / HF_PROCESSOR_FILE
    if hf.is_file():
        return Preprocess.from_image_processor(json.loads(hf.read_text(encoding="utf-8")))
    oc = folder / OPEN_CLIP_CONFIG_FILE
    if oc.is_file():
        cfg = json.loads(oc.read_text(encoding="utf-8")).get("preprocess_cfg")
        return Preprocess.from_open_clip(cfg) if cfg else None
    return None


# --- the geometry, shared by both directions -------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where an ``[H, W]`` image lands in the model's ``[S, S]`` input.

    Attributes:
        size: ``S``.
        resized: ``(h, w)`` of the image after resizing (``(S, S)`` for ``"squash"``).
        top: ``"shortest"``: first row of the crop in the resized image; ``"pad"``: first row
            of the resized image in the letterbox; 0 for ``"squash"``.
        left: The same for columns.
        mode: The resize mode.
        identity: The image is already ``S x S``: nothing is resampled, cropped or padded.
    """

    size: int
    resized: tuple[int, int]
    top: int
    left: int
    mode: str
    identity: bool


def placement(shape: tuple[int, int], pre: Preprocess) -> Placement:
    """The geometry of :func:`to_model_grid` for an image of ``shape`` (and of its inverse)."""
    h, w = int(shape[0]), int(shape[1])
    size = pre.image_size
    if h == w == size:
        return Placement(size, (size, size), 0, 0, pre.resize_mode, True)
    if pre.resize_mode == "shortest":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        top, left = (nh - size) // 2, (nw - size) // 2
    elif pre.resize_mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
    else:  # squash
        nh = nw = size
        top = left = 0
    return Placement(size, (nh, nw), top, left, pre.resize_mode, False)


# --- forward: image -> model input ------------------------------------------------------------


def to_model_grid(pixels: np.ndarray | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Grayscale ``[H, W]`` (or ``[B, H, W]``) in [0, 1] -> ``[B, 1, S, S]`` float32 in [0, 1].

    Resized (bicubic, antialiased), centre-cropped or letterboxed with black as ``pre`` says,
    then clamped to [0, 1]; not normalised. Differentiable with respect to a tensor input.

    Raises:
        ValueError: The input is not one grayscale image or a batch of them.
    """
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = np.array(pixels, dtype=np.float32)  # read-only arrays (e.g. phantoms) are copied
    x = torch.as_tensor(pixels, dtype=torch.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(
            f"expected a grayscale image [H, W] or a batch [B, H, W], got {tuple(x.shape)}"
        )
    x = x[:, None]  # [B, 1, H, W]
    where = placement(tuple(x.shape[-2:]), pre)
    if not where.identity:
        x = F.interpolate(
            x, size=where.resized, mode="bicubic", antialias=True, align_corners=False
        )
        size, (nh, nw), top, left = where.size, where.resized, where.top, where.left
        if where.mode == "shortest":
            x = x[..., top : top + size, left : left + size]
        elif where.mode == "pad":
            x = F.pad(x, (left, size - nw - left, top, size - nh - top), value=0.0)
    return x.clamp(0.0, 1.0)


def normalize(grid: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """``[B, 1, S, S]`` gray in [0, 1] -> the normalised ``[B, 3, S, S]`` the tower reads.

    Values are clamped to [0, 1] first (an attribution's interpolated inputs stay images),
    repeated to three channels, minus ``pre.mean``, over ``pre.std``; on ``grid``'s device.
    """
    rgb = grid.clamp(0.0, 1.0).expand(-1, 3, -1, -1)
    mean = torch.tensor(pre.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def prepare_pixels(pixels: np.ndarray | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Grayscale ``[H, W]`` (or ``[B, H, W]``) in [0, 1] -> normalised ``[B, 3, S, S]`` float32.

    :func:`to_model_grid` then :func:`normalize`. Differentiable with respect to a tensor
    input, so attributions can flow to the pixels.
    """
    return normalize(to_model_grid(pixels, pre), pre)


# --- inverse: model-input map -> image space ------------------------------------------------


def to_image_space(
    model_map: torch.Tensor | np.ndarray, pre: Preprocess, shape: tuple[int, int]
) -> np.ndarray:
    """Resample an ``[S, S]`` model-input map onto an ``[H, W]`` image (bilinear).

    Undoes the geometry of :func:`to_model_grid`: a centre crop (``"shortest"``) is pasted
    back into its place with zeros where the model saw nothing; a letterbox (``"pad"``) is
    cut away before resizing.

    Raises:
        ValueError: The map is not ``[S, S]``.
    """
    m = torch.as_tensor(np.asarray(model_map, dtype=np.float32))[None, None]
    size = pre.image_size
    if m.shape[-2:] != (size, size):
        raise ValueError(f"expected a [{size}, {size}] map, got {tuple(m.shape[-2:])}")
    where = placement(shape, pre)
    if not where.identity:
        (nh, nw), top, left = where.resized, where.top, where.left
        if where.mode == "shortest":
            canvas = torch.zeros(1, 1, nh, nw)
            canvas[..., top : top + size, left : left + size] = m
            m = canvas
        elif where.mode == "pad":
            m = m[..., top : top + nh, left : left + nw]
        h, w = int(shape[0]), int(shape[1])
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return m[0, 0].numpy().astype(np.float32, copy=True)


__all__ = [
    "HF_PROCESSOR_FILE",
    "OPEN_CLIP_CONFIG_FILE",
    "RESIZE_MODES",
    "Placement",
    "Preprocess",
    "from_checkpoint",
    "normalize",
    "placement",
    "prepare_pixels",
    "to_image_space",
    "to_model_grid",
]
