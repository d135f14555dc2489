r"""Training a cell pool (:mod:`explorer.models.cell_pool`) on an exported phantom model.

``python -m explorer train --config explorer/configs/train/phantom-cells.json``

The base model's towers stay as they are (locked, like stage 2's image tower): its image
tower's two last grids are computed once for the training phantoms, its text tower embeds each
batch's texts without gradients, and only the pool learns. Two terms:

* the base model's own contrastive loss (``loss`` of its training config: the negation-aware
  loss with soft labels and each text's negated twin, :mod:`explorer.training.losses`) on the
  pooled embedding, with the base's texts (report views and finding prompts,
  :class:`explorer.training.data.PhantomTraining`) and its logit scale;
* a localisation term from the phantoms' lesion masks: for each finding an image has, the
  share map of one of its affirmed prompts (chosen at random among the training templates), as
  a softmax over the cells at the map's own spread, should put its mass on the cells the mask
  touches (the targets stage 1 learned, :func:`explorer.training.pretrain.cell_targets`):

      L_loc = mean_{i, f} -log sum_{c in M_if} softmax_c(s_c / std(s))

so the cells that carry the similarity are the lesion's; and (``keep_weight``) ``1 - cos`` to the
base model's own embedding of the image, so that the pool re-distributes the base model's
similarity over the cells rather than learning another. The shipped model never reads a mask.

Seeded, resumable from ``train_state.pt`` (a checkpoint of another config is ignored); the
folder keeps ``training_config.json`` and ``train_log.jsonl`` as the other trainings do.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorer.models.base import VisionLanguageModel, default_device
from explorer.models.cell_pool import CellPool, CellPoolConfig, stage_maps
from explorer.models.preprocess import HF_PROCESSOR_FILE
from explorer.models.spec import ModelSpec
from explorer.paths import resolve
from explorer.phantom import PHANTOM_FINDINGS
from explorer.phantom.sets import build_phantom_set, render_version
from explorer.phantom.splits import TRAIN_SEED
from explorer.scoring import embed_texts_once
from explorer.training import losses
from explorer.training.data import PhantomTraining, finding_prompt_pairs
from explorer.training.loop import digest, load_state, save_state, warmup_cosine
from explorer.training.pretrain import SHIFT, cell_targets
from explorer.vocab.soft_labels import clinical_similarity

log = logging.getLogger(__name__)

#: What a config file says to be a cell-pool training (the dual-encoder configs have no kind).
KIND = "cell_pool"


@dataclass(frozen=True)
class CellPoolTraining:
    """A cell-pool training run (read from JSON with ``"kind": "cell_pool"``).

    Attributes:
        name: The run's name (its work folder under ``work_dir``).
        base: The exported model whose towers are pooled (stays locked).
        base_config: The training config ``base`` was trained with: its texts, loss and
            soft-label settings are reused.
        out_dir: Where the pool is exported (``cell_pool.json``, ``cell_pool.safetensors``).
        localise_weight: Weight of the mask term (0: the contrastive loss alone).
        keep_weight: Weight of a term that keeps the pooled embedding near the base model's
            own (``1 - cos``), so what the base model learned of negation is not traded away.
    """

    name: str
    base: str
    base_config: str
    out_dir: str
    kind: str = KIND
    steps: int = 600
    batch_size: int = 32
    train_images: int = 6000
    seed: int = 0
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 25
    grad_clip: float = 1.0
    localise_weight: float = 1.0
    keep_weight: float = 0.0
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0
    work_dir: str = ".cache/train"

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> CellPoolTraining:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown cell-pool training config keys: {sorted(unknown)}")
        if data.get("kind") != KIND:
            raise ValueError(f'a cell-pool training config says "kind": "{KIND}"')
        return cls(**data)


def is_cell_pool_config(path: str | Path) -> bool:
    """Whether the training config at ``path`` is a cell-pool training."""
    return json.loads(Path(path).read_text(encoding="utf-8")).get("kind") == KIND


def _base_model(cfg: CellPoolTraining, device: torch.device) -> VisionLanguageModel:
    from explorer.models.hf_backend import TransformersModel

    spec = ModelSpec(name=f"{cfg.name}-base", backend="transformers", source=cfg.base)
    return TransformersModel(spec, device)


def grid_features(
    model: VisionLanguageModel, data, batch: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The locked image tower's two last feature maps for every image of ``data`` (half
    precision, on the CPU) and the base model's own normalised image embeddings, from one
    pass of the tower (the dual encoder projects the tower's pooled output)."""
    head = model.module
    fine, coarse, own = [], [], []
    with torch.inference_mode():
        for lo in range(0, len(data), batch):
            x = model.preprocess(data.pixels(np.arange(lo, min(lo + batch, len(data)))))
            f, c, pooled = stage_maps(head.vision_model, x)
            fine.append(f.half().cpu())
            coarse.append(c.half().cpu())
            own.append(F.normalize(head.visual_projection(pooled), dim=-1).float().cpu())
    return torch.cat(fine), torch.cat(coarse), torch.cat(own)


