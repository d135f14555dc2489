"""How the app is served: private files, prompt purge, queue limits, ZeroGPU and a health report.

Privacy. Gradio receives an upload as a file in its cache folder; that is the only copy on disk.
:func:`prepare_environment` (called by ``app.py`` before Gradio is imported) gives Gradio a
private folder (mode 0700, removed at exit) and turns analytics off. The Blocks ask Gradio to
delete every file it cached once it is older than ``upload_ttl_s`` (``delete_cache``). Files the
app hands back (CSV downloads, a drill-down image, the lesson handout) are written by
:func:`scratch_file` into a scratch folder inside that private folder and purged on the same
schedule by :func:`start_purger`. Handlers never log a file name, a DICOM tag or pixels.

Settings come from the environment (:meth:`ServeSettings.from_env`):

========================== ======================================================= ===========
variable                   meaning                                                 default
========================== ======================================================= ===========
``EXPLORER_DEFAULT_MODEL`` model the app opens with (e.g. ``biomedclip`` on the    embedded
                           Space); the embedded default, with a notice, if it
                           cannot load
``EXPLORER_UPLOAD_TTL``    seconds an upload or a download stays on the server     600
``EXPLORER_PURGE_EVERY``   seconds between purges                                  60
``EXPLORER_CONCURRENCY``   default queue concurrency limit of an event             2
``EXPLORER_MAX_UPLOAD_MB`` largest file a person may upload (MB; Gradio refuses    100
                           bigger ones before they reach the disk)
``EXPLORER_QUEUE_SIZE``    requests waiting at most, all events together (more    64
                           are refused with "queue full")
``EXPLORER_PER_CLIENT``    model-heavy runs one page (session) may start in 10 s   3
                           per event; more are refused at once, so one client's
                           flood cannot hold everyone's queue (0: no shares)
``EXPLORER_TORCH_THREADS`` threads torch computes with (0: the CPUs this process   0
                           may use: its affinity, capped by a container's CPU
                           quota, which ``os.cpu_count()`` ignores)
``EXPLORER_HEALTH_DETAIL`` ``1``: the health report adds per-endpoint counters     off
                           (operators, the load test); a public Space shows only
                           status, memory and loaded models
``GRADIO_SERVER_NAME``     interface to listen on                                  127.0.0.1
``GRADIO_SERVER_PORT``     port                                                    7860
``EXPLORER_LOG_LEVEL``     log level of ``app.py`` (no file names or tags are      WARNING
                           ever logged)
========================== ======================================================= ===========

ZeroGPU. :func:`endpoint` decorates model-heavy handlers with ``spaces.GPU`` when the
``spaces`` package is importable (Hugging Face Spaces), and is a no-op otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRATCH = "explorer-scratch"
#: Queue limits of the model-heavy events (requests of one event processed at once).
#: Attribution keeps one slot: a second one (tried) let a flood's refusals run beside every
#: map and slowed another person's runs more than the queue did.
CONCURRENCY = {"findings": 2, "attribute": 1}


@dataclass(frozen=True)
class ServeSettings:
    """Serving settings (see the module docstring for the environment variables)."""

    default_model: str | None = None
    upload_ttl_s: int = 600
    purge_every_s: int = 60
    concurrency: int = 2
    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_mb: int = 100
    queue_size: int = 64
    per_client: int = 3
    torch_threads: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env

        def number(key: str, default: int, low: int) -> int:
            raw = env.get(key, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{key} must be a whole number, got {raw!r}") from None
            if value < low:
                raise ValueError(f"{key} must be at least {low}, got {value}")
            return value

        return cls(
            default_model=env.get("EXPLORER_DEFAULT_MODEL", "").strip() or None,
            upload_ttl_s=number("EXPLORER_UPLOAD_TTL", cls.upload_ttl_s, 1),
            purge_every_s=number("EXPLORER_PURGE_EVERY", cls.purge_every_s, 1),
            concurrency=number("EXPLORER_CONCURRENCY", cls.concurrency, 1),
            host=env.get("GRADIO_SERVER_NAME", cls.host),
            port=number("GRADIO_SERVER_PORT", cls.port, 1),
            max_upload_mb=number("EXPLORER_MAX_UPLOAD_MB", cls.max_upload_mb, 1),
            queue_size=number("EXPLORER_QUEUE_SIZE", cls.queue_size, 1),
            per_client=number("EXPLORER_PER_CLIENT", cls.per_client, 0),
            torch_threads=number("EXPLORER_TORCH_THREADS", cls.torch_threads, 0),
        )

    @property
    def threads(self) -> int:
        """The torch thread count to serve with (:attr:`torch_threads`, or the machine's)."""
        return self.torch_threads or machine_cpus()

    @property
    def delete_cache(self) -> tuple[int, int]:
        """Gradio's ``(frequency, age)``: purge every ``purge_every_s``, files older than the TTL."""
        return (self.purge_every_s, self.upload_ttl_s)


#: Temp folders this process created (removed at exit, and at once on SIGINT / SIGTERM).
_OWN_FOLDERS: list[str] = []


def remove_own_folders() -> None:
    """Delete the private temp folders this process created, and the scratch files."""
    purge_scratch(0)
    for folder in _OWN_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def _stop(signum, frame) -> None:
    # Files first: a graceful shutdown can wait on open client connections and then be killed,
    # which would skip ``atexit``. Then the usual Ctrl-C path closes the server.
    remove_own_folders()
    raise KeyboardInterrupt


def prepare_environment() -> Path:
    """Before Gradio is imported: analytics off and a private temp folder.

    The folder (mode 0700) is removed at exit and, at once, on SIGINT or SIGTERM, so stopping
    the server leaves no upload behind even if its shutdown hangs and it is killed.
    """
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    with contextlib.suppress(ImportError):  # on ZeroGPU it must come before torch's CUDA init
        import spaces  # noqa: F401  # type: ignore[import-not-found]
    if not os.environ.get("GRADIO_TEMP_DIR"):
        folder = tempfile.mkdtemp(prefix="cxr-explorer-")  # created with mode 0700
        os.environ["GRADIO_TEMP_DIR"] = folder
        _OWN_FOLDERS.append(folder)
        atexit.register(remove_own_folders)
    return Path(os.environ["GRADIO_TEMP_DIR"])


def static_copy(path: Path) -> Path:
    """A copy of a file the page loads (plotly.js) in a folder of this process's own, removed
    at exit: the page's config then names a temp folder, not where the app is installed."""
    folder = Path(tempfile.mkdtemp(prefix="cxr-static-"))
    _OWN_FOLDERS.append(str(folder))  # removed on SIGINT / SIGTERM with the others
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = folder / path.name
    shutil.copyfile(path, target)
    return target


# --- scratch files ----------------------------------------------------------------------------


def scratch_root() -> Path:
    """Where the app writes files it hands back (inside Gradio's temp folder when set)."""
    base = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    return Path(base) / f"{SCRATCH}-{os.getuid() if hasattr(os, 'getuid') else 0}"


def scratch_dir() -> Path:
    """A new private folder under :func:`scratch_root` (purged with the rest)."""
    root = scratch_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def scratch_file(name: str, data: bytes | str) -> str:
    """Write ``data`` as ``name`` in a fresh scratch folder; return its path."""
    path = scratch_dir() / Path(name).name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return str(path)


def purge_scratch(age_s: float) -> int:
    """Delete scratch folders older than ``age_s`` seconds; return how many went."""
    root = scratch_root()
    if not root.is_dir():
        return 0
    now, gone = time.time(), 0
    for entry in root.iterdir():
        try:
            if now - entry.stat().st_mtime >= age_s:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                gone += 1
        except FileNotFoundError:
            continue
    return gone


def purge_upload_leftovers(age_s: float) -> int:
    """Delete Gradio's empty upload staging files (``tmp*``) older than ``age_s`` seconds.

    Gradio stages each upload in a ``tmp*`` file at the top of its temp folder and leaves it
    behind, empty, after moving the content into its cache. Only done in a private folder
    (no group or other access), so a shared ``/tmp`` is never touched.
    """
    folder = os.environ.get("GRADIO_TEMP_DIR")
    if not folder or not Path(folder).is_dir() or Path(folder).stat().st_mode & 0o077:
        return 0
    now, gone = time.time(), 0
    for entry in Path(folder).glob("tmp*"):
        try:
            st = entry.lstat()
            if entry.is_file() and st.st_size == 0 and now - st.st_mtime >= age_s:
                entry.unlink()
                gone += 1
        except FileNotFoundError:
            continue
    return gone


def start_purger(settings: ServeSettings) -> threading.Thread:
    """A daemon thread purging scratch files on Gradio's schedule; also purges at exit."""

    def loop() -> None:
        while True:
            time.sleep(settings.purge_every_s)
            purge_scratch(settings.upload_ttl_s)
            purge_upload_leftovers(settings.upload_ttl_s)

    atexit.register(purge_scratch, 0)
    thread = threading.Thread(target=loop, name="scratch-purge", daemon=True)
    thread.start()
    return thread


def machine_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container or a Space sees the host's cores in ``os.cpu_count()``, and torch would start a
    thread for each)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def launch(demo: Any, settings: ServeSettings, **kwargs: Any) -> Any:
    """Set torch's threads, queue (with the concurrency limit and a bounded size), start the
    scratch purge, limit each client's model-heavy runs and the upload size, and serve
    ``demo``."""
    import torch

    torch.set_num_threads(settings.threads)
    start_purger(settings)
    FAIR.runs = settings.per_client
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    return demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        max_file_size=settings.max_upload_mb * 1024 * 1024,
        **kwargs,
    )


