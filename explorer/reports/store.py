"""Process-wide caches of opened corpora and report maps (what the app keeps in memory).

:data:`MAPS` holds the few most recently opened maps (a map of an uploaded table lives in a
temporary folder, deleted when the map leaves the store); :func:`cached_corpus` loads each
corpus spec once per process.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from explorer.reports.corpus import Corpus, load_corpus

if TYPE_CHECKING:
    from explorer.reports.map import ReportMap

#: How many opened maps :data:`MAPS` keeps.
MAP_CAPACITY = 3


class MapStore:
    """Opened maps by key, least recently used dropped first (thread-safe).

    Args:
        capacity: How many maps to keep; when a map is dropped its temporary folder (if it
            was given one) is deleted.
    """

    def __init__(self, capacity: int = MAP_CAPACITY) -> None:
        self.capacity = capacity
        self._maps: OrderedDict[str, tuple[ReportMap, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> ReportMap | None:
        """The map stored under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            item = self._maps.get(key)
            if item is not None:
                self._maps.move_to_end(key)
                return item[0]
            return None

    def put(self, key: str, report_map: ReportMap, temp_dir: str | None) -> None:
        """Store ``report_map`` under ``key``; ``temp_dir`` is deleted when it is dropped."""
        with self._lock:
            self._maps[key] = (report_map, temp_dir)
            self._maps.move_to_end(key)
            while len(self._maps) > self.capacity:
                _, (_, tmp) = self._maps.popitem(last=False)
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._maps)


#: The maps this process has open.
MAPS = MapStore()

_corpus_lock = threading.Lock()
_corpora: dict[str, Corpus] = {}


def cached_corpus(spec: str) -> Corpus:
    """:func:`explorer.reports.corpus.load_corpus`, loaded once per spec in this process.

    Raises:
        CorpusError: As :func:`~explorer.reports.corpus.load_corpus`.
    """
    with _corpus_lock:
        if spec not in _corpora:
            _corpora[spec] = load_corpus(spec)
        return _corpora[spec]
