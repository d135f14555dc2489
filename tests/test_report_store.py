"""The process-wide caches of opened report maps and corpora (explorer.reports.store)."""

from __future__ import annotations

import threading

from explorer.reports import store
from explorer.reports.store import MAP_CAPACITY, MapStore


def test_map_store_keeps_the_three_most_recently_used_and_deletes_dropped_folders(tmp_path):
    assert MAP_CAPACITY == 3 and store.MAPS.capacity == 3
    maps = MapStore()
    folders = {}
    for key in "abc":
        folders[key] = tmp_path / key
        folders[key].mkdir()
        maps.put(key, f"map {key}", str(folders[key]))
    assert maps.get("a") == "map a"  # now the most recently used: "b" goes first
    maps.put("d", "map d", None)
    assert len(maps) == 3 and maps.get("b") is None and not folders["b"].exists()
    assert maps.get("a") == "map a" and folders["a"].exists() and folders["c"].exists()
    maps.put("e", "map e", None)
    assert maps.get("c") is None and not folders["c"].exists()
    assert maps.get("missing") is None


def test_corpus_is_loaded_once_per_spec(monkeypatch):
    calls = []
    monkeypatch.setattr(store, "_corpora", {})
    monkeypatch.setattr(store, "load_corpus", lambda spec: calls.append(spec) or object())
    threads = [threading.Thread(target=store.cached_corpus, args=("phantom:5",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = store.cached_corpus("phantom:5")
    assert store.cached_corpus("phantom:5") is first and calls == ["phantom:5"]
    store.cached_corpus("phantom:6")
    assert calls == ["phantom:5", "phantom:6"]