def localisation_loss(
    pool: CellPool,
    fine: torch.Tensor,
    coarse: torch.Tensor,
    targets: torch.Tensor,
    prompts: torch.Tensor,
) -> torch.Tensor:
    """``L_loc`` over the (image, finding) pairs with a mask.

    Args:
        fine, coarse: The batch's feature maps.
        targets: ``[B, F, g, g]`` 1 where finding ``f``'s mask touches the cell.
        prompts: ``[F, D]`` one normalised affirmed prompt per finding.
    """
    rows, cols = torch.nonzero(targets.flatten(2).amax(dim=-1) > 0, as_tuple=True)
    if not len(rows):
        return torch.zeros((), device=fine.device)
    shares = pool.shares(fine, coarse, prompts)[rows, cols].flatten(1)  # [P, cells]
    spread = shares.detach().std(dim=1, keepdim=True) + 1e-6
    log_p = F.log_softmax(shares / spread, dim=1)
    inside = targets[rows, cols].flatten(1) > 0
    return -torch.logsumexp(log_p.masked_fill(~inside, float("-inf")), dim=1).mean()


@dataclass(frozen=True, eq=False)
class LockedInputs:
    """What the pool trains against, computed once: the base model (its text tower embeds
    each batch), its training config, the phantoms, the locked tower's grids of every phantom
    and the base's own embeddings of them, one set of affirmed prompts per finding."""

    model: VisionLanguageModel
    base_cfg: object  # explorer.training.trainer.TrainConfig
    data: PhantomTraining
    fine: torch.Tensor
    coarse: torch.Tensor
    own: torch.Tensor
    prompts: list[torch.Tensor]
    scale: torch.Tensor
    device: torch.device


def locked_inputs(cfg: CellPoolTraining, device: torch.device) -> LockedInputs:
    from explorer.training.trainer import TrainConfig

    base_cfg = TrainConfig.from_file(resolve(cfg.base_config))
    model = _base_model(cfg, device)
    data = PhantomTraining(
        build_phantom_set(cfg.train_images, TRAIN_SEED, base_cfg.model.image_size, True)
    )
    t0 = time.time()
    fine, coarse, own = grid_features(model, data)
    log.info("%s: grid features of %d phantoms in %.0f s", cfg.name, len(data), time.time() - t0)
    prompts = [
        F.normalize(
            embed_texts_once(
                model, [a for a, _ in finding_prompt_pairs(f, base_cfg.prompt_templates)]
            ),
            dim=-1,
        ).to(device)
        for f in PHANTOM_FINDINGS
    ]
    scale = torch.tensor(model.logit_scale, device=device)
    return LockedInputs(model, base_cfg, data, fine, coarse, own, prompts, scale, device)


