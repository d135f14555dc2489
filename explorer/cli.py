"""Command line: ``python -m explorer <command>``.

Each command is a small function registered with :func:`command`; later capabilities add
their own. Errors a person can act on print one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from explorer.errors import ExplorerError

EXIT_USER_ERROR = 2

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``handler(args) -> exit status`` as ``python -m explorer NAME``."""

    def wrap(handler: Handler) -> Handler:
        _COMMANDS[name] = (help, configure, handler)
        return handler

    return wrap


def _emit(data: object, as_json: bool, text: str) -> None:
    sys.stdout.write((json.dumps(data, indent=2) if as_json else text) + "\n")


# --- inspect ----------------------------------------------------------------------------------


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a chest X-ray: PNG, JPEG or DICOM")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("inspect", "safe metadata and pixel statistics of an image", _inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    from explorer.imaging import describe, load_image

    info = describe(load_image(args.file))
    width = max(len(k) for k in info)
    lines = [f"{k.ljust(width)}  {_fmt(v)}" for k, v in info.items()]
    _emit(info, args.json, "\n".join(lines))
    return 0


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return "  ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


# --- models -----------------------------------------------------------------------------------


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-hub-check", action="store_true", help="do not probe the Hugging Face hub")


@command("models", "registered models, their backend, and whether each can load here", _models_args)
def _models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from explorer.models import default_registry

    reg = default_registry()
    rows = [reg.status(n, check_hub=not args.no_hub_check) for n in reg.names()]
    data = {"default": reg.default, "models": [asdict(r) for r in rows]}
    name_w = max(len(r.name) for r in rows)
    lines = [f"{'model'.ljust(name_w)}  {'backend':<12}  {'loads here':<10}  why"]
    for r in rows:
        mark = "yes" if r.available else "no"
        star = " (default)" if r.name == reg.default else ""
        lines.append(f"{r.name.ljust(name_w)}  {r.backend:<12}  {mark:<10}  {r.reason}{star}")
    _emit(data, args.json, "\n".join(lines))
    return 0


# --- score ----------------------------------------------------------------------------------


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a chest X-ray: PNG, JPEG or DICOM")
    p.add_argument("--model", default=None, help="registered model (default: the embedded default)")
    p.add_argument(
        "--finding", action="append", default=[], help="extra free-text finding (repeatable)"
    )
    p.add_argument(
        "--template", action="append", default=None, help="prompt template id (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "score",
    "affirmed vs negated prompts for the 14 findings (and any extra), and the domain check",
    _score_args,
)
def _score(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from explorer.guard import encode_with_features, typicality
    from explorer.imaging import load_radiograph
    from explorer.models import load_model
    from explorer.scoring import score_findings
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    pixels = load_radiograph(args.image).pixels
    model = load_model(args.model)
    # One forward pass: the embedding scored and the domain guard's features.
    features, embedding = encode_with_features(model, pixels)
    result = score_findings(
        model,
        pixels,
        CHEXPERT_FINDINGS,
        custom=args.finding,
        templates=args.template,
        image_embedding=embedding,
    )
    domain = typicality(model, features=features)
    frame = result.to_frame()[
        ["finding", "P(affirmed)", "sim affirmed", "sim negated", "negation-blind"]
    ]
    text = f"model: {result.model}\n" + frame.to_string(index=False)
    text += f"\n{'WARNING: ' if domain.outside else ''}domain: {domain.sentence}"
    _emit({**asdict(result), "domain": domain.to_dict()}, args.json, text)
    return 0


# --- attribute ------------------------------------------------------------------------------


def _attribute_args(p: argparse.ArgumentParser) -> None:
    # The registry module is torch-free: building the parser stays cheap.
    from explorer.attribution.options import BASELINES, IMAGE_METHODS

    p.add_argument("image", help="a chest X-ray: PNG, JPEG or DICOM")
    p.add_argument(
        "--prompt", required=True, help='the text to explain, e.g. "there is pleural effusion"'
    )
    p.add_argument("--method", choices=IMAGE_METHODS, default="ig")
    p.add_argument("--model", default=None, help="registered model (default: the embedded default)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="what IG integrates from / occlusion paints (default: black)",
    )
    p.add_argument(
        "--window", type=int, default=None, help="occlusion window in model pixels (default S/8)"
    )
    p.add_argument(
        "--stride", type=int, default=None, help="occlusion stride in model pixels (default S/16)"
    )
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="attention rollout: how many of the last attention layers (default all)",
    )
    p.add_argument("--opacity", type=float, default=0.6)
    p.add_argument("--out", required=True, help="PNG file for the overlay")
    p.add_argument("--json", action="store_true", help="print the result's numbers as JSON")


