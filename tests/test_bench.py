"""The performance bench runs at tiny sizes, and its agreement checks hold."""

from __future__ import annotations

import math

import pytest
from conftest import default_model_ready

pytestmark = pytest.mark.skipif(
    not default_model_ready(), reason="embedded default model not built"
)


@pytest.fixture(scope="module")
def report():
    from explorer.ops.speed import run_bench

    return run_bench(
        images=2,
        repeats=2,
        attribution_repeats=1,
        ig_steps=4,
        embed_reports=24,
        single_reports=6,
        map_corpora=["phantom:40"],
        app=False,
    )


def _row(report, measure):
    return next(r for r in report.rows if r.measure.startswith(measure))


@pytest.mark.slow
def test_bench_measures_every_section(report):
    sections = {r.section for r in report.rows}
    assert sections == {"findings", "peer", "attribution", "embedding", "map"}
    for r in report.rows:
        assert r.value is not None and math.isfinite(r.value) and r.value >= 0, r
    assert _row(report, "query / bare forward").target == "<= 1.5"
    assert "steps=4" in _row(report, "ig median").note
    assert "cores" in report.machine


@pytest.mark.slow
def test_pipeline_and_ours_give_the_same_probabilities(report):
    row = _row(report, "max |P ours - P pipeline|")
    assert row.met and row.value <= 1e-4


@pytest.mark.slow
def test_batched_and_single_embeddings_agree(report):
    row = _row(report, "max |batched - single|")
    assert row.met and row.value <= 1e-4


@pytest.mark.slow
def test_map_reopens_from_cache(report):
    assert _row(report, "reopen phantom-40").met


def test_table_names_misses():
    from explorer.ops.speed import BenchReport, BenchRow

    table = BenchReport(
        "test machine",
        (
            BenchRow("peer", "pipeline / ours", "m", 2.0, "x", ">= 3", False),
            BenchRow("app", "cold start", "m", None, "s", note="not run"),
        ),
    ).to_markdown()
    assert "| peer | pipeline / ours | m | 2.00 x | >= 3 | **no** |" in table
    assert "| app | cold start | m | n/a |" in table and table.startswith("Machine: test machine")


def test_hub_section_on_a_tiny_replica():
    """Every row of the hub section is measured through the registry, offline; the targets
    apply to BiomedCLIP only, and the completeness target to every family."""
    pytest.importorskip("open_clip")
    from explorer.ops import speed

    rows = speed.bench_hub(["biomedclip"], "tiny", methods=("gradcam", "attention"), map_sample=8)
    measures = [r.measure for r in rows]
    assert measures[:4] == [
        "first findings answer",
        "findings answer, warm",
        "Attribution click, gradcam",
        "Attribution click, attention",
    ]
    assert all(r.value is not None and r.value >= 0 for r in rows)
    first = rows[0]
    assert first.section == "hub (tiny size)" and first.target == "< 5 s" and first.met is not None
    gap = next(r for r in rows if r.measure == "token IG completeness gap")
    assert gap.met and gap.unit == "%"
