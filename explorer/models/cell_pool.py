r"""A cell-pooled image embedding for a convolutional tower, and its adapter.

Issue 27 asked for a tower "whose similarity is driven by its local features". A model's pooled
embedding (the mean of the last grid, layer-normalised and projected) says *whether* a finding
is there; nothing makes the cells of that grid say *where*. The cell pool gives every cell of
the tower's next-to-last grid (10 x 10 at 160 px) an embedding of its own and sums them with a
learned, text-independent attention:

    z_c = [LN_f(f_c), LN_k(up(k)_c)]          f: next-to-last stage, k: last stage (upsampled)
    e_c = W_f LN_f(f_c) + W_k LN_k(up(k)_c)    (cell embedding)
    a   = softmax_c(w . z_c + b)               (attention over cells, the same for every text)
    u   = sum_c a_c e_c                        (the image embedding)

The similarity stays a dot product with one image embedding, so everything built on
embeddings (scores, the report map, retrieval) works unchanged, and it splits exactly into the
cells' shares: ``cos(u, t) = sum_c a_c <e_c, t> / |u|`` for a normalised text ``t``. That split
is the "cells" attribution method (:mod:`explorer.attribution.cells`): a map that *is* the
similarity, cell by cell, with no approximation to read.

The pool is stored beside the model it pools (``cell_pool.json`` + ``cell_pool.safetensors`` in
its own folder; ``base`` names the transformers folder with the towers and the tokenizer), and
is registered as the ``cell_pool`` backend; :mod:`explorer.training.cells` trains it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from explorer.models.base import SpatialLayer, as_features, maybe_normalize
from explorer.models.hf_backend import TransformersModel
from explorer.models.spec import ModelSpec, local_path

CONFIG_FILE = "cell_pool.json"
WEIGHTS_FILE = "cell_pool.safetensors"


@dataclass(frozen=True)
class CellPoolConfig:
    """The pool's shape and the model it pools.

    Attributes:
        base: The transformers model folder whose towers it pools (relative paths resolve
            against the repository root, as model sources do).
        fine_width: Channels of the next-to-last stage (whose grid the cells are).
        coarse_width: Channels of the last stage.
        dim: The embedding size (the text tower's projection size).
    """

    base: str
    fine_width: int
    coarse_width: int
    dim: int

    @classmethod
    def from_folder(cls, folder: Path) -> CellPoolConfig:
        return cls(**json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))


class CellPool(nn.Module):
    """Cell embeddings and the attention that sums them (see the module docstring)."""

    def __init__(self, cfg: CellPoolConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm_fine = nn.LayerNorm(cfg.fine_width)
        self.norm_coarse = nn.LayerNorm(cfg.coarse_width)
        self.proj_fine = nn.Linear(cfg.fine_width, cfg.dim, bias=False)
        self.proj_coarse = nn.Linear(cfg.coarse_width, cfg.dim, bias=False)
        self.score = nn.Linear(cfg.fine_width + cfg.coarse_width, 1)

    @classmethod
    def from_pooled_head(
        cls, cfg: CellPoolConfig, layernorm: nn.LayerNorm, projection: nn.Linear
    ) -> CellPool:
        """A pool that starts as the model's own head applied to every cell: the last stage's
        layernorm and projection on each cell, the fine stage's projection at zero and uniform
        attention (so its embedding starts as the mean of the model's head over the cells)."""
        pool = cls(cfg)
        with torch.no_grad():
            pool.norm_coarse.load_state_dict(layernorm.state_dict())
            pool.proj_coarse.weight.copy_(projection.weight)
            pool.proj_fine.weight.zero_()
            pool.score.weight.zero_()
            pool.score.bias.zero_()
        return pool

    def cells(self, fine: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fine`` ``[B, Cf, g, g]`` and ``coarse`` ``[B, Ck, h, h]`` feature maps -> the cell
        embeddings ``[B, g*g, D]`` and the attention ``[B, g*g]`` (rows sum to 1)."""
        grid = tuple(fine.shape[-2:])
        up = F.interpolate(coarse.float(), size=grid, mode="nearest")
        zf = self.norm_fine(fine.float().flatten(2).transpose(1, 2))
        zk = self.norm_coarse(up.flatten(2).transpose(1, 2))
        embeddings = self.proj_fine(zf) + self.proj_coarse(zk)
        attention = self.score(torch.cat([zf, zk], dim=-1)).squeeze(-1).softmax(dim=-1)
        return embeddings, attention

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The (unnormalised) image embedding ``[B, D]``."""
        embeddings, attention = self.cells(fine, coarse)
        return (attention[..., None] * embeddings).sum(dim=1)

    def shares(self, fine: torch.Tensor, coarse: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Each cell's share of the cosine similarity with each normalised text ``[T, D]``:
        ``[B, T, g, g]``, summing over the cells to ``cos(u, t)``."""
        embeddings, attention = self.cells(fine, coarse)
        image = (attention[..., None] * embeddings).sum(dim=1)
        per_cell = attention[..., None] * torch.einsum("bnd,td->bnt", embeddings, text)
        per_cell = per_cell / image.norm(dim=-1)[:, None, None]
        g = fine.shape[-2:]
        return per_cell.transpose(1, 2).reshape(per_cell.shape[0], text.shape[0], *g)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))

    @classmethod
    def load(cls, folder: Path) -> CellPool:
        from safetensors.torch import load_file

        pool = cls(CellPoolConfig.from_folder(folder))
        pool.load_state_dict(
            {k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
        )
        return pool


def stage_maps(
    vision: nn.Module, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next-to-last and last feature maps of a transformers convolutional tower, and its
    pooled output (what the dual encoder's own projection reads), from one pass."""
    out = vision(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2], out.hidden_states[-1], out.pooler_output


class CellPooledModel(TransformersModel):
    """A transformers dual encoder whose image embedding is its :class:`CellPool`'s.

    ``spec.source`` is the pool's folder; the towers and tokenizer come from the folder its
    config names as ``base``. The pool is a submodule of :attr:`module`, so a deep copy, the
    randomisation check and ``.to()`` carry it along.
    """

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        folder = local_path(spec.source)
        if folder is None or not (folder / CONFIG_FILE).is_file():
            raise ValueError(f"{spec.source} is not a cell-pool folder (no {CONFIG_FILE})")
        cfg = CellPoolConfig.from_folder(folder)
        super().__init__(replace(spec, source=cfg.base), device)
        self.spec = spec
        stages = getattr(getattr(self._model.vision_model, "encoder", None), "stages", None)
        if stages is None or len(stages) < 2:
            raise ValueError(f"{spec.name}: a cell pool needs a convolutional image tower")
        self._model.add_module("cell_pool", CellPool.load(folder).to(device).eval())

    cell_pooled = True

    @property
    def pool(self) -> CellPool:
        return self._model.cell_pool

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        fine, coarse, _ = stage_maps(self._model.vision_model, pixel_values)
        return maybe_normalize(as_features(self.pool(fine, coarse)), normalize)

    def cell_shares(self, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        fine, coarse, _ = stage_maps(self._model.vision_model, pixel_values)
        return self.pool.shares(fine, coarse, F.normalize(text, dim=-1))

    @property
    def spatial_layer(self) -> SpatialLayer:
        """The next-to-last stage: the pool reads it directly and through the last stage, so
        Grad-CAM there sees both paths (and a grid as fine as the cells)."""
        return SpatialLayer(self._model.vision_model.encoder.stages[-2], "conv")


__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CellPool",
    "CellPoolConfig",
    "CellPooledModel",
    "stage_maps",
]