@command(
    "attribute",
    "which pixels drive an image-text similarity (saves an overlay PNG)",
    _attribute_args,
)
def _attribute(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from PIL import Image

    from explorer.attribution import (
        AttributionOptionsError,
        attribute_image,
        attribute_text,
        method_info,
    )
    from explorer.attribution.image import why_no_image_map
    from explorer.attribution.options import TEXT_METHOD_OF
    from explorer.imaging import load_radiograph
    from explorer.models import load_model
    from explorer.plots import overlay

    pixels = load_radiograph(args.image).pixels
    model = load_model(args.model)
    takes = {f.name for f in fields(method_info(args.method).options)}  # the method's options
    given = {"steps": args.steps, "baseline": args.baseline}
    given |= {"window": args.window, "stride": args.stride, "layers": args.layers}
    unused = [
        f"--{k}" for k, v in given.items() if k != "steps" and v is not None and k not in takes
    ]
    if unused:
        raise ExplorerError(f"{', '.join(unused)} does not apply to --method {args.method}")
    options = {k: v for k, v in given.items() if k in takes}
    text_method = TEXT_METHOD_OF.get(args.method)
    info: dict = {"model": model.name, "method": args.method, "prompt": args.prompt}
    try:
        if text_method is not None:  # the words' own attention, whether or not the image has one
            words = attribute_text(model, pixels, args.prompt, method=text_method)
            info["similarity"] = words.score
            info["words"] = [[w, round(v, 6)] for w, v in words.words()]
            info["text_params"] = _plain(words.params)
        why = why_no_image_map(model, args.method)
        if why is not None:  # no image attention: the words stand
            info |= {"image_map": None, "why": why}
            _emit(info, args.json, "\n".join(f"{k}: {v}" for k, v in info.items()))
            return 0
        attr = attribute_image(model, pixels, args.prompt, args.method, **options)
    except AttributionOptionsError:
        raise  # already a sentence (a window larger than the model's input, say)
    except ValueError as err:
        raise ExplorerError(f"cannot attribute: {err}") from err
    Image.fromarray(overlay(pixels, attr.attribution, args.opacity, attr.signed)).save(args.out)
    info |= {
        "similarity": attr.score,
        "params": _plain(attr.params),
        "ig_completeness_gap": attr.relative_delta,
        "out": args.out,
    }
    _emit(info, args.json, "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def _plain(params: dict) -> dict:
    """The JSON-ready part of a result's parameters (numbers, words, flags, and grids of
    numbers such as Grad-CAM's ``grid`` or the cells' ``[10, 10]`` as lists)."""
    plain = (int, float, str, bool)
    out = {k: v for k, v in params.items() if isinstance(v, plain)}
    out |= {
        k: list(v)
        for k, v in params.items()
        if isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v)
    }
    return out


# --- train ----------------------------------------------------------------------------------


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, help="training config JSON (see explorer/configs/train/)"
    )
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--out", default=None, help="override the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command(
    "train",
    "train a dual encoder on phantoms or real films (works under torchrun), or a cell pool",
    _train_args,
)
def _train(args: argparse.Namespace) -> int:
    from explorer.training.cells import CellPoolTraining, is_cell_pool_config, train_cell_pool
    from explorer.training.trainer import TrainConfig, train

    if is_cell_pool_config(args.config):
        pool_cfg = CellPoolTraining.from_file(args.config, steps=args.steps, out_dir=args.out)
        out = train_cell_pool(pool_cfg, progress=not args.no_progress)
        sys.stdout.write(f"saved {pool_cfg.name} to {out}\n")
        return 0
    cfg = TrainConfig.from_file(args.config, steps=args.steps, out_dir=args.out)
    out = train(cfg, progress=not args.no_progress)
    sys.stdout.write(f"saved {cfg.name} to {out}\n")
    return 0


