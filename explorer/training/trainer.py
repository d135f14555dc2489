"""Training loop: seeded, resumable, CPU or GPU, single process or ``torchrun`` (DDP).

``python -m explorer train --config explorer/configs/train/phantom-negaware.json``

Under ``torchrun --nproc_per_node N`` each process draws its own batches (seeded by rank and
step), gradients are averaged by DistributedDataParallel (gloo on CPU, NCCL on GPU) and the
contrastive loss is computed within each process's batch. Checkpoints (``train_state.pt``)
are written by rank 0 every ``checkpoint_every`` steps; a rerun with the same config resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from explorer.models.base import default_device
from explorer.models.preprocess import Preprocess, prepare_pixels
from explorer.paths import resolve
from explorer.phantom.sets import build_phantom_set, render_version
from explorer.phantom.splits import TRAIN_SEED
from explorer.training import losses
from explorer.training.data import PhantomTraining
from explorer.training.loop import digest, load_state, save_state, warmup_cosine
from explorer.training.model import EncoderConfig, TrainingWrapper, build_dual_encoder, export
from explorer.training.pretrain import VisionPretrain, cache_key, pooled_features, pretrain_vision
from explorer.vocab.soft_labels import clinical_similarity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (read from JSON)."""

    name: str
    loss: str = "negaware"  # one of losses.LOSSES
    data: str = "phantom"  # "phantom" (rendered, paired reports) or "real" (a manifest + reports)
    manifest: str = "nih-train"  # real data: the films (explorer.training.real.training_manifest)
    reports: str = "iu"  # real data: the report corpus the films are matched with
    p_written: float = 0.0  # real data: share of views written from the film's labels
    match_top_k: int = 32  # real data: a film's text is drawn from its k closest reports
    vision_init: str = ""  # start the image tower from this exported model's tower ("" = random)
    out_dir: str = "assets/models/phantom-negaware"
    steps: int = 600
    batch_size: int = 64
    train_images: int = 20000
    seed: int = 0
    lr_vision: float = 5e-4
    lr_text: float = 5e-5
    lr_head: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 40
    grad_clip: float = 1.0
    p_full_report: float = 0.5
    p_prompt: float = 0.0  # share of views that are one zero-shot style prompt (prompt_view)
    prompt_templates: tuple[str, ...] = ()  # prompts.json template ids for them (all if empty)
    soft_mix: float = 0.5
    soft_temperature: float = 0.1
    checkpoint_every: int = 50
    max_minutes: float = 0.0  # > 0: stop and export when this much wall time has passed
    log_every: int = 10
    threads: int = 0  # 0 = torch default
    pretrained_text: bool = True
    work_dir: str = ".cache/train"
    vision_pretrain: VisionPretrain = field(default_factory=VisionPretrain)
    lock_image: bool = False  # stage 2 keeps the image tower fixed (LiT) and caches its features
    model: EncoderConfig = field(default_factory=EncoderConfig)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.update({k: v for k, v in overrides.items() if v is not None})
        model = data.pop("model", {})
        stage1 = VisionPretrain(**data.pop("vision_pretrain", {}))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        if data.get("loss", "negaware") not in losses.LOSSES:
            raise ValueError(f"loss must be one of {losses.LOSSES}")
        if data.get("data", "phantom") not in ("phantom", "real"):
            raise ValueError("data must be 'phantom' or 'real'")
        return cls(**_tuples(data), vision_pretrain=stage1, model=EncoderConfig(**_tuples(model)))

    @property
    def preprocess(self) -> Preprocess:
        return self.model.preprocess