def warm_up(settings: ServeSettings) -> threading.Thread:
    """In the background: load the opening model, embed the prompts, fit its domain reference.

    Started by ``app.py`` next to the server, so the first findings answer does not pay for
    loading weights, encoding 14 x 2 x templates prompts or the domain guard's reference.
    """
    import plotly.graph_objects  # noqa: F401 - imported here: two threads importing it deadlock

    def work() -> None:
        import numpy as np

        from explorer.guard import domain_reference
        from explorer.models import default_registry
        from explorer.plots import findings_figure
        from explorer.scoring import score_findings

        t0 = time.perf_counter()
        reg = default_registry()
        try:
            model, _ = reg.load_or_default(reg.preferred(settings.default_model)[0])
            result = score_findings(model, np.zeros((64, 64), dtype=np.float32))
            findings_figure(result).to_json()  # plotly builds its validators on first use
            result.to_frame().to_csv()
            domain_reference(model)  # the domain guard's reference (rendered once, then cached)
            logging.getLogger(__name__).info(
                "warmed up %s in %.1f s", model.name, time.perf_counter() - t0
            )
        except Exception:  # the first request retries and reports any error to the user
            logging.getLogger(__name__).exception("warming up the default model failed")

    thread = threading.Thread(target=work, name="warm-up", daemon=True)
    thread.start()
    return thread


