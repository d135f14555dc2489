"""Serving settings, the default-model fallback, ZeroGPU wrapping, the gauge and the purges."""

from __future__ import annotations

import inspect
import os
import sys
import threading
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("gradio")
from explorer.models import default_registry, registry  # noqa: E402
from explorer.ui import serving  # noqa: E402
from explorer.ui.serving import Gauge, ServeSettings, endpoint  # noqa: E402


def test_settings_from_environment():
    s = ServeSettings.from_env(
        {
            "EXPLORER_DEFAULT_MODEL": " biomedclip ",
            "EXPLORER_UPLOAD_TTL": "120",
            "EXPLORER_PURGE_EVERY": "30",
            "GRADIO_SERVER_PORT": "8001",
        }
    )
    assert s.default_model == "biomedclip" and s.delete_cache == (30, 120) and s.port == 8001
    assert ServeSettings.from_env({}).default_model is None
    limits = ServeSettings.from_env(
        {"EXPLORER_MAX_UPLOAD_MB": "20", "EXPLORER_QUEUE_SIZE": "8", "EXPLORER_PER_CLIENT": "4"}
    )
    assert (limits.max_upload_mb, limits.queue_size, limits.per_client) == (20, 8, 4)
    with pytest.raises(ValueError, match="EXPLORER_UPLOAD_TTL must be a whole number"):
        ServeSettings.from_env({"EXPLORER_UPLOAD_TTL": "soon"})
    with pytest.raises(ValueError, match="at least 1"):
        ServeSettings.from_env({"EXPLORER_CONCURRENCY": "0"})


def test_torch_threads_follow_the_cpus_this_process_may_use(tmp_path):
    cgroup = tmp_path / "cpu.max"
    mine = len(os.sched_getaffinity(0))
    cgroup.write_text("max 100000\n")
    assert serving.machine_cpus(cgroup) == mine  # no quota: the affinity
    cgroup.write_text("150000 100000\n")
    assert serving.machine_cpus(cgroup) == min(mine, 1)  # 1.5 CPUs of quota: one thread
    assert serving.machine_cpus(tmp_path / "absent") == mine
    assert ServeSettings.from_env({"EXPLORER_TORCH_THREADS": "3"}).threads == 3
    assert ServeSettings.from_env({}).threads == serving.machine_cpus()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry.hub_reachable.cache_clear()
    yield
    registry.hub_reachable.cache_clear()


def test_compare_menu_offers_other_models_that_load_here(offline):
    """Not the model already chosen, not one that cannot load, and "none" in words."""
    from explorer.ui.common import NO_COMPARISON, compare_choices, compare_menu

    names = list(default_registry().names())
    choices = compare_choices(names, "real-negaware")
    assert choices[0] == NO_COMPARISON == ("none", "")
    offered = [value for _, value in choices[1:]]
    assert "real-negaware" not in offered and "biomedclip" not in offered  # hub: offline here
    assert {"real-infonce", "phantom-negaware", "phantom-infonce"} <= set(offered)
    update = compare_menu(names)
    kept = update("phantom-negaware", "real-infonce")
    assert (
        kept.value == "real-infonce"
        and ("phantom-negaware", "phantom-negaware") not in kept.choices
    )
    assert update("real-infonce", "real-infonce").value == ""  # not itself


def test_requested_default_falls_back_with_a_notice_when_the_hub_is_unreachable(offline):
    reg = default_registry()
    name, notice = reg.preferred("biomedclip")
    assert name == reg.default == "real-negaware"
    assert "biomedclip" in notice and "cannot load here" in notice and reg.default in notice
    assert reg.preferred("no-such-model")[1].startswith("The requested default model")
    assert reg.preferred(None) == (reg.default, None)
    assert reg.preferred("phantom-infonce") == ("phantom-infonce", None)  # shipped: loads


def test_app_opens_on_the_embedded_default_and_says_why(offline):
    from explorer.ui import build_demo

    demo = build_demo(ServeSettings(default_model="biomedclip"))
    notices = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "start-notice"]
    assert len(notices) == 1 and "biomedclip" in notices[0].value
    dropdowns = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Model"]
    lesson = [d for d in dropdowns if d.elem_id == "lesson-model"]
    assert dropdowns and all(d.value == "real-negaware" for d in dropdowns if d not in lesson)
    # the lesson is about the two phantom models (same phantoms, different loss), not the default
    assert [d.value for d in lesson] == ["phantom-negaware"]
    compared = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Compared with"]
    assert [d.value for d in compared] == ["phantom-infonce"]
    plain = build_demo(ServeSettings())
    assert not [b for b in plain.blocks.values() if getattr(b, "elem_id", None) == "start-notice"]