def _tuples(section: dict) -> dict:
    """JSON lists as tuples, so the frozen configs stay hashable."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def _resolve(path: str) -> Path:
    return resolve(path)  # assets/ and .cache/ follow EXPLORER_ASSETS / EXPLORER_CACHE


def _dist_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(rank: int) -> torch.device:
    dev = default_device()
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu") if dev.type == "mps" and dist.is_initialized() else dev


def _param_groups(model, cfg: TrainConfig) -> list[dict]:
    groups = {"vision": [], "text": [], "head": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (
            "vision"
            if name.startswith("vision_model.")
            else "text"
            if name.startswith("text_model.")
            else "head"
        )
        groups[key].append(p)
    lrs = {"vision": cfg.lr_vision, "text": cfg.lr_text, "head": cfg.lr_head}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def batch_loss(
    wrapper, tokenizer, data, index, rng, cfg: TrainConfig, device, pooled=None
) -> tuple[torch.Tensor, dict]:
    """Build one batch from ``data`` rows ``index`` and return (loss, stats).

    ``pooled``: the locked image tower's features of every row of ``data`` (or ``None``).
    """
    with_neg = cfg.loss == "negaware"
    views = data.views(index, rng, cfg, with_neg)
    if pooled is not None:  # locked image tower: its features were computed once
        image_input = {"pooled": pooled[index]}
    else:
        image_input = {
            "pixel_values": prepare_pixels(data.pixels(index), cfg.preprocess).to(device)
        }
    enc = tokenizer(
        [v.text for v in views],
        padding=True,
        truncation=True,
        max_length=cfg.model.text_max_length,
        return_tensors="pt",
    ).to(device)
    neg_ids = neg_mask = None
    has_neg = torch.tensor([v.negated is not None for v in views], device=device)
    if with_neg:
        neg_texts = [v.negated if v.negated is not None else v.text for v in views]
        neg = tokenizer(
            neg_texts,
            padding=True,
            truncation=True,
            max_length=cfg.model.text_max_length,
            return_tensors="pt",
        ).to(device)
        neg_ids, neg_mask = neg["input_ids"], neg["attention_mask"]
    img, txt, negf, scale = wrapper(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        neg_ids=neg_ids,
        neg_mask=neg_mask,
        **image_input,
    )
    image_claims = data.image_claims(index)
    sim = clinical_similarity(image_claims, np.stack([v.claims for v in views])).to(device)
    loss = losses.contrastive_loss(
        cfg.loss, img, txt, negf, has_neg, scale, sim, cfg.soft_mix, cfg.soft_temperature
    )
    stats = {"loss": float(loss.detach()), "logit_scale": float(scale.detach())}
    with torch.no_grad():
        stats["i2t_acc"] = float(
            (img @ txt.T).argmax(1).eq(torch.arange(len(index), device=device)).float().mean()
        )
        if negf is not None and bool(has_neg.any()):
            ok = ((img * txt).sum(-1) > (img * negf).sum(-1))[has_neg]
            stats["neg_acc"] = float(ok.float().mean())
    return loss, stats


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) training; rank 0 exports the model to ``cfg.out_dir``. Returns that path."""
    rank, world = _dist_setup()
    device = _device(rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, tokenizer = build_dual_encoder(cfg.model, pretrained_text=cfg.pretrained_text)
    model.to(device).train()

    if rank == 0:
        data = training_data(cfg)
    if world > 1:
        dist.barrier()
    if rank != 0:
        data = training_data(cfg)
    if cfg.vision_init:
        load_vision_tower(model.vision_model, _resolve(cfg.vision_init))

    stage1 = {}
    if cfg.vision_pretrain.steps:
        key = cache_key(
            cfg.vision_pretrain,
            asdict(cfg.model),
            cfg.train_images,
            cfg.seed,
            data_key=_data_key(cfg, data),
        )
        stage1 = pretrain_vision(
            model.vision_model,
            data,
            cfg.vision_pretrain,
            cfg.preprocess,
            _resolve(cfg.work_dir),
            key,
            cfg.seed,
            device,
            rank,
            world,
            progress,
        )
    pooled = None
    if cfg.lock_image:
        model.vision_model.requires_grad_(False)
        pooled = pooled_features(model.vision_model, data, cfg.preprocess, device).to(device)
        model.vision_model.eval()
    wrapper = TrainingWrapper(model)
    if world > 1:
        wrapper = torch.nn.parallel.DistributedDataParallel(
            wrapper, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps)
    )

    work = _resolve(cfg.work_dir) / cfg.name
    out = _resolve(cfg.out_dir)
    state_path = work / "train_state.pt"
    log_path = work / "train_log.jsonl"
    run_key = run_fingerprint(cfg, data)
    start = 0
    if state_path.exists():
        resumed = load_state(state_path, device, model, optimizer, scheduler, run_key)
        if resumed is None:
            log.warning(
                "%s: ignoring %s, written by another config or renderer", cfg.name, state_path
            )
        else:
            start = resumed
            log.info("resuming %s from step %d", cfg.name, start)
    work.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # keep the rows up to the checkpoint (none on a fresh start)
        rows = log_path.read_text().splitlines() if log_path.exists() else []
        kept = [r for r in rows if r.strip() and start and json.loads(r)["step"] <= start]
        log_path.write_text("".join(r + "\n" for r in kept))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.name, unit="step")
    t0 = time.time()
    for step in range(start, cfg.steps):
        rng = np.random.default_rng([cfg.seed, rank, step])
        index = rng.choice(len(data), size=cfg.batch_size, replace=False)
        loss, stats = batch_loss(wrapper, tokenizer, data, index, rng, cfg, device, pooled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
        )
        optimizer.step()
        scheduler.step()
        if rank == 0:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['i2t_acc']:.2f}")
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                row = {
                    "step": step + 1,
                    "elapsed_s": round(time.time() - t0, 1),
                    **{k: round(v, 4) for k, v in stats.items()},
                }
                with log_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_state(state_path, model, optimizer, scheduler, step + 1, run_key)
        if cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes:
            log.warning(
                "%s: time budget of %.0f min reached at step %d",
                cfg.name,
                cfg.max_minutes,
                step + 1,
            )
            break
    if bar is not None:
        bar.close()
    checksums = replica_checksums(model, world)
    if rank == 0:
        export(model, tokenizer, cfg.model, out)
        meta = {
            "config": asdict(cfg),
            "world_size": world,
            "device": str(device),
            "train_seconds": round(time.time() - t0, 1),
            "stage1": stage1,
            "replica_checksums": checksums,
        }
        (out / "training_config.json").write_text(json.dumps(meta, indent=2, default=str))
        if log_path.exists():
            (out / "train_log.jsonl").write_text(log_path.read_text())
    if world > 1:
        dist.barrier()
    return out


