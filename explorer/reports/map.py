"""The report map: a corpus's text embeddings laid out by UMAP, coloured by soft-label cluster.

:func:`build_map` runs five resumable stages and keeps each on disk under
``$EXPLORER_CACHE/maps/<model>/<corpus>-<key>/`` (the key hashes the corpus content, the model's
weights and the build settings, so a changed corpus or a retrained model gets a new map):

1. ``labels.npy``: CheXpert labels (from the corpus, else :mod:`explorer.reports.labeler`);
2. ``emb-XXXXX.npy``: text embeddings in chunks of :data:`CHUNK` reports (an interrupted build
   restarts at the first missing chunk);
3. ``clusters.npy``: soft-label clusters (:mod:`explorer.reports.clusters`);
4. ``xy.npy``: a seeded 2-D UMAP of the embeddings. Up to :data:`EXACT_KNN_MAX` reports its
   cosine k-nearest-neighbour graph is computed exactly here (a matrix product in chunks) and
   handed to UMAP, which would otherwise call a Python distance function per pair below 4,096
   points (30 s of the IU build went there; now under 1 s). Above it UMAP's NN-descent is
   faster than the exact graph (100,000 reports: over 5 min exact);
5. ``map.json``: cluster names, the alignment figure and stage timings, written last, so a map
   with ``map.json`` is complete and :func:`open_map` loads it without recomputing anything.

Images and texts share the embedding space of a CLIP-style model, so an uploaded image's nearest
reports are the ones with the highest cosine similarity (image-to-report retrieval), and it is
placed where UMAP's own ``transform`` starts a new point: at the mean of its ``n_neighbors``
nearest reports' positions, weighted by UMAP's fuzzy membership (``exp(-(d - rho) / sigma)``,
with ``sigma`` such that the weights sum to ``log2(k)``). No reducer is pickled, and placing an
image costs a matrix-vector product (no JIT warm-up).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from explorer.paths import cache_dir
from explorer.progress import Progress, in_words, staged
from explorer.reports.clusters import (
    DEFAULT_CLUSTERS,
    Alignment,
    Cluster,
    alignment,
    soft_label_clusters,
)
from explorer.reports.corpus import Corpus, labels_to_matrix
from explorer.vocab.labels import CHEXPERT_FINDINGS, LABEL_NAMES

log = logging.getLogger(__name__)

#: Reports per embedding chunk on disk (the unit of resumption).
CHUNK = 2048
#: Reports per forward pass (shortest first, so a batch pads to its longest). For BiomedCLIP's
#: BERT-base on 2 CPU cores, 256 IU reports took 9.4 s at 16 a pass, 13.2 s at 64 and 23.6 s at
#: 128 (smaller batches pad less; `python -m explorer bench --hub biomedclip` times the map's
#: text this way); for the embedded MiniLM the batch size is within run-to-run noise.
BATCH = 16
#: Part of every map folder's key: bumped when what a build writes changes (3: cluster names in words).
FORMAT_VERSION = 3

#: Rows of the similarity matrix computed at once by :func:`knn_graph` (memory: rows x n floats).
KNN_ROWS = 1024
#: Largest corpus whose neighbour graph is computed exactly (above: UMAP's NN-descent).
EXACT_KNN_MAX = 20_000

#: Measured on 2 CPU cores (IU reports, 3,927 rows: labelling 3.6-4.0 s, UMAP 9.1-10.3 s): the
#: rule labeller's and UMAP's seconds per report, and UMAP's one-off compilation (numba) in a
#: fresh process. :func:`estimate_build` times the model's own text tower instead of guessing it.
LABEL_S_PER_REPORT = 0.001
UMAP_S_PER_REPORT = 0.0025
UMAP_FIRST_S = 7.0
#: Texts embedded to time the text tower (one batch around the corpus's median length).
ESTIMATE_SAMPLE = 16
_umap_compiled = False


def maps_dir() -> Path:
    """Where built maps live (``$EXPLORER_CACHE/maps``, default ``.cache/maps`` in the repo)."""
    return cache_dir() / "maps"


@dataclass(frozen=True)
class MapSettings:
    """Build settings that change the result (part of the cache key)."""

    clusters: int = DEFAULT_CLUSTERS
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class BuildEstimate:
    """How long :func:`build_map` will take here, stage by stage, said before it starts.

    ``seconds`` holds the stages still to run (``labelling``, ``embedding reports``,
    ``layout (UMAP)``); a map built before (``ready``) has none and opens from disk.
    """

    ready: bool
    n: int
    seconds: dict

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))

    def sentence(self, model_name: str) -> str:
        """One line for the person about to wait."""
        if self.ready:
            return (
                f"The map of these {self.n:,} reports for {model_name} is built: it opens at once."
            )
        stages = ", ".join(f"{k} {in_words(v)}" for k, v in self.seconds.items() if v >= 0.5)
        return (
            f"First build of this map for {model_name}: about {in_words(self.total)} here"
            + (f" ({stages})" if stages else "")
            + f" for {self.n:,} reports; then it is kept and opens at once."
        )


@dataclass(frozen=True)
class Neighbour:
    """A report near an image: its row in the map, id, cosine similarity and text."""

    index: int
    id: str
    similarity: float
    text: str


@dataclass(frozen=True)
class Placement:
    """An image placed in a map: its 2-D position and its nearest reports."""

    xy: tuple[float, float]
    neighbours: tuple[Neighbour, ...]


@dataclass(frozen=True, eq=False)
class ReportMap:
    """A built map (arrays loaded from the files :func:`build_map` wrote)."""

    corpus: str
    model: str
    folder: Path
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray
    reference: np.ndarray | None
    label_source: str
    licence: str
    assignment: np.ndarray
    clusters: tuple[Cluster, ...]
    xy: np.ndarray
    embeddings: np.ndarray
    alignment: Alignment
    timings: dict
    n_neighbors: int = 15
    reference_source: str = ""
    #: How many reports were longer than the model's text limit (``text_limit`` tokens) and
    #: were embedded from their first tokens only (counted once, when the map was built).
    truncated: int = 0
    text_limit: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _similarities(self, embedding: np.ndarray) -> np.ndarray:
        """Cosine of every report with an embedding from the same model."""
        e = np.asarray(embedding, dtype=np.float32).reshape(-1)
        return self.embeddings @ (e / max(float(np.linalg.norm(e)), 1e-8))

    def _nearest(self, sims: np.ndarray, k: int) -> tuple[Neighbour, ...]:
        top = _top_k(sims, k)
        return tuple(
            Neighbour(int(i), self.ids[i], round(float(sims[i]), 4), self.texts[i]) for i in top
        )

    def neighbours(self, embedding: np.ndarray, k: int = 10) -> tuple[Neighbour, ...]:
        """The ``k`` reports most similar (cosine) to an embedding from the same model."""
        return self._nearest(self._similarities(embedding), k)

    def place(self, embedding: np.ndarray, k: int = 10) -> Placement:
        """Place an embedding (e.g. an image's) in the map and list its nearest reports."""
        sims = self._similarities(embedding)
        top = _top_k(sims, self.n_neighbors)
        weights = membership_weights(1.0 - sims[top])
        xy = (weights[:, None] * self.xy[top]).sum(0) / weights.sum()
        return Placement((float(xy[0]), float(xy[1])), self._nearest(sims, k))

    def selection(self, indices: Sequence[int]):
        """Selected reports as a table (id, cluster, labels, text) and per-finding counts.

        With reference labels (IU: MeSH), the table shows them beside the labeler's, so a
        selection coloured "disagreement" can be read case by case.
        """
        import pandas as pd

        idx = np.array(sorted({int(i) for i in indices if 0 <= int(i) < len(self)}), dtype=int)
        rows = []
        for i in idx:
            row = {
                "id": self.ids[i],
                "cluster": self.clusters[self.assignment[i]].name,
                "positive": ", ".join(
                    f for f, v in zip(CHEXPERT_FINDINGS, self.labels[i], strict=True) if v == 1
                ),
                "report": self.texts[i],
            }
            if self.reference is not None:
                row["reference positive"] = ", ".join(
                    f for f, v in zip(CHEXPERT_FINDINGS, self.reference[i], strict=True) if v == 1
                )
            rows.append(row)
        columns = ["id", "cluster", "positive"]
        columns += ["reference positive"] if self.reference is not None else []
        table = pd.DataFrame(rows, columns=[*columns, "report"])
        sub = self.labels[idx]
        counts = pd.DataFrame(
            {
                "finding": CHEXPERT_FINDINGS,
                **{
                    name: [int((sub[:, j] == code).sum()) for j in range(len(CHEXPERT_FINDINGS))]
                    for code, name in LABEL_NAMES.items()
                },
            }
        )
        return table, counts


# --- building ------------------------------------------------------------------------------


def model_fingerprint(model) -> str:
    """A short hash of a loaded model's weights (changes when it is retrained)."""
    import torch

    h = hashlib.sha256(model.name.encode())
    with torch.no_grad():
        for name, p in model.module.named_parameters():
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(np.float64(p.detach().double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def map_folder(
    corpus: Corpus,
    model_name: str,
    fingerprint: str,
    settings: MapSettings,
    root: Path | None = None,
) -> Path:
    key = hashlib.sha256(
        f"{corpus.content_hash}|{fingerprint}|{json.dumps(asdict(settings), sort_keys=True)}|"
        f"{FORMAT_VERSION}".encode()
    ).hexdigest()[:12]
    return (root or maps_dir()) / model_name / f"{corpus.name}-{key}"


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first (ties in index order)."""
    k = min(k, len(sims))
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top], kind="stable")]


def knn_graph(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k nearest neighbours of L2-normalised rows (each row is its own first).

    Returns:
        ``int32 [n, k]`` indices and ``float32 [n, k]`` cosine distances, nearest first.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    k = min(k, n)
    idx = np.empty((n, k), dtype=np.int32)
    dist = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, KNN_ROWS):
        sims = x[start : start + KNN_ROWS] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = np.inf  # a report is its own nearest neighbour
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        idx[start : start + len(sims)] = top
        dist[start : start + len(sims)] = 1.0 - np.take_along_axis(sims, top, 1)
    dist[:, 0] = 0.0
    return idx, np.clip(dist, 0.0, 2.0)


def membership_weights(distances: np.ndarray, iterations: int = 64) -> np.ndarray:
    """UMAP's fuzzy membership of a point's neighbours: ``exp(-(d - rho) / sigma)``.

    ``rho`` is the nearest distance and ``sigma`` is found by bisection so the weights sum to
    ``log2(k)``, as in UMAP's ``smooth_knn_dist``.
    """
    d = np.asarray(distances, dtype=np.float64)
    if len(d) == 1:
        return np.ones(1)
    rho, target = d.min(), np.log2(len(d))
    lo, hi, sigma = 0.0, np.inf, 1.0
    for _ in range(iterations):
        total = np.exp(-np.maximum(d - rho, 0.0) / sigma).sum()
        if abs(total - target) < 1e-5:
            break
        if total > target:
            hi = sigma
            sigma = (lo + hi) / 2
        else:
            lo = sigma
            sigma = sigma * 2 if hi == np.inf else (lo + hi) / 2
    return np.exp(-np.maximum(d - rho, 0.0) / sigma)


def _save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)


def _labels(corpus: Corpus) -> np.ndarray:
    if corpus.labels is not None:
        return corpus.labels
    from explorer.reports.labeler import label_reports

    return labels_to_matrix(label_reports(corpus.texts))


def _chunks_to_embed(n: int, folder: Path) -> list[int]:
    """Starts of the embedding chunks not on disk yet (an interrupted build resumes there)."""
    return [s for s in range(0, n, CHUNK) if not (folder / f"emb-{s // CHUNK:05d}.npy").exists()]


def embed_corpus(
    model, texts: Sequence[str], folder: Path, progress: Progress | None = None
) -> np.ndarray:
    """Text embeddings (L2-normalised, float32 ``[n, d]``) in resumable chunks under ``folder``.

    ``progress`` moves with every batch over the chunks still to embed.
    """
    import torch

    from explorer.scoring import embed_texts_once

    n = len(texts)
    todo = _chunks_to_embed(n, folder)
    for k, start in enumerate(todo):
        # Identical reports (common: "No acute cardiopulmonary abnormality.") are embedded once,
        # shortest first (less padding per batch).
        part = [str(t) for t in texts[start : start + CHUNK]]

        def within(f: float, _message: str, k: int = k) -> None:
            if progress and f < 1:  # a chunk's end is reported once it is on disk
                progress((k + f) / len(todo), "embedding reports")

        with torch.inference_mode():
            emb = embed_texts_once(model, part, BATCH, by_length=True, progress=within)
        _save(folder / f"emb-{start // CHUNK:05d}.npy", emb.numpy().astype(np.float32))
        if progress:
            progress((k + 1) / len(todo), "embedding reports")
    chunks = range(0, n, CHUNK)
    return np.concatenate([np.load(folder / f"emb-{c:05d}.npy") for c in range(len(chunks))])


def estimate_build(
    corpus: Corpus, model, settings: MapSettings | None = None, root: Path | None = None
) -> BuildEstimate:
    """How long building the map of ``corpus`` for ``model`` will take here, before it starts.

    The text tower is timed on one batch of :data:`ESTIMATE_SAMPLE` reports around the corpus's
    median length (about a second for the embedded models); labelling and UMAP use the rates
    measured on 2 cores (:data:`LABEL_S_PER_REPORT`, :data:`UMAP_S_PER_REPORT`). Stages already
    on disk (an interrupted build) are not counted again.
    """
    import torch

    settings = settings or MapSettings()
    folder = map_folder(corpus, model.name, model_fingerprint(model), settings, root)
    n = len(corpus)
    if (folder / "map.json").exists():
        return BuildEstimate(ready=True, n=n, seconds={})
    seconds: dict[str, float] = {}
    if corpus.labels is None and not (folder / "labels.npy").exists():
        seconds["labelling"] = n * LABEL_S_PER_REPORT
    todo = _chunks_to_embed(n, folder)
    distinct = sorted(
        {str(t) for s in todo for t in corpus.texts[s : s + CHUNK]}, key=lambda t: (len(t), t)
    )
    if distinct:
        mid = max(0, len(distinct) // 2 - ESTIMATE_SAMPLE // 2)
        sample = distinct[mid : mid + ESTIMATE_SAMPLE]
        with torch.inference_mode():
            model.embed_texts(sample[:1])  # first-call set-up is not per-report cost
            t0 = time.perf_counter()
            model.embed_texts(sample)
        per_text = (time.perf_counter() - t0) / len(sample)
        seconds["embedding reports"] = per_text * len(distinct)
    if not (folder / "xy.npy").exists():
        seconds["layout (UMAP)"] = n * UMAP_S_PER_REPORT + (0 if _umap_compiled else UMAP_FIRST_S)
    return BuildEstimate(ready=False, n=n, seconds=seconds)


def build_map(
    corpus: Corpus,
    model,
    settings: MapSettings | None = None,
    progress: Progress | None = None,
    root: Path | None = None,
    estimate: BuildEstimate | None = None,
) -> ReportMap:
    """Build (or finish building) the map of ``corpus`` for a loaded ``model``; see module doc.

    ``root`` overrides :func:`maps_dir` (the app builds maps of uploaded tables in a temporary
    folder it deletes, so nothing derived from an upload outlives the session). ``progress``
    gets one fraction for the whole build, its stages weighted by ``estimate`` (from
    :func:`estimate_build`; measured here when not given), so the fraction moves with time.
    """
    settings = settings or MapSettings()
    folder = map_folder(corpus, model.name, model_fingerprint(model), settings, root)
    if (folder / "map.json").exists():
        return open_folder(folder, corpus)
    if progress is not None and estimate is None:
        estimate = estimate_build(corpus, model, settings, root)
    folder.mkdir(parents=True, exist_ok=True)
    part = staged(progress, {**(estimate.seconds if estimate else {}), "alignment": 0.5})
    timings: dict[str, float] = {}
    done = folder / "timings.json"
    if done.exists():
        timings.update(json.loads(done.read_text()))

    def stage(name: str, path: Path, fn):
        if path.exists():
            return np.load(path, allow_pickle=False)
        t0 = time.perf_counter()
        part(name)(0.0, name)
        value = fn()
        _save(path, value)
        timings[name] = round(time.perf_counter() - t0, 2)
        done.write_text(json.dumps(timings))
        part(name)(1.0, name)
        return value

    labels = stage("labelling", folder / "labels.npy", lambda: _labels(corpus))
    truncated = int(sum(model.truncated(corpus.texts)))
    t0 = time.perf_counter()
    embeddings = embed_corpus(model, corpus.texts, folder, part("embedding reports"))
    if "embedding" not in timings:
        timings["embedding"] = round(time.perf_counter() - t0, 2)
        done.write_text(json.dumps(timings))
    assignment, clusters = soft_label_clusters(labels, settings.clusters, settings.seed)
    _save(folder / "clusters.npy", assignment)

    def layout() -> np.ndarray:
        import umap

        k = min(settings.n_neighbors, max(2, len(corpus) - 1))
        exact = {}
        if len(embeddings) <= EXACT_KNN_MAX:
            exact["precomputed_knn"] = (*knn_graph(embeddings, k), None)
        reducer = umap.UMAP(
            n_neighbors=k,
            min_dist=settings.min_dist,
            metric="cosine",
            random_state=settings.seed,
            n_components=2,
            n_jobs=1,  # a seeded UMAP is single-threaded anyway; say so to silence the warning
            **exact,
        )
        with warnings.catch_warnings():  # "no search index: transform unavailable" (not used)
            warnings.simplefilter("ignore", UserWarning)
            xy = reducer.fit_transform(embeddings).astype(np.float32)
        global _umap_compiled
        _umap_compiled = True
        return xy

    stage("layout (UMAP)", folder / "xy.npy", layout)
    part("alignment")(0.0, "alignment")
    align = alignment(embeddings, labels, assignment, seed=settings.seed)
    meta = {
        "format": FORMAT_VERSION,
        "corpus": corpus.name,
        "model": model.name,
        "n": len(corpus),
        "label_source": corpus.label_source,
        "clusters": [asdict(c) for c in clusters],
        "alignment": asdict(align),
        "timings": timings,
        "settings": asdict(settings),
        "truncated": truncated,
        "text_limit": model.max_text_tokens,
    }
    (folder / "map.json").write_text(json.dumps(meta, indent=1))
    part("alignment")(1.0, "done")
    return open_folder(folder, corpus)


def open_folder(folder: Path, corpus: Corpus) -> ReportMap:
    """Load a complete map folder written by :func:`build_map` for ``corpus``."""
    meta = json.loads((folder / "map.json").read_text())
    n = meta["n"]
    chunks = (n + CHUNK - 1) // CHUNK
    emb = np.concatenate([np.load(folder / f"emb-{c:05d}.npy") for c in range(chunks)])
    return ReportMap(
        corpus=meta["corpus"],
        model=meta["model"],
        folder=folder,
        ids=corpus.ids,
        texts=corpus.texts,
        labels=np.load(folder / "labels.npy"),
        reference=corpus.reference,
        reference_source=corpus.reference_source,
        label_source=meta["label_source"],
        licence=corpus.licence,
        assignment=np.load(folder / "clusters.npy"),
        clusters=tuple(
            Cluster(**{**c, "positive_share": tuple(c["positive_share"])}) for c in meta["clusters"]
        ),
        xy=np.load(folder / "xy.npy"),
        embeddings=emb,
        alignment=Alignment(**meta["alignment"]),
        timings=meta["timings"],
        n_neighbors=int(meta["settings"]["n_neighbors"]),
        truncated=int(meta.get("truncated", 0)),  # (maps built before it was counted: 0)
        text_limit=meta.get("text_limit"),
    )


def find_map(
    corpus: Corpus, model, settings: MapSettings | None = None, root: Path | None = None
) -> ReportMap | None:
    """The complete map of ``corpus`` for ``model`` if it was built before, else ``None``."""
    folder = map_folder(
        corpus, model.name, model_fingerprint(model), settings or MapSettings(), root
    )
    return open_folder(folder, corpus) if (folder / "map.json").exists() else None
