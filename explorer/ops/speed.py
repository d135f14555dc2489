"""Speed bench: the hot paths a user waits on, with targets and the peer side by side.

``python -m explorer bench [--model NAME ...] [--json]`` measures, in one run on one machine:

1. **Findings query** (14 CheXpert findings x affirmed/negated = 28 prompts, one template, a
   different decoded image each call, text embeddings cached): median and p95, against one bare
   forward of the image tower on an already-preprocessed tensor (the physical limit once the
   text side is cached). Target ratio <= 1.5.
2. **The peer**: transformers' ``pipeline("zero-shot-image-classification")`` on the same
   checkpoint with the same 28 prompts (one call per image; it re-encodes the prompts every
   call). Target: ours >= 3x faster. Agreement: the pipeline's softmax over 28 labels,
   renormalised within each (affirmed, negated) pair, is exactly the pairwise softmax; on images
   already at the model's input size (so neither side resizes) the two must agree within 1e-4.
3. **Attribution** per method (integrated gradients with its steps and internal batch,
   Grad-CAM, occlusion with its window and stride). Target IG <= 5 s on CPU.
4. **Corpus embedding** throughput, batched (the map's path) vs one report at a time, and their
   largest difference; **map build** of a corpus from scratch and **reopen** from its cache.
   Targets: IU build < 60 s on CPU, reopen < 2 s.
5. **Cold start** of ``app.py`` to the first page and to the first findings answer, and the
   app's **peak resident memory** with the default model and the IU map loaded.
6. **Hub models at full size** (``--hub``): each registered hub family rebuilt at its real
   size with random weights (:mod:`explorer.models.replicas`; timings do not depend on weight
   values) and loaded offline through the registry as on the Space: the first findings answer
   (load + first query), one Attribution click per method (both prompts' maps and both prompts'
   word weights, as the tab computes them), token-IG completeness, the IU map's text embedding
   (timed on a slice, extrapolated to the 3,955 reports) and the process's peak memory. Targets
   (issue 26, for BiomedCLIP): first answer < 5 s, a Grad-CAM click < 10 s, an occlusion or IG
   click < 30 s, the IU map's text < 150 s, completeness gap < 1 % on every family.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from explorer.paths import examples_dir


@dataclass(frozen=True)
class BenchRow:
    """One measured figure, its target (if any) and whether it was met."""

    section: str
    measure: str
    model: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class BenchReport:
    """All rows of one run and the machine they were measured on."""

    machine: str
    rows: tuple[BenchRow, ...] = field(default=())

    def as_dict(self) -> dict:
        return {"machine": self.machine, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        lines = [
            f"Machine: {self.machine}",
            "",
            "| section | measure | model | value | target | met | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            value = "n/a" if r.value is None else f"{_fmt(r.value)} {r.unit}".strip()
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(
                f"| {r.section} | {r.measure} | {r.model} | {value} | {r.target} | {met} "
                f"| {r.note} |"
            )
        return "\n".join(lines)


def _fmt(x: float) -> str:
    if x == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def machine() -> str:
    """CPU model, cores, torch version and the GPU if one is used."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}"
    )


def _seconds(fn: Callable, *args, **kwargs) -> float:
    """Wall time of one call of ``fn(*args, **kwargs)``."""
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def bench_images(count: int, size: int = 512) -> list[np.ndarray]:
    """Decoded test images: the shipped examples (real CXRs, a DICOM) then phantoms."""
    from explorer.imaging import load_image
    from explorer.phantom import render_phantom

    images = [
        load_image(p).pixels
        for p in sorted(examples_dir().iterdir())
        if p.suffix.lower() in (".png", ".dcm")
    ][:count]
    seed = 5_000_000
    while len(images) < count:
        images.append(render_phantom(seed, size=size).image.astype(np.float32))
        seed += 1
    return images


# --- 1. findings -----------------------------------------------------------------------------


def _pairs_texts() -> tuple[list[str], list[str]]:
    from explorer.vocab.labels import CHEXPERT_FINDINGS
    from explorer.vocab.prompts import prompt_pair

    pairs = [prompt_pair(f, "there_is") for f in CHEXPERT_FINDINGS]
    return [p.affirmed for p in pairs], [p.negated for p in pairs]