# --- benchmark --------------------------------------------------------------------------------


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", action="append", required=True, help="registered model name (repeatable)"
    )
    p.add_argument("--images", type=int, default=None, help="held-out phantoms (default 2000)")
    p.add_argument(
        "--pointing", type=int, default=0, help="also run the pointing game on N phantoms"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--manifest",
        default=None,
        help="score real films instead of phantoms: a labelled table (CSV / TSV / Parquet), "
        "a CXR-Align JSON, or a named manifest such as nih-test",
    )
    p.add_argument(
        "--images-root", default=None, help="folder the manifest's file paths are relative to"
    )
    p.add_argument(
        "--probe",
        default=None,
        help="with --manifest: also fit a linear probe on each model's image features of these "
        "training films (nih-train, or a table) and score it on the manifest: the upper bound",
    )


def _open_manifest(spec: str, images_root: str | None):
    """The manifest named by ``--manifest`` (see :func:`explorer.data.open_manifest`)."""
    from explorer.data import open_manifest

    return open_manifest(spec, images_root)


@command(
    "benchmark",
    "negation benchmark (CXR-Align style) on held-out phantoms or a manifest of real films",
    _benchmark_args,
)
def _benchmark(args: argparse.Namespace) -> int:
    from explorer.eval.benchmark import (
        HELDOUT_IMAGES,
        format_pointing,
        format_table,
        run_benchmark,
        run_pointing_game,
    )
    from explorer.models import load_model

    if args.manifest:
        return _manifest_benchmark(args)
    if args.images_root or args.probe:
        raise ExplorerError("--images-root and --probe apply to --manifest only.")
    n = args.images or HELDOUT_IMAGES
    models = [load_model(name) for name in args.model]
    results = [run_benchmark(m, images=n) for m in models]
    data: dict = {"benchmark": [r.as_dict() for r in results]}
    text = format_table(results)
    if args.pointing:
        pointing = [run_pointing_game(m, images=args.pointing) for m in models]
        data["pointing"] = [p.as_dict() for p in pointing]
        text += "\n\n" + format_pointing(pointing)
    _emit(data, args.json, text)
    return 0


def _manifest_benchmark(args: argparse.Namespace) -> int:
    from explorer.eval.real_benchmark import format_manifest_table, run_manifest_benchmark
    from explorer.models import load_model

    if args.images is not None or args.pointing:
        raise ExplorerError(
            "--images and --pointing apply to the phantom benchmark; with --manifest every "
            "row is scored and the pointing game runs on the manifest's boxes."
        )
    manifest = _open_manifest(args.manifest, args.images_root)
    models = [load_model(name) for name in args.model]
    results = [run_manifest_benchmark(m, manifest) for m in models]
    data = {
        "manifest": manifest.name,
        "problems": [{"row": p.row, "reason": p.reason} for p in manifest.problems],
        "benchmark": [r.as_dict() for r in results],
    }
    text = f"{manifest.name}: {len(manifest)} films\n\n" + format_manifest_table(results)
    if len(results) > 1:
        from explorer.eval.real_benchmark import task_a_difference

        pairs = [task_a_difference(results[0], r, manifest.patients()) for r in results[1:]]
        data["task_a_difference"] = [d.as_dict() for d in pairs]
        text += "\n\n" + "\n".join(
            f"task A, {d.model} minus {d.baseline}: {d.difference:+.3f} "
            f"[{d.ci[0]:+.3f}, {d.ci[1]:+.3f}] (paired patient bootstrap, {d.rows} films)"
            for d in pairs
        )
    if args.probe:
        from explorer.eval.probe import format_probe_table, run_linear_probe
        from explorer.training.real import training_manifest

        train = training_manifest(args.probe)
        probes = [run_linear_probe(m, train, manifest) for m in models]
        data["probe"] = [r.as_dict() for r in probes]
        text += "\n\n" + format_probe_table(probes)
    if manifest.problems:
        text += "\n\nnot used:\n" + "\n".join(f"  {p.row}: {p.reason}" for p in manifest.problems)
    _emit(data, args.json, text)
    return 0


