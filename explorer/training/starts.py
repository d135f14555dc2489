"""Which start for the real image tower? Short stage-1 runs compared on held-apart patients.

``python -m explorer.training.starts --config explorer/configs/train/real-negaware.json
--minutes 6 --steps 800 --start scratch --start assets/models/phantom-negaware``

The training side of the config's manifest is split by patient (85 / 15, seeded); for each
start (``scratch``: random weights; a folder: the image tower of that exported model) stage 1
runs on the 85 % for at most ``--minutes`` minutes, then a logistic regression on the tower's
pooled features (fitted on the same 85 %) is scored on the other 15 %: AUC per finding with at
least 5 positives there, and their mean. The held-out ``nih-test`` is never read: the choice of
start must not look at the test set.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def _subset(films, index: np.ndarray):
    return replace(
        films,
        images=films.images[index],
        labels=tuple(films.labels[i] for i in index),
        truth=films.truth[index],
        claims=films.claims[index],
        keys=tuple(films.keys[i] for i in index),
        patients=tuple(films.patients[i] for i in index),
        fingerprint=f"{films.fingerprint}-{len(index)}-{int(index.sum())}",
    )


def probe_auc(train_x, train_y, val_x, val_y, findings, min_pos: int = 5) -> dict[str, float]:
    """Validation AUC per finding of the linear probe (:func:`explorer.eval.probe.fit_probes`)."""
    from explorer.eval.metrics import auc_score
    from explorer.eval.probe import fit_probes

    scores = fit_probes(train_x, train_y, findings)(val_x)
    out = {}
    for j, f in enumerate(findings):
        yv = np.asarray(val_y)[:, j] > 0
        if f in scores and yv.sum() >= min_pos and (~yv).sum() >= min_pos:
            out[f] = float(auc_score(yv, scores[f]))
    return out


def compare_starts(
    config: str, starts: list[str], minutes: float, steps: int = 0, val_share: float = 0.15
):
    """Run each start's short stage 1 and return ``{start: {finding: auc, "mean": m}}``."""
    from explorer.data.splits import patient_rank
    from explorer.models.base import default_device
    from explorer.training.model import build_dual_encoder
    from explorer.training.pretrain import pooled_features, pretrain_vision
    from explorer.training.real import read_films, training_manifest
    from explorer.training.trainer import TrainConfig, _resolve, load_vision_tower

    cfg = TrainConfig.from_file(config)
    work = _resolve(cfg.work_dir) / "starts"
    films = read_films(
        training_manifest(cfg.manifest), cfg.model.image_size, _resolve(cfg.work_dir)
    )
    is_val = np.array([patient_rank(p, 7) < val_share for p in films.patients])
    train, val = _subset(films, np.flatnonzero(~is_val)), _subset(films, np.flatnonzero(is_val))
    settings = replace(cfg.vision_pretrain, max_minutes=minutes)
    if steps:
        settings = replace(settings, steps=steps)
    device = default_device()
    results = {}
    for start in starts:
        torch.manual_seed(cfg.seed)
        model, _ = build_dual_encoder(cfg.model, pretrained_text=False)
        if start != "scratch":
            load_vision_tower(model.vision_model, _resolve(start))
        t0 = time.time()
        summary = pretrain_vision(
            model.vision_model,
            train,
            settings,
            cfg.preprocess,
            work,
            f"start-{Path(start).name}-{settings.steps}-{minutes}-{train.fingerprint}",
            cfg.seed,
            device,
        )
        tx = pooled_features(model.vision_model, train, cfg.preprocess, device).numpy()
        vx = pooled_features(model.vision_model, val, cfg.preprocess, device).numpy()
        aucs = probe_auc(tx, train.truth, vx, val.truth, films.findings)
        aucs["mean"] = float(np.mean(list(aucs.values())))
        results[start] = {
            "stage1": summary,
            "seconds": round(time.time() - t0, 1),
            "train_films": len(train),
            "val_films": len(val),
            "auc": {k: round(v, 3) for k, v in aucs.items()},
        }
        log.info("%s: mean validation AUC %.3f", start, aucs["mean"])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--start", action="append", required=True, help="'scratch' or a model folder")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=0, help="stage-1 steps (default: the config's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(compare_starts(args.config, args.start, args.minutes, args.steps), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