def bench_findings(model, images: Sequence[np.ndarray], repeats: int) -> list[BenchRow]:
    import torch

    from explorer.eval.metrics import p95
    from explorer.scoring import score_findings
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    def query(k: int):
        return score_findings(
            model, images[k % len(images)], CHEXPERT_FINDINGS, templates=["there_is"]
        )

    query(0)  # warms the text-embedding cache (once per model and prompt set)
    tensors = [model.preprocess(im) for im in images]
    times, bare = [], []
    with torch.inference_mode():
        model.encode_image(tensors[0])
    # Interleaved, so drift in the machine's speed hits both figures alike.
    for k in range(1, repeats + 1):
        times.append(_seconds(query, k))
        with torch.inference_mode():
            bare.append(_seconds(model.encode_image, tensors[k % len(tensors)]))
    med, bare_med = statistics.median(times), statistics.median(bare)
    ratio = med / bare_med
    return [
        BenchRow("findings", "query median (28 prompts)", model.name, med * 1e3, "ms"),
        BenchRow("findings", "query p95", model.name, p95(times) * 1e3, "ms"),
        BenchRow("findings", "bare image forward median", model.name, bare_med * 1e3, "ms"),
        BenchRow(
            "findings",
            "query / bare forward",
            model.name,
            ratio,
            "x",
            "<= 1.5",
            ratio <= 1.5,
            f"{repeats} calls, a new image each",
        ),
    ]


# --- 2. the peer -------------------------------------------------------------------------------


def _pipeline(model):
    import torch
    from transformers import pipeline

    from explorer.models.registry import local_path

    if model.spec.backend != "transformers":
        return None, "the pipeline cannot load an open_clip checkpoint"
    source = model.spec.source
    path = local_path(source)
    device = 0 if model.device.type == "cuda" else -1
    pipe = pipeline(
        "zero-shot-image-classification",
        model=str(path) if path is not None else source,
        device=device,
        dtype=torch.float32,
    )
    return pipe, ""


def _to_pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)).convert("RGB")


def _pipeline_pairwise(pipe, image, affirmed: list[str], negated: list[str]) -> np.ndarray:
    out = pipe(image, candidate_labels=affirmed + negated, hypothesis_template="{}")
    score = {o["label"]: o["score"] for o in out}
    return np.array(
        [score[a] / (score[a] + score[n]) for a, n in zip(affirmed, negated, strict=True)]
    )


def bench_peer(model, images: Sequence[np.ndarray], repeats: int, ours_median: float):
    from explorer.scoring import score_findings
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    pipe, why = _pipeline(model)
    if pipe is None:
        return [BenchRow("peer", "zero-shot pipeline", model.name, None, "", note=why)]
    affirmed, negated = _pairs_texts()
    pil = [_to_pil(im) for im in images]
    _pipeline_pairwise(pipe, pil[0], affirmed, negated)
    times = [
        _seconds(_pipeline_pairwise, pipe, pil[k % len(pil)], affirmed, negated)
        for k in range(1, repeats + 1)
    ]
    # Agreement where the computation is the same: images already at the model's input size.
    size = model.spec.preprocess.image_size
    diffs = []
    for im in images[: min(5, len(images))]:
        small = np.asarray(_to_pil(im).convert("L").resize((size, size)), dtype=np.float32) / 255
        theirs = _pipeline_pairwise(pipe, _to_pil(small), affirmed, negated)
        ours = score_findings(model, small, CHEXPERT_FINDINGS, templates=["there_is"])
        mine = np.array([s.prob_affirmed for s in ours.scores])
        diffs.append(float(np.abs(mine - theirs).max()))
    med = statistics.median(times)
    speedup = med / ours_median
    return [
        BenchRow("peer", "pipeline median (28 prompts)", model.name, med * 1e3, "ms"),
        BenchRow("peer", "pipeline / ours", model.name, speedup, "x", ">= 3", speedup >= 3.0),
        BenchRow(
            "peer",
            "max |P ours - P pipeline|",
            model.name,
            max(diffs),
            "",
            "<= 1e-4",
            max(diffs) <= 1e-4,
            f"{len(diffs)} images at {size} px",
        ),
    ]


