r"""Training data from real films and real reports: NIH films, IU reports, never paired.

The films come from a manifest (by default :func:`explorer.data.named.nih_train_manifest`: the
shared NIH ChestX-ray14 table minus every patient of the shipped ``nih-test``), read once at the
model's input size through the one preprocessing home. Their labels are the NIH labels mapped to
findings (:data:`explorer.vocab.labels.NIH_TO_FINDING`). The reports are the 3,955 real Indiana
University reports, labelled by the project's labeler. No report belongs to any film, so each
training step draws, for every film in the batch, one text that is *true of its labels*:

* a **prompt view** (share ``p_prompt``): one finding the film is labelled for, in one of the
  ``prompts.json`` templates, affirmed when the film has it ("there is pleural effusion") and
  denied when it does not ("no pleural effusion"); its twin is the other prompt of the pair;
* a **written view** (share ``p_written``): a report written from the film's labels by the
  report writer (:func:`explorer.reports.writer.write_report`), either from all of them or
  from its positives and a few of its negatives; its twin is that report with one present
  finding negated by the negation engine;
* otherwise a **matched real report** (decoupled image-text matching, as in MedCLIP, Wang et
  al. 2022): an IU report drawn among the ``match_top_k`` reports whose labels are clinically
  most like the film's (:func:`explorer.vocab.soft_labels.clinical_similarity`, the film's
  negatives down-weighted: :data:`MATCH_NEGATIVE_WEIGHT`), with one of
  its present findings negated by the engine as its twin (a report true of the film with one
  of the film's present findings denied).

Every text carries its claims (a label vector over :data:`REAL_FINDINGS`, ``+1`` affirmed,
``-1`` denied, ``+0.5`` hedged, ``0`` silent), and every film its label vector: the soft-label
loss softens its targets by their clinical similarity, the target of film ``i`` against text
``j`` (:mod:`explorer.training.losses`), so a normal film is not pushed away from another
normal film's report. The negated twin is the hard negative of the negation-aware loss.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from explorer.training.data import TextView
from explorer.training.loop import digest
from explorer.vocab.labels import KNOWN_FINDINGS, LABEL_VALUE, POSITIVE
from explorer.vocab.soft_labels import clinical_similarity, label_vector

log = logging.getLogger(__name__)

#: The findings of the real training texts and films: the 14 CheXpert names, then the extras.
REAL_FINDINGS: tuple[str, ...] = KNOWN_FINDINGS
_NO_FINDING = "No Finding"


def _prompt_name(finding: str) -> str:
    from explorer.eval.real_benchmark import prompt_name  # noqa: PLC0415 - one home of it

    return prompt_name(finding)


@dataclass(frozen=True, eq=False)
class FilmSet:
    """Real films at one input size, their labels and their patients.

    Attributes:
        images: ``[N, S, S]`` uint8 grayscale at the model's input size.
        labels: The label dict of each film (finding -> 1 / 0 / -1 / None).
        truth: ``[N, K]`` float32 over :attr:`findings`: +1 present, -1 absent, 0 blank
            (stage 1 learns ``truth > 0``).
        claims: ``[N, F]`` float32 label vectors over :data:`REAL_FINDINGS`.
        findings: The manifest's findings (stage-1 outputs).
        keys, patients: Each film's key and patient.
        fingerprint: A short hash of the films and labels (names cached towers and runs).
    """

    images: np.ndarray
    labels: tuple[dict, ...]
    truth: np.ndarray
    claims: np.ndarray
    findings: tuple[str, ...]
    keys: tuple[str, ...]
    patients: tuple[str, ...]
    fingerprint: str
    masks: None = None  # stage 1 reads it: real films have no lesion masks

    def __len__(self) -> int:
        return len(self.keys)

    def pixels(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 ``[B, S, S]`` in [0, 1] for the given indices."""
        return self.images[np.asarray(index)].astype(np.float32) / 255.0


def read_films(manifest, size: int, cache_dir: Path | None = None) -> FilmSet:
    """Every film of ``manifest`` resized to ``size`` (squashed, as the exported model reads).

    The resized films are cached in ``cache_dir`` (an ``.npz`` keyed by the films and size):
    reading 985 NIH PNGs takes about 20 s, the cache a fraction of a second.
    """
    from explorer.models.preprocess import Preprocess, to_model_grid
    from explorer.vocab.soft_labels import label_vectors

    rows = manifest.rows
    findings = tuple(manifest.findings)
    keys = tuple(r.key for r in rows)
    fingerprint = digest([keys, [sorted(r.labels.items()) for r in rows], size])
    path = cache_dir / f"films-{fingerprint}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        images = np.load(path)["images"]
    else:
        pre = Preprocess(size, (0.5,) * 3, (0.25,) * 3, "squash")
        images = np.empty((len(rows), size, size), dtype=np.uint8)
        for i, row in enumerate(rows):
            grid = to_model_grid(row.pixels(), pre)[0, 0].numpy()
            images[i] = np.clip(np.rint(grid * 255.0), 0, 255).astype(np.uint8)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, images=images)
            tmp.replace(path)
    truth = label_vectors(manifest.label_matrix(findings))
    truth[np.isnan(manifest.label_matrix(findings))] = 0.0
    return FilmSet(
        images=images,
        labels=tuple(dict(r.labels) for r in rows),
        truth=truth.astype(np.float32),
        claims=np.stack([label_vector(r.labels, REAL_FINDINGS) for r in rows]),
        findings=findings,
        keys=keys,
        patients=tuple(r.patient for r in rows),
        fingerprint=fingerprint,
    )