# --- endpoints: gauge and ZeroGPU -------------------------------------------------------------


class Gauge:
    """Per-endpoint counters: calls, failures, requests in flight now and at most at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    def refused(self, name: str) -> None:
        with self._lock:
            self.refusals[name] += 1

    def enter(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
            self.in_flight[name] += 1
            self.peak[name] = max(self.peak[name], self.in_flight[name])

    def leave(self, name: str, ok: bool) -> None:
        with self._lock:
            self.in_flight[name] -= 1
            if not ok:
                self.failed[name] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                name: {
                    "calls": self.calls[name],
                    "failed": self.failed[name],
                    "in_flight": self.in_flight[name],
                    "peak_in_flight": self.peak[name],
                    "refused_over_share": self.refusals[name],
                }
                for name in sorted(set(self.calls) | set(self.refusals))
            }


GAUGE = Gauge()


class Fairness:
    """One client's (a page's session's) share of a model-heavy event.

    Gradio's queue is first come, first served: a client that queues 60 occlusion jobs makes
    everyone else wait behind all of them. Here each run is admitted when it starts, by two
    rules: at most ``runs`` starts in ``window_s`` seconds, and after a run of ``d`` seconds
    the same client waits ``min(rest * d, max_rest_s)`` before its next one (long enough for
    the runs it queued meanwhile to be refused, so the next person in the queue goes first).
    A client over its share is refused at once (an error toast saying how long to wait) and
    must then wait ``window_s`` from its last refused request, so its surplus jobs leave the
    queue in milliseconds and other people's runs go next. A person who looks at each map
    before the next click never meets these rules.
    """

    def __init__(
        self, runs: int = 3, window_s: float = 10.0, rest: float = 0.5, max_rest_s: float = 2.0
    ) -> None:
        self.runs = runs
        self.window_s = window_s
        self.rest = rest
        self.max_rest_s = max_rest_s
        self._starts: dict[tuple[str, str], list[float]] = {}
        self._free_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def admit(self, name: str, client: str | None) -> float:
        """0 if ``client`` may start a run of ``name`` now (counted), else seconds to wait."""
        if not client or self.runs <= 0:  # no session, or shares switched off
            return 0.0
        now = time.monotonic()
        key = (name, client)
        with self._lock:
            for old in [k for k, v in self._starts.items() if now - v[-1] >= self.window_s]:
                del self._starts[old]  # (lists are never stored empty)
            for old in [k for k, t in self._free_at.items() if t <= now]:
                del self._free_at[old]
            starts = [t for t in self._starts.get(key, []) if now - t < self.window_s]
            wait = self._free_at.get(key, now) - now
            if len(starts) >= self.runs:
                wait = max(wait, self.window_s - (now - starts[0]))
            if wait > 0:
                # Asking again before one's turn restarts the wait: a client that keeps
                # queueing runs (a flood) stays refused, at a few milliseconds a refusal.
                if starts:
                    self._starts[key] = starts
                else:
                    self._starts.pop(key, None)
                self._free_at[key] = max(self._free_at.get(key, now), now + self.window_s)
                return self._free_at[key] - now
            self._starts[key] = [*starts, now]
            return 0.0

    def finished(self, name: str, client: str | None, seconds: float) -> None:
        """A run of ``seconds`` ended: the client rests before its next one (see the class)."""
        if client:
            rest = min(self.rest * seconds, self.max_rest_s)
            with self._lock:
                self._free_at[(name, client)] = time.monotonic() + rest


FAIR = Fairness()


def _client_of(args: tuple, kwargs: dict) -> str | None:
    """The session hash of the ``gr.Request`` among a handler's arguments (None if absent)."""
    for value in (*args, *kwargs.values()):
        session = getattr(value, "session_hash", None)
        if isinstance(session, str) and session:
            return session
    return None