# --- domain guard -------------------------------------------------------------------------------


def _guard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument(
        "--manifest",
        default="nih-train",
        help="the model's training films (default nih-train: the NIH films beside the checkout)",
    )
    p.add_argument("--write", action="store_true", help="ship the reference in the model's folder")
    p.add_argument(
        "--check",
        action="append",
        default=None,
        help="a manifest to judge against the reference (repeatable; default nih-test)",
    )
    p.add_argument("--phantoms", type=int, default=0, help="also judge N held-out phantoms")
    p.add_argument("--json", action="store_true", help="print JSON")


def _judged(reference, features, name: str) -> dict:
    import numpy as np

    from explorer.guard import TYPICALITY_THRESHOLD

    share = reference.typicality(reference.distances(features))
    return {
        "set": name,
        "images": int(len(share)),
        "within": float((share >= TYPICALITY_THRESHOLD).mean()),
        "median_typicality": float(np.median(share)),
    }


@command(
    "guard",
    "fit a real-trained model's domain reference from its training films, and check sets",
    _guard_args,
)
def _guard(args: argparse.Namespace) -> int:
    import numpy as np

    from explorer.guard import image_features, manifest_reference, write_reference
    from explorer.models import load_model
    from explorer.training.real import training_manifest

    model = load_model(args.model)
    ref = manifest_reference(model, training_manifest(args.manifest))
    out = {
        "model": model.name,
        "reference": ref.description,
        "fingerprint": ref.fingerprint,
        "calibration_p99": ref.percentile(99),
        "seconds": ref.seconds,
        "checks": [],
    }
    for name in args.check or ["nih-test"]:
        manifest = _open_manifest(name, None)
        feats = np.concatenate([image_features(model, r.pixels()) for r in manifest.rows])
        out["checks"].append(_judged(ref, feats, manifest.name))
    if args.phantoms:
        from explorer.phantom.sets import build_phantom_set
        from explorer.phantom.splits import HELDOUT_SEED

        size = model.preprocess_cfg.image_size
        data = build_phantom_set(args.phantoms, HELDOUT_SEED, size)
        feats = image_features(model, data.pixels(np.arange(len(data))))
        out["checks"].append(_judged(ref, feats, f"{args.phantoms} held-out phantoms"))
    if args.write:
        out["written"] = str(write_reference(ref, model))
    lines = [f"{model.name}: reference of {ref.description} ({ref.seconds:.0f} s)"]
    lines += [
        f"  {c['set']}: {c['within']:.1%} of {c['images']:,} within the training domain "
        f"(median typicality {c['median_typicality']:.2f})"
        for c in out["checks"]
    ]
    if args.write:
        lines.append(f"written to {out['written']}")
    _emit(out, args.json, "\n".join(lines))
    return 0


# --- batch evaluation ---------------------------------------------------------------------------


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", default=None, help="folder or ZIP of images, phantom:N, or nih-test")
    p.add_argument(
        "--labels", default=None, help="CSV: file name + CheXpert columns (1/0/-1/blank)"
    )
    p.add_argument("--model", default=None, help="registered model (default: the app's default)")
    p.add_argument("--compare", default=None, help="a second model: list the cases that flip")
    p.add_argument("--threshold", type=float, default=0.5, help="threshold for accuracy")
    p.add_argument("--out", default=None, help="write every case to this CSV")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--manifest",
        default=None,
        help="instead of --images: a labelled table (CSV / TSV / Parquet) or a named manifest",
    )
    p.add_argument(
        "--images-root", default=None, help="with --manifest: where its file paths resolve"
    )


