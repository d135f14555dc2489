r"""Stage 1 of phantom training: the image tower learns the findings from their labels.

Why a supervised warm start. Trained contrastively from scratch on this machine's budget, the
image tower learned only the large signs (heart size, edema) and missed the small ones
(pneumothorax, nodules, rib fractures): a linear probe on its features scored them at AUC
0.55-0.65, so no text tower could tell "no pneumothorax" from "pneumothorax" *for that image*.
The labels the soft-label loss already uses (:data:`~explorer.phantom.PHANTOM_FINDINGS`) give a
far denser signal per step, so stage 1 trains the ConvNeXt with a linear head on them:

    L_bce = - 1/(B F) sum_i sum_f [ y_if log sigma(w_f . h_i + b_f)
                                    + (1 - y_if) log (1 - sigma(w_f . h_i + b_f)) ]

with ``h_i`` the tower's pooled feature of image ``i`` and ``y_if`` = 1 when finding ``f`` is
present. Labels alone taught the tower the large signs but left the small ones near chance (a
linear probe at 4,000 steps: atelectasis 0.72, nodule 0.70, rib fracture 0.65). Phantoms also
know *where* each finding is, so with ``mask_weight`` > 0 a 1x1 convolution on each of the last
two stages (10x10 and 5x5 grids at 160 px) predicts, per cell, whether the finding's mask touches
it:

    L = L_bce + mask_weight * 1/2 sum_{s in {3, 4}} mean_{i, f, cell} BCE(v_s,f . h_s,i(cell) + c_s,f,
                                                                          m_s,if(cell))

with ``m_s,if(cell)`` = 1 when any pixel of finding ``f``'s mask falls in that cell of stage ``s``
(max-pooled from the pixel mask, shifted with the image). This dense signal says which pixels
carry each sign, the way a segmentation dataset would; only stage 1 sees it, the shipped model
never reads a mask. The shipped configs run 6,000 steps: at 4,000 the small signs were still
underfitted (a probe scored rib fractures 0.65 on the training images and on held-out ones
alike; 0.84 after 6,000 steps). The heads are thrown away; stage 2
(:mod:`explorer.training.trainer`) then trains the projections and the text tower contrastively
on top of the *locked* image tower (LiT, Zhai et al. 2022), with loss (a) or (b) + (c). Both
shipped models share one stage-1 tower, so they differ only in the contrastive loss, which is
what the comparison is about.

Images get a random shift of up to :data:`SHIFT` pixels (edge-padded) per step. The result is
cached in the training work folder under a key of everything that defines it, so the second
model's command reuses the first one's tower.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from explorer.models.preprocess import Preprocess, prepare_pixels
from explorer.training.loop import atomic_save, digest, load_state, save_state, warmup_cosine

log = logging.getLogger(__name__)

SHIFT = 6


@dataclass(frozen=True)
class VisionPretrain:
    """Stage-1 settings (a training config's ``vision_pretrain`` section); ``steps`` 0 = off."""

    steps: int = 0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_minutes: float = 0.0
    checkpoint_every: int = 250
    mask_weight: float = 0.0
    augment: str = "shift"  # "shift" (phantoms) or "radiograph" (see radiograph_augment)


class _Classifier(nn.Module):
    """The tower, a linear head on its pooled feature and optional per-cell heads on stages 3-4."""

    def __init__(self, tower: nn.Module, n_out: int, maps: bool = False) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(tower.config.hidden_size, n_out)
        widths = tower.config.hidden_sizes[-2:] if maps else []
        self.cell_heads = nn.ModuleList(nn.Conv2d(w, n_out, 1) for w in widths)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.tower(pixel_values=pixel_values, output_hidden_states=bool(self.cell_heads))
        logits = self.head(out.pooler_output)
        if not self.cell_heads:
            return logits, []
        stages = out.hidden_states[-len(self.cell_heads) :]
        return logits, [h(x) for h, x in zip(self.cell_heads, stages, strict=True)]


def shift_offsets(n: int, rng: np.random.Generator, shift: int = SHIFT) -> np.ndarray:
    """``[n, 2]`` random (dy, dx) in ``0..2*shift`` for :func:`shifted`."""
    return rng.integers(0, 2 * shift + 1, size=(n, 2))


def shifted(images: np.ndarray, offsets: np.ndarray, shift: int = SHIFT) -> np.ndarray:
    """Each ``[..., S, S]`` image of a batch moved by ``offsets[k] - shift`` (edges repeated)."""
    h, w = images.shape[-2:]
    lead = [(0, 0)] * (images.ndim - 2)
    out = np.empty_like(images)
    for k, (dy, dx) in enumerate(offsets):
        padded = np.pad(images[k], [*lead[1:], (shift, shift), (shift, shift)], mode="edge")
        out[k] = padded[..., dy : dy + h, dx : dx + w]
    return out


def cell_targets(
    data, index: np.ndarray, offsets: np.ndarray, grids: list[int], shift: int = SHIFT
) -> list[torch.Tensor]:
    """Per grid size ``g``: ``[B, F, g, g]`` 1.0 where finding ``f``'s mask touches the cell.

    Only the masks an image has are moved and pooled (about two per phantom), not a dense
    ``[B, F, S, S]`` stack, which took an eighth of a stage-1 step.
    """
    from explorer.phantom import PHANTOM_FINDINGS

    column = {f: j for j, f in enumerate(PHANTOM_FINDINGS)}
    where = [(b, name) for b, k in enumerate(index) for name in data.masks[k]]
    out = [torch.zeros(len(index), len(PHANTOM_FINDINGS), g, g) for g in grids]
    if not where:
        return out
    rows = torch.tensor([b for b, _ in where])
    cols = torch.tensor([column[name] for _, name in where])
    masks = np.stack([data.masks[index[b]][name] for b, name in where])
    moved = torch.from_numpy(shifted(masks, offsets[rows.numpy()], shift)).float()
    for target, g in zip(out, grids, strict=True):
        target[rows, cols] = F.adaptive_max_pool2d(moved[:, None], g)[:, 0]
    return out


#: Model settings that only the text side reads: they do not change the stage-1 tower.
TEXT_ONLY_SETTINGS = frozenset(
    {
        "projection_dim",
        "logit_scale_init",
        "freeze_text_embeddings",
        "freeze_text_layers",
        "text_max_length",
    }
)


def cache_key(
    settings: VisionPretrain,
    model_cfg: dict,
    train_images: int,
    seed: int,
    data_key: str | None = None,
) -> str:
    """A short hash of everything that determines the stage-1 tower.

    ``data_key`` names real training films (:attr:`explorer.training.real.FilmSet.fingerprint`);
    without it the data are the rendered phantoms (their count and renderer version).
    """
    vision = {k: v for k, v in model_cfg.items() if k not in TEXT_ONLY_SETTINGS}
    if data_key is not None:
        return digest([asdict(settings), vision, data_key, seed, SHIFT])
    from explorer.phantom.sets import render_version

    return digest([asdict(settings), vision, train_images, seed, render_version(), SHIFT])


def radiograph_augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augmentations suited to radiographs, for ``[B, S, S]`` images in [0, 1].

    Per image: a scale of 0.9-1.1, a rotation of up to 5 degrees, a shift of up to 6 % of the
    side (edges repeated), and a contrast change (gamma 0.8-1.25, then a gain of 0.9-1.1 and an
    offset of up to 0.05 about mid-grey). Never a horizontal flip: the heart is on the left, and
    laterality is part of what a finding says.
    """
    b = len(images)
    scale = rng.uniform(0.9, 1.1, b)
    angle = np.deg2rad(rng.uniform(-5.0, 5.0, b))
    shift = rng.uniform(-0.12, 0.12, (b, 2))  # affine_grid's [-1, 1] frame: 6 % of the side
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack(
        [np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    grid = F.affine_grid(torch.from_numpy(theta).float(), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    gamma = torch.from_numpy(np.exp(rng.uniform(np.log(0.8), np.log(1.25), (b, 1, 1)))).float()
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, (b, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.05, 0.05, (b, 1, 1))).float()
    x = (x.clamp(0, 1) ** gamma - 0.5) * gain + 0.5 + offset
    return x.clamp(0, 1).numpy()


def pretrain_vision(
    tower: nn.Module,
    data,
    settings: VisionPretrain,
    preprocess: Preprocess,
    work: Path,
    key: str,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> dict:
    """Train ``tower`` in place on ``data``'s labels, or load the cached result.

    Returns a summary (steps run, seconds, final loss) that is also written beside the weights.
    """
    done = work / f"vision-{key}.pt"
    summary_path = work / f"vision-{key}.json"
    if done.exists():
        tower.load_state_dict(torch.load(done, map_location=device, weights_only=True))
        log.info("stage 1: reusing the image tower %s", done.name)
        return json.loads(summary_path.read_text()) if summary_path.exists() else {}
    n_out = data.truth.shape[1]
    torch.manual_seed(seed + 1)  # the same head on every rank
    if settings.mask_weight and data.masks is None:
        raise ValueError("mask_weight > 0 needs a phantom set built with keep_masks=True")
    # channels-last runs the depthwise convolutions about 10 % faster on CPU (same results up
    # to float rounding); the tower goes back to the default layout when stage 1 ends.
    model = _Classifier(tower, n_out, maps=settings.mask_weight > 0)
    model = model.to(device, memory_format=torch.channels_last).train()
    net: nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(settings.warmup_steps, settings.steps)
    )
    state_path = work / f"vision-{key}-state.pt"
    start = 0
    if state_path.exists():
        start = load_state(state_path, device, model, optimizer, scheduler, key) or 0
        log.info("stage 1: resuming from step %d", start)
    work.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.steps, initial=start, desc="stage 1: image tower", unit="step")
    targets = torch.as_tensor(data.truth > 0, dtype=torch.float32)
    t0 = time.time()
    step, losses, cell_losses = start, [], []
    for step in range(start, settings.steps):
        rng = np.random.default_rng([seed, 1, rank, step])
        index = rng.choice(len(data), size=settings.batch_size, replace=False)
        offsets = shift_offsets(len(index), rng)
        if settings.augment == "radiograph":
            pixels = prepare_pixels(radiograph_augment(data.pixels(index), rng), preprocess)
        else:
            pixels = prepare_pixels(shifted(data.pixels(index), offsets), preprocess)
        pixels = pixels.to(device, memory_format=torch.channels_last)
        logits, maps = net(pixels)
        bce = F.binary_cross_entropy_with_logits(logits, targets[index].to(device))
        loss = bce
        if maps:
            cells = cell_targets(data, index, offsets, [m.shape[-1] for m in maps])
            cell_bce = sum(
                F.binary_cross_entropy_with_logits(m, c.to(device))
                for m, c in zip(maps, cells, strict=True)
            ) / len(maps)
            loss = bce + settings.mask_weight * cell_bce
            cell_losses.append(float(cell_bce.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(bce.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bce=f"{np.mean(losses[-50:]):.3f}")
        if rank == 0 and (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            save_state(state_path, model, optimizer, scheduler, step + 1, key)
        if settings.max_minutes and time.time() - t0 > 60 * settings.max_minutes:
            log.warning("stage 1: time budget reached at step %d", step + 1)
            break
    if bar is not None:
        bar.close()
    summary = {
        "steps": step + 1,
        "seconds": round(time.time() - t0, 1),
        "bce_last_50": round(float(np.mean(losses[-50:])), 4) if losses else None,
    }
    if cell_losses:
        summary["cell_bce_last_50"] = round(float(np.mean(cell_losses[-50:])), 4)
    tower.to(memory_format=torch.contiguous_format)
    if rank == 0:
        atomic_save(tower.state_dict(), done)
        summary_path.write_text(json.dumps(summary))
        state_path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    return summary


@torch.inference_mode()
def pooled_features(
    tower: nn.Module, data, preprocess: Preprocess, device: torch.device, batch: int = 128
) -> torch.Tensor:
    """The locked tower's pooled feature of every image of ``data`` (``[N, hidden]``, on CPU)."""
    was_training = tower.training
    tower.eval()
    out = []
    for lo in range(0, len(data), batch):
        index = np.arange(lo, min(lo + batch, len(data)))
        pixels = prepare_pixels(data.pixels(index), preprocess).to(device)
        out.append(tower(pixel_values=pixels).pooler_output.float().cpu())
    tower.train(was_training)
    return torch.cat(out)
