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


def _owned_map(megabytes: int):
    from types import SimpleNamespace

    import numpy as np

    rows = megabytes * 1024 * 1024 // (4 * 256)
    return SimpleNamespace(
        embeddings=np.zeros((rows, 256), np.float32),
        xy=np.zeros((rows, 2), np.float32),
        labels=np.zeros((rows, 14), np.int8),
        assignment=np.zeros(rows, np.int64),
        texts=("a report",) * rows,
    )


def test_one_persons_uploaded_map_is_not_pushed_out_by_others(tmp_path):
    """Four people open four tables: each keeps their own (the store used to keep three maps
    for everyone, so the first person's next call failed)."""
    maps = MapStore(capacity=3, budget_bytes=64 * 1024 * 1024)
    for person in ("p1", "p2", "p3", "p4"):
        maps.put(f"upload:{person}", _owned_map(4), None, owner=person)
    for named in ("iu:m1", "iu:m2", "iu:m3", "iu:m4"):  # shared maps come and go
        maps.put(named, f"map {named}", None)
    assert all(maps.get(f"upload:{p}") is not None for p in ("p1", "p2", "p3", "p4"))
    assert maps.get("iu:m1") is None and maps.get("iu:m4") == "map iu:m4"


def test_uploaded_maps_share_a_memory_budget_and_go_with_their_session(tmp_path):
    maps = MapStore(budget_bytes=20 * 1024 * 1024)
    folders = [tmp_path / f"t{k}" for k in range(3)]
    for k, folder in enumerate(folders):
        folder.mkdir()
        maps.put(f"upload:p{k}", _owned_map(8), str(folder), owner=f"p{k}")
    # 3 x ~9 MB is over 20 MB: the least recently used (p0) went, with its folder
    assert maps.get("upload:p0") is None and not folders[0].exists()
    assert maps.get("upload:p1") is not None and maps.get("upload:p2") is not None
    maps.drop("upload:p1")  # p1's page closed or its state expired
    assert maps.get("upload:p1") is None and not folders[1].exists()
    maps.drop("upload:never-there")  # nothing to do
    assert len(maps) == 1