@command("evaluate", "score a labelled batch: per-finding AUC, negation errors", _evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    from explorer.eval.batch import BatchError, evaluate, flips, manifest_batch, read_batch
    from explorer.models import default_registry

    if (args.images is None) == (args.manifest is None):
        raise BatchError("Give the images with --images, or a labelled table with --manifest.")
    reg = default_registry()
    if args.manifest:
        batch = manifest_batch(_open_manifest(args.manifest, args.images_root))
    else:
        batch = read_batch(args.images, args.labels)
    model = reg.load(args.model or reg.default)
    ev = evaluate(model, batch)
    metrics = ev.metrics(args.threshold)
    data: dict = {
        "model": ev.model,
        "templates": list(ev.templates),
        "images": len(batch),
        "problems": [{"where": w, "reason": r} for w, r in batch.problems],
        "metrics": json.loads(metrics.to_json(orient="records")),
    }
    text = [
        f"{ev.model} on {len(batch)} images ({batch.name}); templates: {', '.join(ev.templates)}",
        metrics.to_string(index=False),
    ]
    if batch.problems:
        text.append("not used:\n" + "\n".join(f"  {w}: {r}" for w, r in batch.problems))
    if args.compare:
        other = evaluate(reg.load(args.compare), batch)
        changed = flips(ev, other)
        data["flips"] = json.loads(changed.to_json(orient="records"))
        text.append(f"{len(changed)} labelled cases flip between {ev.model} and {other.model}")
    if args.out:
        from pathlib import Path

        from explorer.data.table import csv_text

        frame = ev.to_frame().assign(**ev.provenance)
        Path(args.out).write_text(csv_text(frame), encoding="utf-8")
        text.append(f"wrote {len(frame)} cases to {args.out}")
    _emit(data, args.json, "\n".join(text))
    return 0


# --- lesson -----------------------------------------------------------------------------------


def _lesson_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the handout to write (self-contained HTML)")
    p.add_argument(
        "--model", action="append", default=None, help="models (default: the two phantom models)"
    )
    p.add_argument("--corpus", default="phantom:400", help="reports for the map step")


@command("lesson", "write the four-step negation lesson as an offline HTML handout", _lesson_args)
def _lesson(args: argparse.Namespace) -> int:
    from pathlib import Path

    from explorer.lesson import LESSON_MODELS, build_lesson, lesson_html
    from explorer.models import default_registry

    reg = default_registry()
    names = args.model or list(LESSON_MODELS)
    steps = build_lesson([reg.load(n) for n in names], args.corpus)
    Path(args.out).write_text(lesson_html(steps), encoding="utf-8")
    sys.stdout.write("\n".join(f"{s.title}: {s.text}" for s in steps) + f"\nwrote {args.out}\n")
    return 0


# --- report map -------------------------------------------------------------------------------


def _map_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "place"), help="build a map, or place an image")
    p.add_argument("image", nargs="?", help="image to place (with 'place')")
    p.add_argument(
        "--corpus", default="iu", help="'iu', 'phantom:N' or PATH.csv[::TEXT_COLUMN] (default iu)"
    )
    p.add_argument("--model", default=None, help="registered model (default: the app's default)")
    p.add_argument("--clusters", type=int, default=None, help="soft-label clusters (default 8)")
    p.add_argument("-k", type=int, default=10, help="nearest reports to list (with 'place')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON")