# --- 3. attribution ----------------------------------------------------------------------------


def bench_attribution(model, image: np.ndarray, repeats: int, ig_steps: int | None = None):
    from explorer.attribution import DEFAULT_STEPS, attribute_image

    steps = ig_steps or DEFAULT_STEPS
    prompt = "there is pleural effusion"
    rows = []
    for method, kwargs, target in (
        ("ig", {"steps": steps}, 5.0),
        ("gradcam", {}, None),
        ("occlusion", {}, None),
    ):
        warm = attribute_image(model, image, prompt, method, **kwargs)
        times = [
            _seconds(attribute_image, model, image, prompt, method, **kwargs)
            for _ in range(repeats)
        ]
        med = statistics.median(times)
        params = ", ".join(f"{k}={v}" for k, v in warm.params.items())
        rows.append(
            BenchRow(
                "attribution",
                f"{method} median",
                model.name,
                med,
                "s",
                f"<= {target:g} s" if target else "",
                (med <= target) if target else None,
                params,
            )
        )
    return rows


# --- 4. corpus embedding and maps ----------------------------------------------------------------


def bench_embedding(model, texts: Sequence[str], single: int) -> list[BenchRow]:
    import torch

    from explorer.reports.map import embed_corpus

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        batched = embed_corpus(model, texts, Path(tmp))
        batched_s = time.perf_counter() - t0
    some = list(texts[:single])
    t0 = time.perf_counter()
    with torch.inference_mode():
        one = np.stack([model.embed_texts([t]).float().cpu().numpy()[0] for t in some])
    single_s = time.perf_counter() - t0
    diff = float(np.abs(one - batched[: len(some)]).max())
    return [
        BenchRow(
            "embedding",
            "batched",
            model.name,
            len(texts) / batched_s,
            "reports/s",
            note=f"{len(texts):,} reports",
        ),
        BenchRow(
            "embedding",
            "one at a time",
            model.name,
            len(some) / single_s,
            "reports/s",
            note=f"{len(some):,} reports",
        ),
        BenchRow(
            "embedding",
            "max |batched - single|",
            model.name,
            diff,
            "",
            "<= 1e-4",
            diff <= 1e-4,
        ),
    ]


def bench_map(model, spec: str, target_s: float | None) -> list[BenchRow]:
    from explorer.reports.corpus import load_corpus
    from explorer.reports.map import build_map, find_map

    corpus = load_corpus(spec)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        built = build_map(corpus, model, root=Path(tmp))
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = find_map(corpus, model, root=Path(tmp))
        reopen_s = time.perf_counter() - t0
        assert again is not None and len(again) == len(built)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in built.timings.items())
    return [
        BenchRow(
            "map",
            f"build {corpus.name} ({len(corpus):,} reports)",
            model.name,
            build_s,
            "s",
            f"< {target_s:g} s" if target_s else "",
            (build_s < target_s) if target_s else None,
            stages,
        ),
        BenchRow(
            "map",
            f"reopen {corpus.name} from cache",
            model.name,
            reopen_s,
            "s",
            "< 2 s",
            reopen_s < 2.0,
        ),
    ]


# --- 5. the app -----------------------------------------------------------------------------------


def bench_app(image: Path | None = None, with_map: bool = True):
    from gradio_client import Client, handle_file

    from explorer.models import default_registry
    from explorer.ops.load import AppProcess, findings_args

    model = default_registry().default
    with AppProcess() as app:
        client = Client(app.url, verbose=False, download_files=False)
        first = app.ready_s + _seconds(
            client.predict, *findings_args(image, model), api_name="/findings"
        )
        if with_map:
            client.predict(
                "IU / Open-i reports (3,955 real reports)",
                None,
                "",
                model,
                "cluster",
                api_name="/map_open",
            )
            client.predict(handle_file(str(image)), "cluster", 5, api_name="/map_place")
        health = client.predict(api_name="/health")
    loaded = "default model and IU map" if with_map else "default model"
    return [
        BenchRow("app", "cold start to first page", model, app.ready_s, "s"),
        BenchRow("app", "cold start to first findings answer", model, first, "s"),
        BenchRow("app", f"peak resident memory ({loaded})", model, health["peak_rss_mb"], "MB"),
    ]


