"""The load test script, with small numbers: no request lost, the queue limit holds."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gradio")
from conftest import default_model_ready  # noqa: E402

pytestmark = pytest.mark.skipif(
    not default_model_ready(), reason="embedded default model not built"
)


@pytest.mark.slow
def test_load_script_with_small_numbers(capsys):
    from explorer.cli import main

    status = main(["load", "--clients", "4", "--requests", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0, out["problems"]
    assert out["sent"] == out["completed"] == 12 and out["failed"] == 0
    # Four clients at once against a limit of two: the queue held them to exactly two.
    assert out["peak_in_flight"] == out["concurrency_limit"] == 2
    assert out["rss_growth"] <= 0.10 and out["cold_start_s"] > 0
    assert 0 < out["median_s"] <= out["p95_s"] <= out["max_s"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"completed": 9}, "1 requests lost"),
        ({"completed": 8, "failed": 2}, "2 requests failed"),
        ({"peak_in_flight": 3}, "3 findings requests ran at once (limit 2)"),
        ({"rss_after_run_mb": 111.0}, "resident memory grew 11.0%"),
    ],
)
def test_load_verdict_names_each_failure(change, problem):
    from explorer.ops.load import LoadResult

    ok = dict(
        clients=2,
        requests_each=5,
        sent=10,
        completed=10,
        failed=0,
        errors=(),
        wall_s=1.0,
        median_s=0.1,
        p95_s=0.1,
        max_s=0.1,
        throughput_per_s=10.0,
        rss_after_warmup_mb=100.0,
        rss_after_run_mb=105.0,
        peak_in_flight=2,
        concurrency_limit=2,
        max_rss_growth=0.1,
    )
    assert LoadResult(**ok).passed and "| verdict | pass |" in LoadResult(**ok).to_markdown()
    bad = LoadResult(**{**ok, **change})
    assert not bad.passed and problem in bad.to_markdown()


@pytest.mark.slow
def test_one_client_flooding_attribution_does_not_hold_up_another(capsys):
    """One client queues 60 occlusion runs every 10 s while a person asks for one 5 s after
    each map: the flooder's runs past its share are refused at once, the person is never
    refused, and their usual (median) wait stays under 3x their time alone (before the
    per-client share, they waited behind all 60: 545 s). The issue's p95 target (3x) is
    measured by ``explorer load --flood occlusion --calls 20`` (1.42x; see README) and not
    asserted here: with six calls the p95 is the maximum, the first request that meets a whole
    wave (2.72-2.97x on 2 cores with the flooding client on the same machine)."""
    from explorer.cli import main

    main(["load", "--flood", "occlusion", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["flood_sent"] >= 60 and out["flood_ran"] <= out["flood_sent"] // 60  # 1 a wave
    assert out["flood_refused"] == out["flood_sent"] - out["flood_ran"]
    assert len(out["loaded_s"]) == len(out["unloaded_s"]) == 6  # the person was never refused
    alone = sorted(out["unloaded_s"])[3]
    during = sorted(out["loaded_s"])[3]
    assert during < 3 * alone, out