@command("map", "build a report map (resumable) or place an image in one", _map_args)
def _map(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from explorer.models import default_registry
    from explorer.reports.corpus import load_corpus
    from explorer.reports.map import MapSettings, build_map

    if args.action == "place" and not args.image:
        sys.stderr.write("Name the image to place: python -m explorer map place IMAGE\n")
        return EXIT_USER_ERROR
    reg = default_registry()
    model = reg.load(args.model or reg.default)
    corpus = load_corpus(args.corpus)
    settings = MapSettings(**({"clusters": args.clusters} if args.clusters else {}))
    bar = tqdm(total=100, disable=args.no_progress, unit="%", file=sys.stderr)

    def progress(frac: float, stage: str) -> None:
        bar.set_description(stage)
        bar.n = int(round(frac * 100))
        bar.refresh()

    report_map = build_map(corpus, model, settings, progress=progress)
    bar.close()
    a = report_map.alignment
    caution = a.caution(len(report_map))
    data: dict = {
        "corpus": report_map.corpus,
        "model": report_map.model,
        "reports": len(report_map),
        "folder": str(report_map.folder),
        "timings_s": report_map.timings,
        "alignment": {
            **asdict(a),
            "lift": round(a.lift, 3),
            "caution": caution,
        },
        "clusters": [{"name": c.name, "size": c.size} for c in report_map.clusters],
    }
    lines = [
        f"{report_map.corpus}: {len(report_map):,} reports, model {report_map.model}",
        f"map folder: {report_map.folder}",
        "build time (s): " + ", ".join(f"{k} {v}" for k, v in report_map.timings.items()),
        f"alignment (k={a.k}): cluster agreement {a.cluster_agreement:.3f} vs chance "
        f"{a.cluster_chance:.3f} (lift {a.lift:.2f}); soft-label similarity "
        f"{a.soft_similarity:.3f} vs random {a.soft_chance:.3f}",
        "clusters: " + "; ".join(f"{c.name} ({c.size})" for c in report_map.clusters),
    ]
    if caution:
        lines.insert(4, f"caution: {caution}")
    if args.action == "place":
        from explorer.imaging import load_radiograph

        emb = model.embed_image(load_radiograph(args.image).pixels).float().cpu().numpy()[0]
        placement = report_map.place(emb, args.k)
        data["placement"] = {
            "xy": placement.xy,
            "neighbours": [asdict(n) for n in placement.neighbours],
        }
        lines.append(f"image at ({placement.xy[0]:.2f}, {placement.xy[1]:.2f}); nearest reports:")
        lines += [f"  {n.similarity:.3f}  {n.id}  {n.text[:110]}" for n in placement.neighbours]
    _emit(data, args.json, "\n".join(lines))
    return 0


# --- label ------------------------------------------------------------------------------------


def _label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help='report text to label (quote it; "-" reads stdin)')
    p.add_argument(
        "--validate-mesh",
        action="store_true",
        help="score the labeler against the MeSH terms of the IU reports instead",
    )
    p.add_argument(
        "--uncertain",
        choices=("negative", "positive"),
        default="negative",
        help="with --validate-mesh: count uncertain labels as negative (default) or positive",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("label", "CheXpert labels of a report (rule-based), or --validate-mesh", _label_args)
def _label(args: argparse.Namespace) -> int:
    if args.validate_mesh == bool(args.text):
        sys.stderr.write("Give either a report text or --validate-mesh.\n")
        return EXIT_USER_ERROR
    if args.validate_mesh:
        from explorer.reports.mesh import validate

        result = validate(uncertain=args.uncertain)
        _emit(result.as_dict(), args.json, result.to_markdown())
        return 0
    from explorer.reports.labeler import label_report_detailed
    from explorer.vocab.labels import LABEL_NAMES

    text = sys.stdin.read() if args.text == "-" else args.text
    res = label_report_detailed(text)
    names = {**LABEL_NAMES, None: "-"}
    evidence = {}
    lines = []
    for finding, value in res.as_dict().items():
        ev = res.evidence(finding) if value is not None else None
        if ev is not None:
            evidence[finding] = {"sentence": ev.sentence, "cue": ev.cue, "rule": ev.rule}
        why = f'{ev.rule}: "{ev.cue or ev.text}" in "{ev.sentence}"' if ev else ""
        lines.append(f"{finding:<27} {names[value]:<9}  {why}".rstrip())
    _emit({"labels": res.as_dict(), "evidence": evidence}, args.json, "\n".join(lines))
    return 0


# --- space -------------------------------------------------------------------------------------


def _space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="only validate spaces/README.md")
    p.add_argument("--out", default="build/space", help="folder to stage the Space in")
    p.add_argument("--push", metavar="OWNER/NAME", help="publish to this Space (needs HF_TOKEN)")