def test_endpoint_uses_zerogpu_when_spaces_is_importable(monkeypatch):
    calls = []

    def gpu(duration):
        def wrap(fn):
            def on_gpu(*args, **kwargs):
                calls.append(duration)
                return fn(*args, **kwargs)

            return on_gpu

        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))

    @endpoint("test-gpu", gpu_seconds=42)
    def handler(x, progress=None):
        return x * 2

    assert handler(3) == 6 and calls == [42]
    assert list(inspect.signature(handler).parameters) == ["x", "progress"]  # Gradio reads it


def test_endpoint_is_plain_without_spaces(monkeypatch):
    # This repository's spaces/ folder imports as an empty namespace package: no GPU there.
    monkeypatch.setitem(sys.modules, "spaces", types.ModuleType("spaces"))

    @endpoint("test-plain", gpu_seconds=10)
    def handler(x):
        return x + 1

    assert handler(1) == 2


def test_endpoint_marks_the_handler_with_its_name_and_grant():
    @endpoint("test-mark", gpu_seconds=7)
    def handler():
        return 1

    assert getattr(handler, serving.ENDPOINT_MARK) == "test-mark"
    assert getattr(handler, serving.GPU_SECONDS_MARK) == 7
    assert getattr(endpoint("test-mark-cpu")(lambda: 1), serving.GPU_SECONDS_MARK) is None


#: Events that decode an upload or run a model, by ``api_name``, and whether they get a ZeroGPU
#: grant: each must be wrapped by :func:`endpoint` under its own name (counted in ``/health``).
MODEL_ENDPOINTS = {
    "inspect": False,
    "findings": True,
    "attribute": True,
    "map_open": True,
    "map_place": True,
    "batch": True,
    "lesson": True,
}


def _events(demo):
    """(api_name or None for a UI-only event, handler, trigger names) of every event."""
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    for block_fn in fns:
        ui_only = getattr(block_fn, "api_visibility", None) == "private" or not block_fn.api_name
        triggers = [t for _, t in block_fn.targets]
        yield (None if ui_only else block_fn.api_name), block_fn.fn, triggers


def test_every_model_heavy_event_is_an_endpoint_and_no_ui_only_event_is():
    from explorer.ui import build_demo

    events = list(_events(build_demo(ServeSettings())))
    wrapped = {}
    for api_name, fn, _ in events:
        mark = getattr(fn, serving.ENDPOINT_MARK, None)
        if api_name is None or api_name not in MODEL_ENDPOINTS:
            assert mark is None, (
                f"{fn.__name__} (api_name={api_name}) is no model endpoint but is wrapped as "
                f"endpoint {mark!r}"
            )
            continue
        assert mark == api_name, f"/{api_name} runs {fn.__name__}, not wrapped by endpoint()"
        gets_gpu = getattr(fn, serving.GPU_SECONDS_MARK) is not None
        assert gets_gpu == MODEL_ENDPOINTS[api_name], f"/{api_name}: ZeroGPU grant {gets_gpu}"
        wrapped[api_name] = fn.__name__
    assert set(wrapped) == set(MODEL_ENDPOINTS)
    # The UI-only events this guards against: the method radio's baseline toggle, page load.
    ui_only = {fn.__name__ for api_name, fn, _ in events if api_name is None}
    assert "baseline_control" in ui_only
    assert any("load" in triggers for api_name, _, triggers in events if api_name is None)


def test_long_work_shows_one_progress_bar():
    """The batch, the lesson and the map build report progress in one place, not per output."""
    from explorer.ui import build_demo

    demo = build_demo(ServeSettings())
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    shown = {
        f.api_name: f.show_progress_on for f in fns if f.api_name in ("batch", "lesson", "map_open")
    }
    assert set(shown) == {"batch", "lesson", "map_open"}
    assert all(on is not None and len(on) == 1 for on in shown.values()), shown


