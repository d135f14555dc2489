r"""The three contrastive objectives compared in this project.

Notation for a batch of ``B`` pairs: L2-normalised image embeddings ``u_i``, text embeddings
``t_j``, learned temperature ``s = exp(logit_scale)``, logits ``z_ij = s <u_i, t_j>``, and
``H(y, p) = -sum_j y_j log p_j``.

(a) **InfoNCE** (CLIP; Radford et al. 2021), hard one-hot targets:

    L_nce = 1/2 * [ 1/B sum_i H(e_i, softmax_j z_ij) + 1/B sum_j H(e_j, softmax_i z_ij) ]

(b) **Dynamic soft labels** (Ko & Park 2025, sec. "dynamic soft labels"): the targets of each
batch are softened by the clinical similarity ``S`` of the pairs' label vectors
(:func:`explorer.vocab.soft_labels.clinical_similarity`: the labels of image ``i``'s own full report
against the labels of text ``j``; affirmed +1, denied -1, uncertain +0.5, blank 0). Both sides
are *report* labels: comparing text ``j`` with the image's complete ground truth instead would
reward texts that list many absent findings (every image lacks most findings) over the true,
shorter report, and pull abnormal images towards normal reports.

    Y = (1 - mix) I + mix * softmax_row(S / tau_s)
    L_soft = 1/2 * [ 1/B sum_i H(Y_i., softmax_j z_ij) + 1/B sum_j H(Y'_.j, softmax_i z_ij) ]

where ``Y'`` is built the same way from ``S^T`` (so each text's targets spread over the images
it is clinically true of). "Dynamic" because ``Y`` depends on which studies share the batch.

(c) **Negation-based hard negatives** (Ko & Park 2025): each image ``i`` also gets its own text
with one finding's polarity flipped, ``t~_i`` (a present finding negated, or an absent one
affirmed). The image-to-text term adds that one column with target 0:

    z~_i = s <u_i, t~_i>
    L_neg_i2t = 1/B sum_i H([Y_i., 0], softmax([z_i., z~_i]))

Only image ``i``'s own flipped text is added: another image's flipped text may be true of
image ``i``. Rows without a flipped text (``has_negative = False``) get no extra column.
``L_negaware = 1/2 (L_neg_i2t + L_soft_t2i)`` combines (b) and (c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from explorer.vocab.soft_labels import soft_targets


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(a) Symmetric InfoNCE over a batch of normalised embeddings."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def soft_label_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    similarity: torch.Tensor,
    mix: float = 0.5,
    temperature: float = 0.1,
) -> torch.Tensor:
    """(b) Symmetric contrastive loss with clinically softened targets.

    Args:
        image, text: ``[B, D]`` normalised embeddings of matching pairs.
        logit_scale: ``exp`` of the learned log temperature (a scalar tensor).
        similarity: ``[B, B]`` clinical similarity, ``S[i, j]`` = image i vs text j.
        mix, temperature: see :func:`explorer.vocab.soft_labels.soft_targets`.
    """
    logits = logit_scale * image @ text.T
    y_i2t = soft_targets(similarity, mix, temperature)
    y_t2i = soft_targets(similarity.T, mix, temperature)
    return 0.5 * (_soft_ce(logits, y_i2t) + _soft_ce(logits.T, y_t2i))


def negation_aware_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    negated: torch.Tensor,
    has_negative: torch.Tensor,
    logit_scale: torch.Tensor,
    similarity: torch.Tensor,
    mix: float = 0.5,
    temperature: float = 0.1,
) -> torch.Tensor:
    """(b) + (c): soft labels with each image's own negated text as an extra candidate.

    Args:
        negated: ``[B, D]`` normalised embeddings of the flipped texts (rows without one are
            ignored through ``has_negative``).
        has_negative: ``[B]`` bool, whether row ``i`` has a flipped text.
    """
    logits = logit_scale * image @ text.T
    hard = logit_scale * (image * negated).sum(dim=-1, keepdim=True)
    hard = hard.masked_fill(~has_negative[:, None], float("-inf"))
    y_i2t = soft_targets(similarity, mix, temperature)
    i2t_logits = torch.cat([logits, hard], dim=1)
    i2t_targets = torch.cat([y_i2t, torch.zeros_like(hard)], dim=1)
    log_p = F.log_softmax(i2t_logits, dim=-1)
    i2t = -(i2t_targets * log_p.masked_fill(torch.isinf(log_p), 0.0)).sum(dim=-1).mean()
    t2i = _soft_ce(logits.T, soft_targets(similarity.T, mix, temperature))
    return 0.5 * (i2t + t2i)


LOSSES = ("infonce", "soft", "negaware")


def contrastive_loss(
    name: str,
    image: torch.Tensor,
    text: torch.Tensor,
    negated: torch.Tensor | None,
    has_negative: torch.Tensor,
    logit_scale: torch.Tensor,
    similarity: torch.Tensor,
    mix: float = 0.5,
    temperature: float = 0.1,
) -> torch.Tensor:
    """The loss named ``name`` (one of :data:`LOSSES`) on a batch; ``negated`` and
    ``has_negative`` are read by ``"negaware"`` only, ``similarity`` by the soft ones."""
    if name == "infonce":
        return info_nce(image, text, logit_scale)
    if name == "soft":
        return soft_label_loss(image, text, logit_scale, similarity, mix, temperature)
    if name == "negaware":
        return negation_aware_loss(
            image, text, negated, has_negative, logit_scale, similarity, mix, temperature
        )
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