@command("space", "validate, stage and publish the Hugging Face Space", _space_args)
def _space(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from explorer.ops.space import check_front_matter, publish_space, stage_space

    check = check_front_matter()
    if not check.ok:
        sys.stderr.write("spaces/README.md: " + "; ".join(check.problems) + "\n")
        return EXIT_USER_ERROR
    if args.check:
        sys.stdout.write(f"spaces/README.md is valid (gradio {check.meta['sdk_version']})\n")
        return 0
    folder = stage_space(Path(args.out))
    sys.stdout.write(f"staged the Space in {folder}\n")
    if args.push:
        url = publish_space(folder, args.push, token=os.environ.get("HF_TOKEN"))
        sys.stdout.write(f"published: {url}\n")
    return 0


# --- load ------------------------------------------------------------------------------------


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="a running app (default: start app.py in a child process)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    p.add_argument("--requests", type=int, default=10, help="requests per client (default 10)")
    p.add_argument("--image", help="image to score (default: a shipped sample CXR)")
    p.add_argument("--model", help="model name (default: the app's default)")
    p.add_argument(
        "--flood",
        choices=("occlusion", "ig", "gradcam"),
        help="instead: one client floods /attribute with this method while another attributes "
        "every 5 s; fails if that person's p95 exceeds 3x their median alone",
    )
    p.add_argument(
        "--calls",
        type=int,
        default=6,
        help="with --flood: the person's attributions alone and during the flood, each "
        "(default 6; the p95 of 6 is their maximum, 20 or more give a p95 worth the name)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("load", "load test: concurrent clients on the findings endpoint", _load_args)
def _load(args: argparse.Namespace) -> int:
    from pathlib import Path

    from explorer.ops.load import AppProcess, default_image, run_flood, run_load

    if args.clients < 1 or args.requests < 1:
        sys.stderr.write("--clients and --requests must be at least 1.\n")
        return EXIT_USER_ERROR
    image = Path(args.image) if args.image else default_image()

    def run(url: str, cold_start: float | None) -> int:
        if args.flood:
            flood = run_flood(url, method=args.flood, image=image, normal_calls=args.calls)
            _emit(flood.as_dict(), args.json, flood.to_markdown())
            return 0 if flood.passed else 1
        result = run_load(url, args.clients, args.requests, image, args.model)
        data = {**result.as_dict(), "cold_start_s": cold_start}
        text = result.to_markdown()
        if cold_start is not None:
            text += f"\n\napp start to first page: {cold_start:.1f} s"
        _emit(data, args.json, text)
        return 0 if result.passed else 1

    if args.url:
        return run(args.url, None)
    with AppProcess() as app:
        return run(app.url, app.ready_s)


# --- bench -----------------------------------------------------------------------------------


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", action="append", help="model to measure (repeatable; default: the default)"
    )
    p.add_argument("--images", type=int, default=20, help="distinct images cycled (default 20)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per latency (default 30)")
    p.add_argument("--ig-steps", type=int, help="IG integration points (default: the app's)")
    p.add_argument("--embed-reports", type=int, help="IU reports to embed (default: all)")
    p.add_argument("--single-reports", type=int, default=200, help="reports embedded one by one")
    p.add_argument(
        "--map",
        action="append",
        dest="maps",
        metavar="CORPUS",
        help="corpus whose map is built from scratch (repeatable; default: iu; 'none' skips)",
    )
    p.add_argument("--no-app", action="store_true", help="skip the app's cold start and memory")
    p.add_argument(
        "--hub",
        action="append",
        metavar="FAMILY",
        help="instead: the hub models rebuilt at full size with random weights (repeatable; "
        "'all' = every registered hub family)",
    )
    p.add_argument(
        "--hub-size", choices=("full", "tiny"), default="full", help="replica size for --hub"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("bench", "speed bench: latency, peer pipeline, attribution, maps, app", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from explorer.ops.speed import BenchReport, bench_hub, machine, run_bench

    say = lambda msg: sys.stderr.write(f"bench: {msg}\n")  # noqa: E731
    if args.hub:
        families = None if "all" in args.hub else args.hub
        report = BenchReport(machine(), tuple(bench_hub(families, args.hub_size, say=say)))
        _emit(report.as_dict(), args.json, report.to_markdown())
        return 0
    maps = [m for m in (args.maps or ["iu"]) if m != "none"]
    report = run_bench(
        args.model,
        images=args.images,
        repeats=args.repeats,
        ig_steps=args.ig_steps,
        embed_reports=args.embed_reports,
        single_reports=args.single_reports,
        map_corpora=maps,
        app=not args.no_app,
        say=say,
    )
    _emit(report.as_dict(), args.json, report.to_markdown())
    return 0


# --- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explorer", description="CXR Negation Explorer")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, handler) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except ExplorerError as err:
        sys.stderr.write(f"{err}\n")
        return EXIT_USER_ERROR