# --- the run ------------------------------------------------------------------------------------


# --- 6. hub models at full size -------------------------------------------------------------

#: Targets of the hub section for BiomedCLIP (the Space's opening model): measure -> seconds.
HUB_TARGETS = {
    "first findings answer": 5.0,
    "Attribution click, gradcam": 10.0,
    "Attribution click, occlusion": 30.0,
    "Attribution click, ig": 30.0,
    "IU map text embedding": 150.0,
}
#: Largest token-IG completeness gap accepted on any family.
COMPLETENESS_TARGET = 0.01


def attribution_click(model, image: np.ndarray, finding: str, method: str) -> float:
    """Seconds of what one Attribution click computes: both prompts' maps and word weights,
    within the model's budget on this device (:mod:`explorer.attribution.budget`, measured on
    the first click and included in its time)."""
    from explorer.attribution import attribute_pair, attribute_text
    from explorer.attribution.budget import attribution_budget
    from explorer.attribution.options import TEXT_METHOD_OF
    from explorer.vocab.prompts import prompt_pair

    pair = prompt_pair(finding, "there_is")
    text_method = TEXT_METHOD_OF.get(method, "layer_ig")
    t0 = time.perf_counter()
    budget = attribution_budget(model)
    attribute_pair(
        model, image, pair.affirmed, pair.negated, method, **budget.image_options(method)
    )
    for text in (pair.affirmed, pair.negated):
        attribute_text(model, image, text, method=text_method, **budget.text_options(text_method))
    return time.perf_counter() - t0


def _peak_gb() -> float:
    """This process's peak resident memory in GB (the health report's reading)."""
    from explorer.ui.serving import memory_mb

    return memory_mb()["peak_rss_mb"] / 1024