# --- the report corpus ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReportPool:
    """Real reports with their labeler labels (claims over :data:`REAL_FINDINGS`)."""

    texts: tuple[str, ...]
    labels: tuple[dict, ...]
    claims: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the texts and their labels: a run resumes only on the same pool (the
        labeler's reading of the reports changes what every text view claims)."""
        return digest([self.texts, [sorted(d.items()) for d in self.labels]])


def iu_report_pool(cache_dir: Path | None = None) -> ReportPool:
    """The IU reports labelled by the project's labeler (labels cached as JSON in ``cache_dir``)."""
    from explorer.reports.labeler import label_reports
    from explorer.reports.mesh import iu_reports

    texts = tuple(r.text for r in iu_reports() if r.text.strip())
    path = None
    if cache_dir is not None:
        from explorer.reports.labeler import terms_path

        key = digest([texts, terms_path().read_text(encoding="utf-8"), _labeler_version()])
        path = cache_dir / f"iu-labels-{key}.json"
    if path is not None and path.exists():
        labels = [dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
    else:
        log.info("labelling %d IU reports", len(texts))
        labels = label_reports(texts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(labels), encoding="utf-8")
    claims = np.stack([label_vector(d, REAL_FINDINGS) for d in labels])
    return ReportPool(texts, tuple(labels), claims)


def _labeler_version() -> str:
    from explorer.reports import labeler

    return digest([Path(labeler.__file__).read_text(encoding="utf-8")])


#: In matching only, a film's negative labels count this much against its positives. An NIH film
#: states every finding, mostly as absent: at full weight a normal report that denies six
#: findings outranks the one report that affirms the film's single finding.
MATCH_NEGATIVE_WEIGHT = 0.3


def match_reports(films: FilmSet, pool: ReportPool, top_k: int) -> np.ndarray:
    """``[N, top_k]`` indices of the reports clinically most like each film (best first).

    The clinical similarity of the film's labels (negatives weighted by
    :data:`MATCH_NEGATIVE_WEIGHT`) and each report's labeler labels.
    """
    query = np.where(films.claims < 0, films.claims * MATCH_NEGATIVE_WEIGHT, films.claims)
    sim = clinical_similarity(query, pool.claims).numpy()
    k = min(top_k, sim.shape[1])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-sim, top, axis=1).argsort(axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


# --- the views --------------------------------------------------------------------------------


def _claims(labels: dict) -> np.ndarray:
    return label_vector(labels, REAL_FINDINGS)


@cache
def _pairs(finding: str, templates: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from explorer.vocab.prompts import prompt_pairs

    pairs = prompt_pairs(_prompt_name(finding), templates or None)
    return tuple(dict.fromkeys((p.affirmed, p.negated) for p in pairs))


def prompt_view(labels: dict, rng: np.random.Generator, templates: tuple[str, ...]) -> TextView:
    """One stated finding of the film as a zero-shot prompt, true of the film, with its twin.

    Half the time (when the film has any) a present finding, otherwise any stated one. No Finding
    is a finding like the others here: the zero-shot pair of an inverted finding is only
    meaningful if the model has been shown which of its two prompts an abnormal film matches.
    """
    stated = [f for f, v in labels.items() if v is not None]
    if not stated:
        return TextView("", np.zeros(len(REAL_FINDINGS), np.float32), None, None, None)
    present = [f for f in stated if labels[f] == POSITIVE]
    pick = present if present and rng.random() < 0.5 else stated
    finding = pick[int(rng.integers(len(pick)))]
    pairs = _pairs(finding, tuple(templates))
    affirmed, negated = pairs[int(rng.integers(len(pairs)))]
    claims = np.zeros(len(REAL_FINDINGS), dtype=np.float32)
    j = REAL_FINDINGS.index(finding)
    claims[j] = LABEL_VALUE[labels[finding]]
    if labels[finding] == POSITIVE:
        return TextView(affirmed, claims, negated, -claims, finding)
    return TextView(negated, claims, affirmed, -claims, finding)


def _flip(text: str, labels: dict, claims: np.ndarray, rng, prefer: Sequence[str] = ()):
    """The text with one finding's polarity flipped by the engine, and its claims, or None.

    Present findings first (those in ``prefer`` before the others), then denied ones.
    """
    from explorer.vocab.negation import negate_report

    present = [f for f, v in labels.items() if v == POSITIVE and f in REAL_FINDINGS]
    rng.shuffle(present)
    present.sort(key=lambda f: f not in prefer)
    denied = [f for f, v in labels.items() if v == 0 and f in REAL_FINDINGS and f != _NO_FINDING]
    rng.shuffle(denied)
    normal = REAL_FINDINGS.index(_NO_FINDING)
    for finding in [*present, *denied]:
        flipped = negate_report(text, [_prompt_name(finding)])
        if flipped != text:
            out = claims.copy()
            j = REAL_FINDINGS.index(finding)
            out[j] = -1.0 if out[j] > 0 else 1.0
            if finding != _NO_FINDING and out[j] > 0 and out[normal] > 0:
                out[normal] = -1.0  # a finding affirmed: the text no longer describes a normal film
            return flipped, out, finding
    return None


def written_view(
    labels: dict, rng: np.random.Generator, p_full: float, with_negative: bool
) -> TextView:
    """A report written from the film's labels (all, or positives and up to 3 negatives)."""
    from explorer.reports.writer import write_report

    stated = {f: v for f, v in labels.items() if v is not None}
    if rng.random() >= p_full:
        negatives = [f for f, v in stated.items() if v == 0 and f != _NO_FINDING]
        keep = set(rng.permutation(negatives)[: int(rng.integers(0, 4))].tolist())
        stated = {f: v for f, v in stated.items() if v != 0 or f in keep or f == _NO_FINDING}
    text = write_report(stated, int(rng.integers(2**31)))
    claims = _claims(stated)
    if not with_negative:
        return TextView(text, claims, None, None, None)
    flipped = _flip(text, stated, claims, rng)
    if flipped is None:
        return TextView(text, claims, None, None, None)
    return TextView(text, claims, flipped[0], flipped[1], flipped[2])


def matched_view(
    film_labels: dict,
    candidates: np.ndarray,
    pool: ReportPool,
    rng: np.random.Generator,
    with_negative: bool,
) -> TextView:
    """A real report among the film's clinically closest ones, and it with a finding negated.

    The negated finding is one the report affirms, preferring those the film has too.
    """
    k = int(candidates[int(rng.integers(len(candidates)))])
    text, labels, claims = pool.texts[k], pool.labels[k], pool.claims[k]
    if not with_negative:
        return TextView(text, claims, None, None, None)
    prefer = [f for f, v in film_labels.items() if v == POSITIVE]
    flipped = _flip(text, labels, claims, rng, prefer)
    if flipped is None:
        return TextView(text, claims, None, None, None)
    return TextView(text, claims, flipped[0], flipped[1], flipped[2])


@dataclass(frozen=True, eq=False)
class RealTraining:
    """The films, the report pool and the matches: what the trainer draws batches from."""

    films: FilmSet
    pool: ReportPool
    matches: np.ndarray

    def __len__(self) -> int:
        return len(self.films)

    @property
    def truth(self) -> np.ndarray:
        return self.films.truth

    @property
    def masks(self) -> None:
        return None

    @property
    def fingerprint(self) -> str:
        return self.films.fingerprint

    def pixels(self, index) -> np.ndarray:
        return self.films.pixels(index)

    def image_claims(self, index) -> np.ndarray:
        """The films' label vectors (the image side of the clinical similarity)."""
        return self.films.claims[np.asarray(index)]

    def views(self, index, rng: np.random.Generator, cfg, with_negative: bool) -> list[TextView]:
        """One sampled text view per film of ``index`` (see the module docstring)."""
        out = []
        for i in index:
            labels = self.films.labels[i]
            u = rng.random()
            if u < cfg.p_prompt:
                view = prompt_view(labels, rng, cfg.prompt_templates)
            elif u < cfg.p_prompt + cfg.p_written:
                view = written_view(labels, rng, cfg.p_full_report, with_negative)
            else:
                view = matched_view(labels, self.matches[i], self.pool, rng, with_negative)
            if not view.text:  # a film with no stated label: fall back to its written report
                view = written_view(labels, rng, 1.0, with_negative)
            out.append(view)
        return out


def real_training(cfg, size: int, cache_dir: Path) -> RealTraining:
    """The real training set a config names (``cfg.manifest``, ``cfg.reports``)."""
    films = read_films(training_manifest(cfg.manifest), size, cache_dir)
    if cfg.reports != "iu":
        raise ValueError(f"reports must be 'iu' (the IU corpus), got {cfg.reports!r}")
    pool = iu_report_pool(cache_dir)
    return RealTraining(films, pool, match_reports(films, pool, cfg.match_top_k))


def training_manifest(spec: str):
    """``"nih-train"`` (the NIH training side) or a manifest table path."""
    from explorer.data import open_manifest
    from explorer.data.named import nih_train_manifest

    if spec == "nih-train":
        return nih_train_manifest()
    manifest = open_manifest(spec)
    if manifest.name == "nih-test":
        raise ValueError("nih-test is the held-out test set: it must never be trained on")
    return manifest