def pool_batch_loss(
    pool: CellPool,
    inputs: LockedInputs,
    index: np.ndarray,
    rng: np.random.Generator,
    cfg: CellPoolTraining,
) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the three terms on the phantoms ``index``, and a log row's stats."""
    base_cfg, data, device = inputs.base_cfg, inputs.data, inputs.device
    views = data.views(index, rng, base_cfg, base_cfg.loss == "negaware")
    texts = [v.text for v in views] + [v.negated or v.text for v in views]
    embedded = F.normalize(embed_texts_once(inputs.model, texts, by_length=True), dim=-1)
    txt, neg = embedded[: len(views)].to(device), embedded[len(views) :].to(device)
    has_neg = torch.tensor([v.negated is not None for v in views], device=device)
    fine, coarse = inputs.fine[index].to(device), inputs.coarse[index].to(device)
    image = F.normalize(pool(fine, coarse), dim=-1)
    claims = np.stack([v.claims for v in views])
    sim = clinical_similarity(data.image_claims(index), claims).to(device)
    loss = losses.contrastive_loss(
        base_cfg.loss,
        image,
        txt,
        neg,
        has_neg,
        inputs.scale,
        sim,
        base_cfg.soft_mix,
        base_cfg.soft_temperature,
    )
    local = torch.zeros((), device=device)
    if cfg.localise_weight:
        offsets = np.full((len(index), 2), SHIFT)
        (targets,) = cell_targets(data, index, offsets, [int(fine.shape[-1])])
        prompts = torch.stack([p[rng.integers(len(p))] for p in inputs.prompts])
        local = localisation_loss(pool, fine, coarse, targets.to(device), prompts)
    keep = torch.zeros((), device=device)
    if cfg.keep_weight:
        keep = (1 - (image * inputs.own[index].to(device)).sum(dim=-1)).mean()
    with torch.no_grad():
        ok = ((image * txt).sum(-1) > (image * neg).sum(-1))[has_neg]
    stats = {
        "loss": round(float(loss.detach()), 4),
        "localise": round(float(local.detach()), 4),
        "keep": round(float(keep.detach()), 4),
        "neg_acc": round(float(ok.float().mean()), 4) if len(ok) else None,
    }
    return loss + cfg.localise_weight * local + cfg.keep_weight * keep, stats


def train_cell_pool(cfg: CellPoolTraining, progress: bool = True) -> Path:
    """Run (or resume) the training and export the pool to ``cfg.out_dir``; returns it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = default_device()
    torch.manual_seed(cfg.seed)
    inputs = locked_inputs(cfg, device)
    head = inputs.model.module
    pool = CellPool.from_pooled_head(
        CellPoolConfig(
            base=cfg.base,
            fine_width=int(inputs.fine.shape[1]),
            coarse_width=int(inputs.coarse.shape[1]),
            dim=int(head.visual_projection.weight.shape[0]),
        ),
        head.vision_model.layernorm,
        head.visual_projection,
    ).to(device)
    optimizer = torch.optim.AdamW(pool.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps)
    )
    work = resolve(cfg.work_dir) / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    state_path, log_path = work / "train_state.pt", work / "train_log.jsonl"
    key = run_fingerprint(cfg)
    start = 0
    if state_path.exists():
        resumed = load_state(state_path, device, pool, optimizer, scheduler, key)
        if resumed is None:
            log.warning("%s: ignoring %s, written by another config", cfg.name, state_path)
        else:
            start = resumed
            log.info("resuming %s from step %d", cfg.name, start)
    rows = log_path.read_text().splitlines() if log_path.exists() and start else []
    log_path.write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= start))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.name, unit="step")
    t1 = time.time()
    for step in range(start, cfg.steps):
        rng = np.random.default_rng([cfg.seed, step])
        index = rng.choice(len(inputs.data), size=cfg.batch_size, replace=False)
        total, stats = pool_batch_loss(pool, inputs, index, rng, cfg)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(pool.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", loc=f"{stats['localise']:.3f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "elapsed_s": round(time.time() - t1, 1), **stats}
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_state(state_path, pool, optimizer, scheduler, step + 1, key)
    if bar is not None:
        bar.close()
    out = resolve(cfg.out_dir)
    pool.to("cpu").save(out)
    # the base's image preprocessing, so the registry's "preprocess": "checkpoint" reads it here
    shutil.copyfile(resolve(cfg.base) / HF_PROCESSOR_FILE, out / HF_PROCESSOR_FILE)
    meta = {
        "config": asdict(cfg),
        "device": str(device),
        "train_seconds": round(time.time() - t1, 1),
    }
    (out / "training_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "train_log.jsonl").write_text(log_path.read_text())
    return out


#: Settings that do not change what a run computes.
_NOT_IN_FINGERPRINT = frozenset({"out_dir", "work_dir", "checkpoint_every", "log_every", "threads"})


def run_fingerprint(cfg: CellPoolTraining) -> str:
    """Which checkpoints a run may resume: its settings, the renderer and the base weights."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    weights = resolve(cfg.base) / "model.safetensors"
    stamp = weights.stat().st_size if weights.exists() else None
    return digest([settings, render_version(), stamp])


__all__ = [
    "KIND",
    "CellPoolTraining",
    "grid_features",
    "is_cell_pool_config",
    "LockedInputs",
    "localisation_loss",
    "locked_inputs",
    "pool_batch_loss",
    "run_fingerprint",
    "train_cell_pool",
]
