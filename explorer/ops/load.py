"""Load test of the served app: many clients at once on the findings endpoint.

``python -m explorer load`` starts ``app.py`` in a child process (or targets ``--url``), warms it
up, then runs ``clients`` threads, each with its own ``gradio_client.Client`` sending
``requests`` findings requests one after another. It checks, from the client side, that every
request came back with a full table (none lost, none failed), and from the server's ``/health``
endpoint that the findings event never ran more requests at once than its queue limit and that
resident memory after the run is within ``max_rss_growth`` of memory after warm-up.

:class:`AppProcess` (the app in a child process, its output captured to a file) is shared with
the privacy tests and the speed bench (cold start).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from explorer.eval.metrics import p95
from explorer.paths import examples_dir, project_root

ROOT = project_root()


def default_image() -> Path:
    """The real sample radiograph the load test sends (a shipped example)."""
    return examples_dir() / "00000001_000.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``python app.py`` in a child process on a free port; output goes to ``log_path``.

    Use as a context manager; ``url`` is set and ``ready_s`` (seconds from spawn to the first
    page served) measured on entry. Stopped with SIGINT so the app cleans up as on Ctrl-C.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, **(env or {}), "GRADIO_SERVER_PORT": str(self.port)}
        self.env.setdefault("GRADIO_SERVER_NAME", "127.0.0.1")
        self.env.setdefault("EXPLORER_HEALTH_DETAIL", "1")  # the operator's view: counters too
        self._own_log = log_path is None  # a log folder we create, we remove on exit
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="cxr-app-log-")) / "app.log"
        self.timeout_s = timeout_s
        self.ready_s: float | None = None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> AppProcess:
        self._log = self.log_path.open("wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        while time.perf_counter() - t0 < self.timeout_s:
            if self.proc.poll() is not None:
                text = self.log()
                self.__exit__(None, None, None)
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{text}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    if resp.status == 200:
                        self.ready_s = time.perf_counter() - t0
                        return self
            except OSError:
                time.sleep(0.25)
        text = self.log()
        self.__exit__(None, None, None)
        raise RuntimeError(f"the app did not serve within {self.timeout_s:.0f} s:\n{text}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._own_log:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def log(self) -> str:
        """Everything the app printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _measures_table(rows: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of (measure, value) rows, as the load and flood reports print them."""
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured, and whether it passed."""

    clients: int
    requests_each: int
    sent: int
    completed: int
    failed: int
    errors: tuple[str, ...]
    wall_s: float
    median_s: float
    p95_s: float
    max_s: float
    throughput_per_s: float
    rss_after_warmup_mb: float
    rss_after_run_mb: float
    peak_in_flight: int
    concurrency_limit: int
    max_rss_growth: float

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the run failed (empty when it passed)."""
        out = []
        if self.failed:
            out.append(f"{self.failed} requests failed")
        lost = self.sent - self.completed - self.failed
        if lost:
            out.append(f"{lost} requests lost")
        if self.peak_in_flight > self.concurrency_limit:
            out.append(
                f"{self.peak_in_flight} findings requests ran at once "
                f"(limit {self.concurrency_limit})"
            )
        if self.rss_growth > self.max_rss_growth:
            out.append(
                f"resident memory grew {self.rss_growth:.1%} (allowed {self.max_rss_growth:.0%})"
            )
        return tuple(out)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def rss_growth(self) -> float:
        return self.rss_after_run_mb / self.rss_after_warmup_mb - 1.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "rss_growth": self.rss_growth,
            "problems": list(self.problems),
            "passed": self.passed,
        }

    def to_markdown(self) -> str:
        rows = [
            ("clients x requests", f"{self.clients} x {self.requests_each}"),
            ("sent / completed / failed", f"{self.sent} / {self.completed} / {self.failed}"),
            ("wall time", f"{self.wall_s:.1f} s"),
            (
                "latency median / p95 / max",
                f"{self.median_s:.2f} / {self.p95_s:.2f} / {self.max_s:.2f} s",
            ),
            ("throughput", f"{self.throughput_per_s:.2f} requests/s"),
            ("peak in flight (limit)", f"{self.peak_in_flight} ({self.concurrency_limit})"),
            (
                "RSS after warm-up / after run",
                f"{self.rss_after_warmup_mb:.0f} / "
                f"{self.rss_after_run_mb:.0f} MB ({self.rss_growth:+.1%})",
            ),
            ("verdict", "pass" if self.passed else "FAIL: " + "; ".join(self.problems)),
        ]
        return _measures_table(rows)


def findings_args(image: Path, model: str | None = None) -> tuple:
    """Arguments of ``/findings`` for ``image``: every prompt template, no extra findings."""
    from gradio_client import handle_file

    from explorer.vocab.prompts import prompt_templates

    if not model:
        from explorer.models import default_registry

        model = default_registry().default
    templates = [t.id for t in prompt_templates()]
    return (handle_file(str(image)), model, "", "", templates, "")


def _health(client) -> dict:
    return client.predict(api_name="/health")


def run_load(
    url: str,
    clients: int = 20,
    requests: int = 10,
    image: Path | None = None,
    model: str | None = None,
    warmup: int = 3,
    max_rss_growth: float = 0.10,
) -> LoadResult:
    """Hit ``/findings`` of the app at ``url`` with ``clients`` x ``requests`` requests."""
    image = default_image() if image is None else image
    from gradio_client import Client

    download = Path(tempfile.mkdtemp(prefix="cxr-load-"))
    probe = Client(url, verbose=False, download_files=str(download))
    args = findings_args(image, model)
    for _ in range(warmup):
        probe.predict(*args, api_name="/findings")
    before = _health(probe)

    latencies: list[float] = []
    errors: list[str] = []
    completed = 0
    lock = threading.Lock()

    def one_client() -> None:
        nonlocal completed
        try:
            client = Client(url, verbose=False, download_files=str(download))
        except Exception as exc:  # a client that cannot connect is a lost batch of requests
            with lock:
                errors.append(f"connect: {exc}")
            return
        for _ in range(requests):
            t0 = time.perf_counter()
            try:
                out = client.predict(*args, api_name="/findings")
                table = out[1]["data"] if isinstance(out[1], dict) else out[1]
                if len(table) != 14:
                    raise ValueError(f"expected 14 findings rows, got {len(table)}")
            except Exception as exc:
                with lock:
                    errors.append(str(exc)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                completed += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = _health(probe)
    # The gauge keeps the highest count since the server started, warm-up included.
    peak = int(after["endpoints"].get("findings", {}).get("peak_in_flight", 0))
    limit = int(after["concurrency_limits"]["findings"])
    sent = clients * requests
    lat = latencies or [float("nan")]
    result = LoadResult(
        clients=clients,
        requests_each=requests,
        sent=sent,
        completed=completed,
        failed=len(errors),
        errors=tuple(sorted(set(errors)))[:10],
        wall_s=wall,
        median_s=statistics.median(lat),
        p95_s=p95(lat),
        max_s=max(lat),
        throughput_per_s=completed / wall if wall else 0.0,
        rss_after_warmup_mb=float(before["rss_mb"]),
        rss_after_run_mb=float(after["rss_mb"]),
        peak_in_flight=peak,
        concurrency_limit=limit,
        max_rss_growth=max_rss_growth,
    )
    shutil.rmtree(download, ignore_errors=True)
    return result


# --- one client floods, another works -----------------------------------------------------------


@dataclass(frozen=True)
class FloodResult:
    """Attribution latencies of a normal client, alone and while another client floods."""

    method: str
    unloaded_s: tuple[float, ...]
    loaded_s: tuple[float, ...]
    flood_sent: int
    flood_refused: int
    flood_ran: int
    max_ratio: float = 3.0

    @property
    def ratio(self) -> float:
        """p95 under the flood over the median alone (the person's usual wait)."""
        return p95(list(self.loaded_s)) / statistics.median(self.unloaded_s)

    @property
    def passed(self) -> bool:
        return self.ratio < self.max_ratio

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}

    def to_markdown(self) -> str:
        rows = [
            ("method", self.method),
            (
                "alone: median / p95",
                f"{statistics.median(self.unloaded_s):.2f} / {p95(list(self.unloaded_s)):.2f} s",
            ),
            (
                "during the flood: median / p95 / max",
                f"{statistics.median(self.loaded_s):.2f} / {p95(list(self.loaded_s)):.2f} / "
                f"{max(self.loaded_s):.2f} s",
            ),
            ("p95 flooded / median alone", f"{self.ratio:.2f} (target < {self.max_ratio:g})"),
            (
                "flood sent / ran / refused",
                f"{self.flood_sent} / {self.flood_ran} / {self.flood_refused}",
            ),
        ]
        return _measures_table(rows)


def attribution_args(image: Path, method: str, finding: str = "Pleural Effusion") -> tuple:
    """Arguments of ``/attribute`` for ``image`` with the default model."""
    from gradio_client import handle_file

    return (handle_file(str(image)), None, finding, method, 0.6, False, None)


def run_flood(
    url: str,
    method: str = "occlusion",
    normal_calls: int = 6,
    pace_s: float = 5.0,
    wave: int = 60,
    wave_every_s: float = 10.0,
    image: Path | None = None,
) -> FloodResult:
    """A normal client asks for an attribution ``pace_s`` seconds after the last one appeared
    (a person looking at each map), first alone, then while a second client queues ``wave``
    attributions at once, and another ``wave`` every ``wave_every_s`` seconds once the last one
    was answered (a fixed rate: a faster server must not draw a heavier flood)."""
    from gradio_client import Client

    image = default_image() if image is None else image
    download = Path(tempfile.mkdtemp(prefix="cxr-flood-"))
    args = attribution_args(image, method)

    def paced(client) -> list[float]:
        out = []
        for _ in range(normal_calls):
            t0 = time.perf_counter()
            client.predict(*args, api_name="/attribute")
            took = time.perf_counter() - t0
            out.append(took)
            time.sleep(pace_s)
        return out

    person = Client(url, verbose=False, download_files=str(download))
    t0 = time.perf_counter()
    person.predict(*args, api_name="/attribute")  # warm-up: model loaded, caches filled
    time.sleep(max(pace_s, time.perf_counter() - t0))  # (a long first run earns a long rest)
    alone = paced(person)

    flooder = Client(url, verbose=False, download_files=str(download))
    stop = threading.Event()
    jobs: list = []

    def flood() -> None:
        last = -wave_every_s
        while not stop.is_set():
            if all(j.done() for j in jobs) and time.perf_counter() - last >= wave_every_s:
                last = time.perf_counter()
                jobs.extend(flooder.submit(*args, api_name="/attribute") for _ in range(wave))
            time.sleep(0.1)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    time.sleep(2.0)  # the backlog is in the queue before the person's next click
    try:
        during = paced(person)
    finally:
        stop.set()
        thread.join()
    ran = refused = 0
    for job in jobs:
        try:
            job.result(timeout=600)
            ran += 1
        except Exception:  # refused over its share (or cancelled at the end)
            refused += 1
    shutil.rmtree(download, ignore_errors=True)
    return FloodResult(method, tuple(alone), tuple(during), len(jobs), refused, ran)