def bench_hub(
    families: Sequence[str] | None = None,
    size: str = "full",
    methods: Sequence[str] = ("gradcam", "occlusion", "ig", "attention"),
    map_sample: int = 256,
    say: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """The hub section (see the module docstring) for ``families`` (default: every one)."""
    from explorer.attribution import attribute_text
    from explorer.models import ModelRegistry
    from explorer.models.replicas import FAMILIES, offline_hub, replica_specs, write_hub_cache
    from explorer.reports.corpus import iu_corpus
    from explorer.scoring import score_findings

    say = say or (lambda msg: None)
    image = bench_images(1)[0]
    reports = list(iu_corpus().texts)
    # The replicas' BERT vocabulary gets the reports' words, so that reports take about as many
    # tokens as with BiomedBERT's own vocabulary (with the replica's few hundred words they
    # would be spelt out in pieces: twice the tokens at the median, 3x at the 99th percentile).
    words = sorted({w for t in reports for w in re.findall(r"[a-z]+", t.lower())})
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as cache:
        for name in families or tuple(FAMILIES):
            say(f"{name}: building the {size} replica")
            write_hub_cache(Path(cache), models=[name], size=size, words=words)
            with offline_hub(Path(cache)):
                reg = ModelRegistry(replica_specs(size, [name]), max_loaded=1)
                t0 = time.perf_counter()
                model = reg.load(name, "cpu")
                score_findings(model, image)
                first = time.perf_counter() - t0

            def row(
                measure: str, value: float, unit: str = "s", note: str = "", name: str = name
            ) -> BenchRow:
                target = HUB_TARGETS.get(measure) if name == "biomedclip" else None
                return BenchRow(
                    f"hub ({size} size)",
                    measure,
                    name,
                    value,
                    unit,
                    f"< {target:g} s" if target else "",
                    (value < target) if target else None,
                    note,
                )

            rows.append(row("first findings answer", first, note="load + first query"))
            rows.append(row("findings answer, warm", _seconds(score_findings, model, image)))
            for method in methods:
                say(f"{name}: Attribution click, {method}")
                rows.append(
                    row(
                        f"Attribution click, {method}",
                        attribution_click(model, image, "Pleural Effusion", method),
                    )
                )
            from explorer.attribution.budget import attribution_budget

            b = attribution_budget(model)
            rows.append(
                row(
                    "attribution budget",
                    b.image_pass_s,
                    note=(
                        f"one image pass (the value); IG {b.ig_steps} points x {b.ig_batch} per "
                        f"pass, occlusion stride {b.occlusion_stride}, token IG {b.token_steps} "
                        "points"
                    ),
                )
            )
            words = attribute_text(model, image, "there is a small left pleural effusion")
            gap = float(words.relative_delta)
            rows.append(
                BenchRow(
                    f"hub ({size} size)",
                    "token IG completeness gap",
                    name,
                    100 * gap,
                    "%",
                    f"< {100 * COMPLETENESS_TARGET:g} %",
                    gap < COMPLETENESS_TARGET,
                )
            )
            say(f"{name}: IU map text ({map_sample} reports)")
            from explorer.reports.map import BATCH
            from explorer.scoring import embed_texts_once

            # every k-th report (their lengths as in the corpus), the map's own batches
            sample = reports[:: max(1, len(reports) // map_sample)][:map_sample]
            part = _seconds(embed_texts_once, model, sample, BATCH, by_length=True)
            rows.append(
                row(
                    "IU map text embedding",
                    part * len(reports) / map_sample,
                    note=f"{len(sample)} reports (every {len(reports) // len(sample)}th) in "
                    f"{part:.1f} s, as the map embeds them, extrapolated to {len(reports):,}",
                )
            )
            rows.append(row("peak memory so far", _peak_gb(), "GB", "the process's maximum RSS"))
            del model, reg
    return rows


def run_bench(
    models: Sequence[str] | None = None,
    images: int = 20,
    repeats: int = 30,
    attribution_repeats: int = 3,
    ig_steps: int | None = None,
    embed_reports: int | None = None,
    single_reports: int = 200,
    map_corpora: Sequence[str] = ("iu",),
    app: bool = True,
    say: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run every section for each model (default: the embedded default) and return the rows.

    Args:
        models: Registered model names.
        images: Distinct decoded images cycled through by the latency sections.
        repeats: Timed calls per latency figure.
        attribution_repeats: Timed calls per attribution method.
        ig_steps: IG integration points (default: the app's).
        embed_reports: IU reports embedded for throughput (default: all 3,955).
        single_reports: Reports embedded one at a time (and compared with the batched ones).
        map_corpora: Corpus specs whose map is built from scratch (``iu``, ``phantom:N``, ...).
        app: Also measure the app's cold start and memory (starts ``app.py``).
        say: Progress callback.
    """
    from explorer.models import default_registry
    from explorer.reports.corpus import iu_corpus

    say = say or (lambda msg: None)
    reg = default_registry()
    names = list(models or [reg.default])
    pics = bench_images(images)
    rows: list[BenchRow] = []
    texts = list(iu_corpus().texts)
    texts = texts[:embed_reports] if embed_reports else texts
    for name in names:
        model = reg.load(name)
        say(f"{name}: findings")
        found = bench_findings(model, pics, repeats)
        rows += found
        say(f"{name}: zero-shot pipeline")
        rows += bench_peer(model, pics, max(5, repeats // 3), found[0].value / 1e3)
        say(f"{name}: attribution")
        rows += bench_attribution(model, pics[0], attribution_repeats, ig_steps)
        say(f"{name}: corpus embedding")
        rows += bench_embedding(model, texts, single_reports)
        for spec in map_corpora:
            say(f"{name}: map {spec}")
            rows += bench_map(model, spec, 60.0 if spec == "iu" else None)
    if app:
        say("app: cold start and memory")
        rows += bench_app(with_map="iu" in map_corpora)
    return BenchReport(machine(), tuple(rows))