def test_gauge_counts_peak_concurrency_and_failures():
    gauge = Gauge()
    gate = threading.Barrier(3)

    def work(fail: bool) -> None:
        gauge.enter("e")
        gate.wait()
        time.sleep(0.05)
        gauge.leave("e", ok=not fail)

    threads = [threading.Thread(target=work, args=(i == 0,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = gauge.snapshot()["e"]
    assert snap == {
        "calls": 3,
        "failed": 1,
        "in_flight": 0,
        "peak_in_flight": 3,
        "refused_over_share": 0,
    }


def test_endpoint_counts_errors_raised_by_the_handler():
    @endpoint("test-error")
    def broken():
        raise RuntimeError("boom")

    before = serving.GAUGE.snapshot().get("test-error", {"failed": 0})["failed"]
    with pytest.raises(RuntimeError):
        broken()
    assert serving.GAUGE.snapshot()["test-error"]["failed"] == before + 1


def test_scratch_files_are_purged_by_age(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    old = serving.scratch_file("cases.csv", "a,b\n1,2\n")
    new = serving.scratch_file("image.png", b"\x89PNG")
    assert Path(old).read_text() == "a,b\n1,2\n"
    past = time.time() - 100
    os.utime(os.path.dirname(old), (past, past))
    assert serving.purge_scratch(50) == 1
    assert not os.path.exists(old) and os.path.exists(new)
    assert serving.purge_scratch(0) == 1 and not os.path.exists(new)


def test_upload_leftovers_purged_only_in_a_private_folder(tmp_path, monkeypatch):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    for folder in (private, shared):
        (folder / "tmpabc123").write_bytes(b"")
        (folder / "tmpkeep").write_bytes(b"not empty")
        monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
        serving.purge_upload_leftovers(0)
    assert not (private / "tmpabc123").exists() and (private / "tmpkeep").exists()
    assert (shared / "tmpabc123").exists()


def test_health_reports_memory_models_and_limits(monkeypatch):
    monkeypatch.delenv("EXPLORER_HEALTH_DETAIL", raising=False)
    public = serving.health()
    assert public["status"] == "ok" and public["rss_mb"] > 10
    assert public["peak_rss_mb"] >= public["rss_mb"]
    # a public Space does not list how often each endpoint was called or failed
    assert set(public) == {"status", "rss_mb", "peak_rss_mb", "models_loaded"}
    monkeypatch.setenv("EXPLORER_HEALTH_DETAIL", "1")
    report = serving.health()
    assert report["concurrency_limits"]["findings"] >= 1 and "endpoints" in report
    assert report["runs_per_client"] == {"runs": serving.FAIR.runs, "window_s": 10.0}


def test_a_client_over_its_share_is_refused_at_once_and_others_are_not(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(serving.time, "monotonic", lambda: clock[0])
    fair = serving.Fairness(runs=2, window_s=10.0, rest=1.0, max_rest_s=60.0)
    assert fair.admit("attribute", "flood") == 0 and fair.admit("attribute", "flood") == 0
    assert fair.admit("attribute", "flood") == pytest.approx(10)  # over its share: 10 s from now
    assert fair.admit("attribute", "someone else") == 0  # another page has its own share
    assert fair.admit("batch", "flood") == 0  # and each event its own
    assert fair.admit("attribute", None) == 0  # no session (a direct call): not limited
    clock[0] += 5.0
    assert fair.admit("attribute", "flood") == pytest.approx(10)  # asking again restarts the wait
    clock[0] += 10.5  # waited its turn ...
    assert fair.admit("attribute", "flood") == 0
    clock[0] += 4.0
    fair.finished("attribute", "flood", 4.0)  # ... a 4 s run: 4 s of rest before the next
    clock[0] += 3.9
    assert fair.admit("attribute", "flood") == pytest.approx(10)
    clock[0] += 10.5
    assert fair.admit("attribute", "flood") == 0
    fair.finished("attribute", "flood", 30.0)  # a 30 s run: resting past the window
    clock[0] += 12.0
    assert fair.admit("attribute", "flood") == pytest.approx(18.0)  # resting; no start left
    assert fair.admit("batch", "someone") == 0  # the books stay readable for everyone
    clock[0] += 18.5
    assert fair.admit("attribute", "flood") == 0
    capped = serving.Fairness(rest=0.5, max_rest_s=2.0)  # a long run rests 2 s, not 15
    assert capped.admit("attribute", "p") == 0
    capped.finished("attribute", "p", 30.0)
    assert capped.admit("attribute", "p") == pytest.approx(10)  # too early: refused ...
    clock[0] += 10.5
    assert capped.admit("attribute", "p") == 0  # ... and admitted once the wait is over
    off = serving.Fairness(runs=0)
    assert all(off.admit("attribute", "flood") == 0 for _ in range(10))


def test_stop_signal_removes_own_folders_before_interrupting(tmp_path, monkeypatch):
    own = tmp_path / "cxr-explorer-own"
    (own / "hash").mkdir(parents=True)
    (own / "hash" / "upload.dcm").write_bytes(b"DICM")
    monkeypatch.setattr(serving, "_OWN_FOLDERS", [str(own)])
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(own))
    with pytest.raises(KeyboardInterrupt):
        serving._stop(2, None)
    assert not own.exists()


def test_the_page_config_names_no_install_path():
    """plotly.js is served from a temp copy: /config does not show the virtualenv's path."""
    import json
    import sys

    from explorer.ui import build_demo

    config = json.dumps(build_demo().config, default=str)
    assert "plotly.min.js" in config
    assert sys.prefix not in config and "site-packages" not in config