#: Settings that do not change what a run computes (resuming with new values is fine).
_NOT_IN_FINGERPRINT = frozenset(
    {"out_dir", "work_dir", "checkpoint_every", "max_minutes", "log_every", "threads"}
)


def run_fingerprint(cfg: TrainConfig, data=None) -> str:
    """A short hash of the config and its data (the phantom renderer's version, or the real
    films' fingerprint and the report pool's: its texts and their labels): which checkpoints
    a run may resume."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    if cfg.data == "phantom":
        return digest([settings, render_version()])
    return digest([settings, _data_key(cfg, data), data.pool.fingerprint])


def _data_key(cfg: TrainConfig, data) -> str | None:
    """What names the real training data in cache keys (None: phantoms, keyed as before)."""
    if cfg.data == "phantom":
        return None
    return data.fingerprint + (f"-init-{cfg.vision_init}" if cfg.vision_init else "")


def training_data(cfg: TrainConfig):
    """The set a config trains on: rendered phantoms, or real films matched with real reports."""
    size = cfg.model.image_size
    if cfg.data == "real":
        from explorer.training.real import real_training

        return real_training(cfg, size, _resolve(cfg.work_dir))
    masks = cfg.vision_pretrain.steps > 0 and cfg.vision_pretrain.mask_weight > 0
    return PhantomTraining(build_phantom_set(cfg.train_images, TRAIN_SEED, size, masks))


def load_vision_tower(tower: torch.nn.Module, folder: Path) -> None:
    """Copy the image tower of an exported model (``folder``) into ``tower`` (same architecture).

    Raises:
        ValueError: The folder's tower does not fit (another architecture).
    """
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    prefix = "vision_model."
    state = {k[len(prefix) :]: v.float() for k, v in weights.items() if k.startswith(prefix)}
    own = tower.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong or not state:
        raise ValueError(
            f"the image tower in {folder} does not fit this architecture ({len(missing)} "
            f"missing, {len(unexpected)} unexpected, {len(wrong)} wrongly shaped weights)"
        )
    tower.load_state_dict(state)
    log.info("image tower initialised from %s", folder)


def replica_checksums(model: torch.nn.Module, world: int) -> list[float]:
    """A float64 checksum of the weights of every replica (one entry per process)."""
    local = torch.tensor(
        [
            sum(
                float(p.detach().double().mul(i + 1).sum())
                for i, p in enumerate(model.parameters())
            )
        ],
        dtype=torch.float64,
    )
    if world == 1:
        return [float(local)]
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [float(g) for g in gathered]
