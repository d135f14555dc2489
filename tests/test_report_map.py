"""Report map library: corpora, soft-label clusters, alignment, resumable map builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs
from explorer.reports import map as map_mod
from explorer.reports.clusters import UNLABELLED, alignment, soft_label_clusters
from explorer.reports.corpus import CorpusError, load_corpus, phantom_corpus, table_corpus
from explorer.vocab.labels import CHEXPERT_FINDINGS

F = {name: j for j, name in enumerate(CHEXPERT_FINDINGS)}
NAN = np.nan


def _labels(rows: list[dict[str, int]]) -> np.ndarray:
    out = np.full((len(rows), len(CHEXPERT_FINDINGS)), NAN, dtype=np.float32)
    for i, row in enumerate(rows):
        for name, v in row.items():
            out[i, F[name]] = v
    return out


# --- corpora -------------------------------------------------------------------------------


def test_phantom_corpus_is_deterministic_and_labelled_by_the_generator():
    a, b = phantom_corpus(12), phantom_corpus(12)
    assert a.ids == b.ids and a.texts == b.texts and a.content_hash == b.content_hash
    assert np.array_equal(a.labels, b.labels, equal_nan=True)
    assert a.label_source == "generator" and a.labels.shape == (12, 14)
    # a report that affirms an effusion is labelled positive for it, and vice versa
    eff = a.labels[:, F["Pleural Effusion"]]
    for text, v in zip(a.texts, eff, strict=True):
        if v == 1:
            assert "effusion" in text.lower()
    assert phantom_corpus(13).content_hash != a.content_hash


def test_table_corpus_guesses_text_column_and_reads_label_columns(tmp_path):
    path = tmp_path / "reports.csv"
    pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "Report": ["Small left effusion.", "", "No pneumothorax."],
            "pleural_effusion": [1, None, None],
            "Pneumothorax": ["", "", "0"],
        }
    ).to_csv(path, index=False)
    corpus = table_corpus(path)
    assert corpus.ids == ("a", "c")  # the empty report is dropped
    assert corpus.label_source == "file"
    assert corpus.labels[0, F["Pleural Effusion"]] == 1
    assert corpus.labels[1, F["Pneumothorax"]] == 0
    assert np.isnan(corpus.labels[0, F["Cardiomegaly"]])
    parquet = tmp_path / "reports.parquet"
    pd.DataFrame({"findings": ["Heart is enlarged."]}).to_parquet(parquet)
    p = table_corpus(parquet)
    assert p.texts == ("Heart is enlarged.",) and p.labels is None and p.ids == ("row-1",)


@pytest.mark.parametrize(
    ("content", "name", "column", "message"),
    [
        ("a,b\n1,2\n", "x.csv", None, "say which column"),
        ("report\nx\n", "x.csv", "text", "no column 'text'"),
        ("report\n\n\n", "x.csv", None, "holds no report text"),
        ("report,Edema\nx,2\n", "x.csv", None, "must be 1, 0, -1 or blank"),
        ("report,Edema\nx,yes\n", "x.csv", None, "must be 1, 0, -1 or blank"),
        ("garbage", "x.parquet", None, "could not be read as Parquet"),
        ("report\nx\n", "x.xlsx", None, "must be CSV, TSV or Parquet"),
    ],
)
def test_bad_tables_get_a_sentence(tmp_path, content, name, column, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        table_corpus(path, text_column=column)


def test_corpus_specs():
    assert len(load_corpus("phantom:5")) == 5
    with pytest.raises(CorpusError, match="phantom:N"):
        load_corpus("phantom:lots")
    with pytest.raises(CorpusError, match="No file"):
        load_corpus("/nonexistent/reports.csv")


# --- clusters and alignment -----------------------------------------------------------------


def _three_groups(n_each: int = 20) -> np.ndarray:
    rows = (
        [{"Pleural Effusion": 1, "Pneumothorax": 0}] * n_each
        + [{"Cardiomegaly": 1, "Edema": -1}] * n_each
        + [{"No Finding": 1, "Pneumothorax": 0, "Pleural Effusion": 0}] * n_each
        + [{}] * 5
    )
    return _labels(rows)


def test_clusters_recover_groups_and_are_named_by_their_findings():
    labels = _three_groups()
    assignment, clusters = soft_label_clusters(labels, k=3, seed=0)
    groups = [set(assignment[i * 20 : (i + 1) * 20]) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set().union(*groups)) == 3
    names = {c.name for c in clusters}
    assert {"Pleural Effusion", "Cardiomegaly + Edema", "No Finding", UNLABELLED} == names
    assert clusters[-1].name == UNLABELLED and clusters[-1].size == 5
    assert [c.size for c in clusters[:3]] == [20, 20, 20]
    again, _ = soft_label_clusters(labels, k=3, seed=0)
    assert np.array_equal(assignment, again)
    # reports that only deny findings: named in words, not "negatives: ..."
    denials = _labels([{"Pneumothorax": 0, "Pleural Effusion": 0}] * 12)
    _, (only,) = soft_label_clusters(denials, k=1, seed=0)
    assert only.name.startswith("nothing affirmed · denies ")
    assert {"Pneumothorax", "Pleural Effusion"} <= set(only.name.split("denies ")[1].split(", "))


def test_alignment_separates_organised_from_random_embeddings():
    labels = _three_groups()
    assignment, _ = soft_label_clusters(labels, k=3)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    organised = centres[assignment] + 0.1 * rng.normal(size=(len(labels), 16))
    good = alignment(organised, labels, assignment, k=5)
    bad = alignment(rng.normal(size=(len(labels), 16)), labels, assignment, k=5)
    assert good.cluster_agreement > 0.95 and good.lift > 2.5
    assert bad.cluster_agreement < 0.6
    assert good.soft_similarity > good.soft_chance
    assert abs(good.cluster_chance - (3 * (20 / 65) ** 2 + (5 / 65) ** 2)) < 1e-3
    # 65 reports for k=5 is enough; for k=10 the neighbours are too large a part of the table
    assert good.caution(65) is None
    assert "Only 65 reports for k=10" in dataclasses.replace(good, k=10).caution(65)


# --- building maps --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    specs = build_tiny_specs(tmp_path_factory.mktemp("tiny"))
    reg = ModelRegistry(specs, default="tiny-clip")
    return reg.load("tiny-clip", "cpu")


def test_build_resumes_reopens_and_places(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    monkeypatch.setattr(map_mod, "CHUNK", 16)
    corpus = phantom_corpus(40)
    stages = []
    built = map_mod.build_map(corpus, tiny_model, progress=lambda f, s: stages.append(s))
    assert len(built) == 40 and built.xy.shape == (40, 2) and np.isfinite(built.xy).all()
    assert {"labelling", "embedding reports", "layout (UMAP)"} <= set(stages)
    folder = built.folder
    assert sorted(p.name for p in folder.glob("emb-*.npy")) == [
        "emb-00000.npy",
        "emb-00001.npy",
        "emb-00002.npy",
    ]

    # A complete map reopens without touching the model's text tower.
    calls = []
    original = tiny_model.embed_texts

    def counting(texts):
        calls.append(len(texts))
        return original(texts)

    monkeypatch.setattr(tiny_model, "embed_texts", counting)
    again = map_mod.find_map(corpus, tiny_model)
    assert again is not None and calls == []
    assert np.array_equal(again.xy, built.xy)

    # Interrupted build: the last chunk and the final stages are missing -> only they rerun.
    (folder / "map.json").unlink()
    (folder / "emb-00002.npy").unlink()
    resumed = map_mod.build_map(corpus, tiny_model)
    assert sum(calls) == 40 - 32
    assert np.allclose(resumed.embeddings, built.embeddings, atol=1e-6)

    # A report's own embedding finds itself first; an image lands inside the map's extent.
    own = resumed.neighbours(resumed.embeddings[7], k=3)
    assert own[0].index == 7 and own[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [n.similarity for n in own] == sorted((n.similarity for n in own), reverse=True)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    placement = resumed.place(tiny_model.embed_image(image).numpy()[0], k=5)
    lo, hi = resumed.xy.min(0) - 5, resumed.xy.max(0) + 5
    assert np.all((lo <= placement.xy) & (placement.xy <= hi)) and len(placement.neighbours) == 5


def test_changed_corpus_gets_a_new_map(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    a = map_mod.build_map(phantom_corpus(20), tiny_model)
    b = map_mod.build_map(phantom_corpus(21), tiny_model)
    assert a.folder != b.folder and len(b) == 21


def test_selection_counts_match_labels(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    built = map_mod.build_map(phantom_corpus(30), tiny_model)
    idx = [0, 3, 5, 5, 99]  # duplicates and out-of-range rows are ignored
    table, counts = built.selection(idx)
    assert list(table["id"]) == [built.ids[i] for i in (0, 3, 5)]
    col = built.labels[[0, 3, 5], F["Pleural Effusion"]]
    row = counts.set_index("finding").loc["Pleural Effusion"]
    assert row["positive"] == (col == 1).sum() and row["negative"] == (col == 0).sum()


def test_map_figure_rows_round_trip(tmp_path, monkeypatch, tiny_model):
    from explorer.plots import map_figure

    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    built = map_mod.build_map(phantom_corpus(30), tiny_model)
    fig = map_figure(built, "cluster", image_xy=(0.0, 0.0), neighbour_idx=[1, 2])
    report_traces = [t for t in fig.data if t.name not in ("your image", "nearest reports")]
    rows = np.concatenate([np.asarray(t.customdata) for t in report_traces])
    assert sorted(rows.tolist()) == list(range(30))
    for t in report_traces:  # each point sits at its own report's coordinates
        assert np.allclose(np.asarray(t.x), built.xy[np.asarray(t.customdata), 0])
    # the placed image is named in words where it sits (hover may pick a report on top of it)
    (note,) = fig.layout.annotations
    assert note.text == "your image" and (note.x, note.y) == (0.0, 0.0)
    by_finding = map_figure(built, "Pleural Effusion")
    assert any(t.name.startswith("positive") for t in by_finding.data)
    assert not by_finding.layout.annotations
    with pytest.raises(ValueError, match="reference"):
        map_figure(built, "disagreement")


def test_exact_knn_graph_matches_brute_force(monkeypatch):
    from explorer.reports import map as map_mod

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(map_mod, "KNN_ROWS", 64)  # several chunks
    idx, dist = map_mod.knn_graph(x, 5)
    sims = x @ x.T
    np.fill_diagonal(sims, np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert (idx[:, 0] == np.arange(300)).all() and (dist[:, 0] == 0).all()
    assert (np.sort(idx[:, 1:], 1) == np.sort(expected[:, 1:], 1)).all()
    np.testing.assert_allclose(
        dist[:, 1:], 1 - np.take_along_axis(x @ x.T, idx[:, 1:], 1), atol=1e-6
    )


def test_membership_weights_sum_to_log2_k():
    from explorer.reports.map import membership_weights

    d = np.array([0.1, 0.12, 0.2, 0.35, 0.5, 0.6, 0.9, 1.0])
    w = membership_weights(d)
    assert w[0] == pytest.approx(1.0) and np.all(np.diff(w) <= 0)
    assert w.sum() == pytest.approx(np.log2(len(d)), abs=1e-4)


def test_the_build_is_one_bar_said_beforehand_and_a_cancelled_build_resumes(
    tmp_path, monkeypatch, tiny_model
):
    from explorer.progress import Cancelled

    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    monkeypatch.setattr(map_mod, "CHUNK", 16)
    corpus = phantom_corpus(48)

    def estimate():  # on a steady clock: the tower's timing does not depend on the machine's load
        import itertools

        with monkeypatch.context() as m:
            m.setattr(map_mod.time, "perf_counter", itertools.count(0.0, 0.25).__next__)
            return map_mod.estimate_build(corpus, tiny_model)

    before = estimate()
    assert not before.ready and before.n == 48
    # the phantom corpus carries its labels: nothing to label; the text tower was timed
    assert list(before.seconds) == ["embedding reports", "layout (UMAP)"]
    assert before.seconds["embedding reports"] > 0 and before.total > 0
    assert before.sentence("tiny-clip").startswith("First build of this map for tiny-clip: about")

    # The person leaves after the first chunk: the build stops there, keeping that chunk.
    seen: list[tuple[float, str]] = []

    def leave_after_first_chunk(fraction: float, stage: str) -> None:
        seen.append((fraction, stage))
        if stage == "embedding reports" and fraction > 0:
            raise Cancelled("gone")

    with pytest.raises(Cancelled):
        map_mod.build_map(corpus, tiny_model, progress=leave_after_first_chunk)
    folder = map_mod.map_folder(
        corpus, "tiny-clip", map_mod.model_fingerprint(tiny_model), map_mod.MapSettings()
    )
    assert not (folder / "map.json").exists()
    assert sorted(p.name for p in folder.glob("emb-*.npy")) == ["emb-00000.npy"]
    # what is on disk is not counted again
    resumed_estimate = estimate()
    assert resumed_estimate.seconds["embedding reports"] < before.seconds["embedding reports"]

    # The next build resumes; its bar is one fraction for the whole build, never going back.
    seen.clear()
    built = map_mod.build_map(corpus, tiny_model, progress=lambda f, s: seen.append((f, s)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"embedding reports", "layout (UMAP)", "done"} <= {s for _, s in seen}
    assert len(built) == 48
    after = map_mod.estimate_build(corpus, tiny_model)
    assert after.ready and after.seconds == {} and "opens at once" in after.sentence("tiny-clip")


def test_a_map_counts_once_the_reports_its_model_cut(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    texts = [f"Case {k}: no pleural effusion." for k in range(24)] + ["word " * 400]
    table = tmp_path / "reports.csv"
    table.write_text("report\n" + "\n".join(texts) + "\n")
    corpus = table_corpus(table)
    built = map_mod.build_map(corpus, tiny_model)
    expected = sum(tiny_model.truncated(corpus.texts))
    assert expected == 1 and built.truncated == 1
    assert built.text_limit == tiny_model.max_text_tokens
    again = map_mod.find_map(corpus, tiny_model)  # read back from disk, not counted again
    assert again is not None and again.truncated == 1
