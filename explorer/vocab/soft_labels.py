"""Clinical similarity between label vectors: the one home of the soft-label definition.

Used by the training loss (dynamic soft labels, after Ko & Park, CVPR 2025, arXiv 2505.22079)
and by the report map's soft-label clusters, so both mean the same thing by "clinically alike".

A study's labels become a vector over a fixed list of findings, by the one label encoding
:data:`explorer.vocab.labels.LABEL_VALUE`:

* positive ``1`` -> ``+1``; negative ``0`` -> ``-1``;
* uncertain ``-1`` -> ``+0.5`` (a hedge leans towards presence: "cannot exclude X" is a reason
  to look for X), a choice between CheXpert's U-Ones and U-Zeros policies;
* blank / not mentioned (``None``) -> ``0``: it neither agrees nor disagrees.

The clinical similarity of two studies is the cosine of their vectors, clipped at 0:

    S_ij = max(0, <v_i, v_j> / (|v_i| |v_j|))      (S_ij = 0 if either vector is all zero)

so reports that affirm and deny the same findings are alike (S -> 1), reports that contradict
each other are not alike (S = 0), and unmentioned findings only dilute the similarity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from explorer.vocab.labels import LABEL_VALUE


def label_vector(labels: Mapping[str, int | None], findings: Sequence[str]) -> np.ndarray:
    """Labels (finding -> 1/0/-1/None) -> float32 vector over ``findings`` (see module doc)."""
    return np.array([LABEL_VALUE.get(labels.get(f), 0.0) for f in findings], dtype=np.float32)


def label_vectors(labels: np.ndarray) -> np.ndarray:
    """A label-code matrix ``[n, k]`` (1 / 0 / -1, NaN = not mentioned) -> vectors ``[n, k]``."""
    labels = np.asarray(labels, dtype=np.float32)
    out = np.zeros(labels.shape, dtype=np.float32)
    for code, value in LABEL_VALUE.items():
        out[labels == code] = value
    return out


def clinical_similarity(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray | None = None
) -> torch.Tensor:
    """Pairwise clinical similarity ``S[i, j]`` of label vectors ``a[i]`` and ``b[j]`` in [0, 1]."""
    a = torch.as_tensor(a, dtype=torch.float32)
    b = a if b is None else torch.as_tensor(b, dtype=torch.float32, device=a.device)
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    bn = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (an @ bn.T).clamp_min(0.0)


def soft_targets(similarity: torch.Tensor, mix: float, temperature: float) -> torch.Tensor:
    """Row-stochastic soft targets from a square similarity matrix.

    ``Y = (1 - mix) * I + mix * softmax(S / temperature)`` (row-wise softmax), so the true pair
    always keeps at least ``1 - mix`` of the mass and clinically alike pairs share the rest.
    """
    n = similarity.shape[0]
    eye = torch.eye(n, dtype=similarity.dtype, device=similarity.device)
    if mix <= 0:
        return eye
    return (1.0 - mix) * eye + mix * torch.softmax(similarity / temperature, dim=-1)