def _spaces_gpu(duration: int) -> Callable[[Callable], Callable]:
    try:
        import spaces  # type: ignore[import-not-found]  # only on Hugging Face Spaces
    except ImportError:
        spaces = None
    # (this repository's own ``spaces/`` folder imports as an empty namespace package)
    gpu = getattr(spaces, "GPU", None)
    return gpu(duration=duration) if gpu is not None else (lambda fn: fn)


#: Attribute an :func:`endpoint`-wrapped handler carries: the endpoint's name.
ENDPOINT_MARK = "__explorer_endpoint__"
#: Attribute an :func:`endpoint`-wrapped handler carries: its ZeroGPU grant in seconds (or None).
GPU_SECONDS_MARK = "__explorer_gpu_seconds__"


def endpoint(
    name: str, gpu_seconds: int | None = None, fair: bool = False
) -> Callable[[Callable], Callable]:
    """Count calls of a handler in :data:`GAUGE`; with ``gpu_seconds``, run it under ZeroGPU;
    with ``fair``, admit each run through :data:`FAIR` (the handler takes a ``gr.Request``).

    The wrapped handler carries :data:`ENDPOINT_MARK` (``name``) and :data:`GPU_SECONDS_MARK`
    (``gpu_seconds``), so a test can check which events of the built demo are wrapped.
    """

    def wrap(fn: Callable) -> Callable:
        inner = _spaces_gpu(gpu_seconds)(fn) if gpu_seconds else fn

        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            client = _client_of(args, kwargs) if fair else None
            wait = FAIR.admit(name, client)
            if wait:
                import gradio as gr  # (not at import: this module is loaded before gradio)

                GAUGE.refused(name)
                raise gr.Error(
                    "This page asked for runs faster than its share of the server (others "
                    f"may be waiting); please wait {max(1.0, wait):.0f} s before the next one.",
                    print_exception=False,
                )
            started = time.monotonic()
            GAUGE.enter(name)
            ok = False
            try:
                result = inner(*args, **kwargs)
                ok = True
                return result
            finally:
                GAUGE.leave(name, ok)
                FAIR.finished(name, client, time.monotonic() - started)

        setattr(counted, ENDPOINT_MARK, name)
        setattr(counted, GPU_SECONDS_MARK, gpu_seconds)
        return counted

    return wrap


# --- sessions whose page went away --------------------------------------------------------


class EndedSessions:
    """Sessions whose page was closed or reloaded (Gradio's ``unload``), for an hour.

    Long handlers check it at every progress step (:func:`explorer.ui.common.reporter`) and
    stop: a reload during a map build no longer leaves an orphaned job holding the queue.
    """

    def __init__(self, keep_s: float = 3600.0) -> None:
        self.keep_s = keep_s
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def end(self, session_hash: str | None) -> None:
        if not session_hash:
            return
        now = time.monotonic()
        with self._lock:
            self._ended = {k: t for k, t in self._ended.items() if now - t < self.keep_s}
            self._ended[session_hash] = now

    def ended(self, session_hash: str | None) -> bool:
        with self._lock:
            return bool(session_hash) and session_hash in self._ended


ENDED = EndedSessions()


# --- health -----------------------------------------------------------------------------------


def memory_mb() -> dict[str, float]:
    """Resident memory now and at peak of this process, in MB (Linux ``/proc``, else rusage)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        now = int(fields["VmRSS"].split()[0]) / 1024
        peak = int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        now = peak
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak, 1)}


def health(detail: bool | None = None) -> dict[str, Any]:
    """Status, memory and loaded models; with ``detail`` (default: ``EXPLORER_HEALTH_DETAIL=1``)
    also the per-endpoint counters and limits an operator or the load test needs (a public
    Space does not tell strangers how often each endpoint failed)."""
    from explorer.models import default_registry

    if detail is None:
        detail = os.environ.get("EXPLORER_HEALTH_DETAIL", "").strip() == "1"
    reg = default_registry()
    report: dict[str, Any] = {
        "status": "ok",
        **memory_mb(),
        "models_loaded": sorted({name for name, _ in reg.loaded()}),
    }
    if detail:
        report["endpoints"] = GAUGE.snapshot()
        report["concurrency_limits"] = dict(CONCURRENCY)
        report["runs_per_client"] = {"runs": FAIR.runs, "window_s": FAIR.window_s}
    return report
