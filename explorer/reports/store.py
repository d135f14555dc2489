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

#: How many opened maps of named corpora :data:`MAPS` keeps (one per model, in practice).
MAP_CAPACITY = 3
#: Memory the maps of uploaded tables may take together (embeddings, layout, labels, texts).
OWNED_BUDGET_BYTES = 2 * 1024**3


def map_bytes(report_map: ReportMap) -> int:
    """Roughly the memory a map holds: its arrays and its texts."""
    arrays = (report_map.embeddings, report_map.xy, report_map.labels, report_map.assignment)
    return sum(a.nbytes for a in arrays) + sum(len(t) for t in report_map.texts)


class MapStore:
    """Opened maps by key (thread-safe).

    Shared maps (``owner`` None: a named corpus under a model) are kept ``capacity`` at most,
    least recently used dropped first. Owned maps (an uploaded table's, ``owner`` = the
    uploader's session) are never dropped to make room for someone else's shared map; they
    share ``budget_bytes``, and beyond it the least recently used owned map goes. When a map
    leaves the store its temporary folder (if it was given one) is deleted.
    """

    def __init__(
        self, capacity: int = MAP_CAPACITY, budget_bytes: int = OWNED_BUDGET_BYTES
    ) -> None:
        self.capacity = capacity
        self.budget_bytes = budget_bytes
        self._maps: OrderedDict[str, tuple[ReportMap, str | None]] = OrderedDict()
        self._owned: dict[str, int] = {}  # an owned map's key -> its bytes
        self._lock = threading.Lock()

    def get(self, key: str) -> ReportMap | None:
        """The map stored under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            item = self._maps.get(key)
            if item is not None:
                self._maps.move_to_end(key)
                return item[0]
            return None

    def put(
        self, key: str, report_map: ReportMap, temp_dir: str | None, owner: str | None = None
    ) -> None:
        """Store ``report_map`` under ``key`` (for ``owner``, or shared when None);
        ``temp_dir`` is deleted when it is dropped."""
        with self._lock:
            self._maps[key] = (report_map, temp_dir)
            self._maps.move_to_end(key)
            if owner is not None:
                self._owned[key] = map_bytes(report_map)
            shared = [k for k in self._maps if k not in self._owned]
            for old in shared[: max(0, len(shared) - self.capacity)]:
                self._drop(old)
            owned = [k for k in self._maps if k in self._owned]  # least recently used first
            while owned and sum(self._owned[k] for k in owned) > self.budget_bytes:
                self._drop(owned.pop(0))

    def drop(self, key: str | None) -> None:
        """Forget the map under ``key`` (its owner's session ended), deleting its folder."""
        with self._lock:
            if key in self._maps:
                self._drop(key)

    def _drop(self, key: str) -> None:
        _, tmp = self._maps.pop(key)
        self._owned.pop(key, None)
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
