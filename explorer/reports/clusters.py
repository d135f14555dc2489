"""Soft-label clusters: groups of reports that say clinically alike things.

Each report's labels become a vector (:func:`explorer.vocab.soft_labels.label_vectors`:
positive +1, negative -1, uncertain +0.5, not mentioned 0) and two reports are as alike as the
clipped cosine of their vectors, the same clinical similarity the soft-label training loss uses.

Algorithm: **weighted spherical k-means**. Label vectors are discrete, so a corpus of 100,000
reports has only a few thousand distinct vectors; we cluster the distinct, L2-normalised
vectors with k-means weighted by how often each occurs. On unit vectors, Euclidean distance is
a monotone function of cosine, so k-means groups by the same similarity the loss uses; it
scales to any corpus size (agglomerative clustering on the full similarity matrix does not),
and it is deterministic for a seed. Reports with no labelled finding (all-zero vectors, which
have no direction) form their own cluster. Each cluster is named by its dominant findings:
those positive (or uncertain) in at least :data:`NAME_SHARE` of its reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.vocab.labels import CHEXPERT_FINDINGS
from explorer.vocab.soft_labels import clinical_similarity, label_vectors

#: Default number of clusters (plus the "nothing labelled" cluster when it is non-empty).
DEFAULT_CLUSTERS = 8
#: A finding names a cluster when at least this share of its reports state it (or hedge it).
NAME_SHARE = 0.4
UNLABELLED = "nothing labelled"


@dataclass(frozen=True)
class Cluster:
    """One soft-label cluster: its id, name, size and per-finding share of positive reports."""

    id: int
    name: str
    size: int
    positive_share: tuple[float, ...]


def _name(share_pos: np.ndarray, share_neg: np.ndarray) -> str:
    order = np.argsort(-share_pos, kind="stable")
    names = [
        CHEXPERT_FINDINGS[j]
        for j in order
        if share_pos[j] >= NAME_SHARE and CHEXPERT_FINDINGS[j] != "No Finding"
    ][:3]
    if names:
        return " + ".join(names)
    if share_pos[CHEXPERT_FINDINGS.index("No Finding")] >= NAME_SHARE:
        return "No Finding"
    top_neg = [CHEXPERT_FINDINGS[j] for j in np.argsort(-share_neg, kind="stable")[:2]]
    return "nothing affirmed · denies " + ", ".join(top_neg)


def soft_label_clusters(
    labels: np.ndarray, k: int = DEFAULT_CLUSTERS, seed: int = 0
) -> tuple[np.ndarray, tuple[Cluster, ...]]:
    """Cluster reports by their label vectors.

    Args:
        labels: ``float [n, 14]`` label codes over :data:`CHEXPERT_FINDINGS` (NaN = not mentioned).
        k: Number of clusters among labelled reports (fewer if there are fewer distinct vectors).
        seed: k-means seed.

    Returns:
        ``(assignment, clusters)``: an ``int32 [n]`` cluster id per report and the clusters,
        ids ordered by size (largest first).
    """
    from sklearn.cluster import KMeans

    n = labels.shape[0]
    vectors = label_vectors(labels)
    labelled = np.abs(vectors).sum(axis=1) > 0
    raw = np.full(n, -1, dtype=np.int64)
    if labelled.any():
        uniq, inverse, counts = np.unique(
            vectors[labelled], axis=0, return_inverse=True, return_counts=True
        )
        unit = uniq / np.linalg.norm(uniq, axis=1, keepdims=True)
        kk = max(1, min(k, len(uniq)))
        if kk == 1:
            uniq_cluster = np.zeros(len(uniq), dtype=np.int64)
        else:
            km = KMeans(n_clusters=kk, n_init=4, random_state=seed)
            uniq_cluster = km.fit_predict(unit, sample_weight=counts.astype(np.float64))
        raw[labelled] = uniq_cluster[inverse.reshape(-1)]
    # Relabel by size, the unlabelled group last.
    ids = [c for c in np.unique(raw) if c >= 0]
    ids.sort(key=lambda c: (-(raw == c).sum(), c))
    if (raw < 0).any():
        ids.append(-1)
    assignment = np.empty(n, dtype=np.int32)
    clusters = []
    stats = []
    for new, old in enumerate(ids):
        members = raw == old
        assignment[members] = new
        sub = labels[members]
        share_pos = np.mean((sub == 1) | (sub == -1), axis=0)
        share_neg = np.mean(sub == 0, axis=0)
        name = UNLABELLED if old < 0 else _name(share_pos, share_neg)
        stats.append((name, int(members.sum()), share_pos, share_neg))
    base = [s[0] for s in stats]
    used: dict[str, int] = {}
    for new, (name, size, share_pos, share_neg) in enumerate(stats):
        if base.count(name) > 1 and name != UNLABELLED:
            # Tell same-named clusters apart by what they also state or most often deny.
            name = f"{name} · {_qualifier(name, share_pos, share_neg)}"
        used[name] = used.get(name, 0) + 1
        if used[name] > 1:
            name = f"{name} ({used[name]})"
        clusters.append(
            Cluster(
                id=new,
                name=name,
                size=size,
                positive_share=tuple(round(float(s), 4) for s in share_pos),
            )
        )
    return assignment, tuple(clusters)


def _qualifier(name: str, share_pos: np.ndarray, share_neg: np.ndarray) -> str:
    named = set(name.split(" + "))
    extra = [
        CHEXPERT_FINDINGS[j]
        for j in np.argsort(-share_pos, kind="stable")
        if share_pos[j] >= NAME_SHARE / 2 and CHEXPERT_FINDINGS[j] not in named
    ]
    if extra:
        return "often " + extra[0]
    denied = [CHEXPERT_FINDINGS[j] for j in np.argsort(-share_neg, kind="stable")[:2]]
    return "denies " + ", ".join(denied) if share_neg.max() > 0 else "few statements"


#: An alignment figure is read only on at least this many reports per neighbour (k).
MIN_REPORTS_PER_NEIGHBOUR = 10


@dataclass(frozen=True)
class Alignment:
    """How well embedding neighbourhoods agree with soft labels (one map, one model).

    Attributes:
        k: Neighbours per query (cosine similarity of text embeddings, self excluded).
        queries: Reports used as queries (a seeded sample on large corpora).
        cluster_agreement: Share of a report's k nearest neighbours in its own cluster.
        cluster_chance: The same share for neighbours drawn at random (sum of squared
            cluster shares).
        soft_similarity: Mean clinical similarity between a report and its k neighbours.
        soft_chance: Mean clinical similarity between a report and random reports.
    """

    k: int
    queries: int
    cluster_agreement: float
    cluster_chance: float
    soft_similarity: float
    soft_chance: float

    @property
    def lift(self) -> float:
        """``cluster_agreement / cluster_chance``: 1 means no better than random."""
        return self.cluster_agreement / max(self.cluster_chance, 1e-9)

    def caution(self, reports: int) -> str | None:
        """A sentence when the map is too small for its ``k`` (else None).

        With fewer than :data:`MIN_REPORTS_PER_NEIGHBOUR` reports per neighbour, a report's k
        neighbours are a large share of the whole table, so the figure sits near its chance
        level whatever the model does.
        """
        if reports >= MIN_REPORTS_PER_NEIGHBOUR * self.k:
            return None
        return (
            f"Only {reports:,} reports for k={self.k} neighbours: each report's neighbours are a "
            f"large part of the table, so this figure says little; read it on "
            f"{MIN_REPORTS_PER_NEIGHBOUR * self.k:,} reports or more."
        )


def alignment(
    embeddings: np.ndarray,
    labels: np.ndarray,
    assignment: np.ndarray,
    k: int = 10,
    max_queries: int = 5000,
    seed: int = 0,
) -> Alignment:
    """k-NN agreement between embedding neighbourhoods and soft labels (see :class:`Alignment`)."""
    import torch

    n = embeddings.shape[0]
    if n < 2:
        raise ValueError("alignment needs at least two reports")
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=min(n, max_queries), replace=False))
    emb = torch.as_tensor(embeddings, dtype=torch.float32)
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-8)
    vec = torch.as_tensor(label_vectors(labels))
    agree, soft, soft_rand = [], [], []
    for start in range(0, len(queries), 1024):
        q = torch.as_tensor(queries[start : start + 1024])
        sims = emb[q] @ emb.T
        sims[torch.arange(len(q)), q] = -float("inf")
        nn = sims.topk(k, dim=1).indices
        agree.append(
            (torch.as_tensor(assignment)[nn] == torch.as_tensor(assignment)[q, None]).float()
        )
        s = clinical_similarity(vec[q], vec)
        soft.append(torch.gather(s, 1, nn))
        rand = torch.as_tensor(rng.integers(0, n, size=(len(q), k)))
        soft_rand.append(torch.gather(s, 1, rand))
    share = np.bincount(assignment, minlength=int(assignment.max()) + 1) / n
    return Alignment(
        k=k,
        queries=len(queries),
        cluster_agreement=round(float(torch.cat(agree).mean()), 4),
        cluster_chance=round(float((share**2).sum()), 4),
        soft_similarity=round(float(torch.cat(soft).mean()), 4),
        soft_chance=round(float(torch.cat(soft_rand).mean()), 4),
    )
