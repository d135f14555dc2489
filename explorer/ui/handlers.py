"""Event handlers: plain functions that call the library and turn its errors into ``gr.Error``."""

from __future__ import annotations

import logging

import gradio as gr
import numpy as np

from explorer.errors import ExplorerError
from explorer.paths import examples_dir
from explorer.ui.serving import endpoint, scratch_file

log = logging.getLogger(__name__)


def user_error(err: ExplorerError) -> gr.Error:
    """The library's sentence, shown to the person as a Gradio error toast."""
    return gr.Error(str(err), print_exception=False)


@endpoint("inspect")
def inspect_upload(path: str | None) -> tuple[np.ndarray | None, list[list[str]]]:
    """An uploaded file -> the normalised grayscale image and its safe metadata rows.

    A cleared upload (``None``) clears both, without an error: the person removed the file.
    """
    from explorer.imaging import describe, to_uint8

    if not path:
        return None, []
    img = _loaded(path)
    rows = [[key, _cell(value)] for key, value in describe(img).items()]
    return to_uint8(img.pixels), rows


def model_rows() -> list[list[str]]:
    """One row per registered model: name, backend, whether it loads here, why, description."""
    from explorer.models import default_registry

    reg = default_registry()
    rows = []
    for name in reg.names():
        st = reg.status(name)
        label = f"{name} (default)" if name == reg.default else name
        rows.append([label, st.backend, "yes" if st.available else "no", st.reason, st.description])
    return rows


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


# --- findings view ----------------------------------------------------------------------------

MAX_CUSTOM_FINDINGS = 10
MAX_PROMPT_CHARS = 200


def _loaded(path: str | None):
    """The upload decoded in memory, or a ``gr.Error`` saying what is wrong with it."""
    from pathlib import Path

    from explorer.imaging import load_radiograph

    if not path:
        raise gr.Error(
            "Please upload a chest X-ray (PNG, JPEG or DICOM) first.", print_exception=False
        )
    if not Path(path).exists():
        raise gr.Error(
            "This upload has been deleted from the server (uploads are kept only for a few "
            "minutes); please upload the image again.",
            print_exception=False,
        )
    try:
        return load_radiograph(path)
    except ExplorerError as err:
        raise user_error(err) from None


def _pixels(path: str | None) -> np.ndarray:
    return _loaded(path).pixels


def _model(name: str | None):
    from explorer.models import default_registry

    try:
        return default_registry().load_or_default(name or None)
    except ExplorerError as err:
        raise user_error(err) from None


def parse_custom_findings(text: str | None) -> list[str]:
    """One free-text finding per line (blank lines ignored); bounded in count and length."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if len(lines) > MAX_CUSTOM_FINDINGS:
        raise gr.Error(
            f"Please type at most {MAX_CUSTOM_FINDINGS} extra findings, one per line.",
            print_exception=False,
        )
    for ln in lines:
        if len(ln) > MAX_PROMPT_CHARS:
            raise gr.Error(
                f"Each extra finding must be at most {MAX_PROMPT_CHARS} characters "
                f"(one has {len(ln):,}).",
                print_exception=False,
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in ln):
            raise gr.Error(
                "Extra findings must be plain text: one contains control characters "
                "(such as tabs, escapes or NUL).",
                print_exception=False,
            )
    return lines


def parse_negations(text: str | None) -> dict[str, str]:
    """Lines of ``finding => negated prompt`` (the user's own negation of a finding)."""
    out = {}
    for ln in (text or "").splitlines():
        if not ln.strip():
            continue
        if "=>" not in ln:
            raise gr.Error(
                'Write each negation as "finding => negated sentence".', print_exception=False
            )
        finding, negated = (part.strip() for part in ln.split("=>", 1))
        if not finding or not negated or len(negated) > MAX_PROMPT_CHARS:
            raise gr.Error(
                'Write each negation as "finding => negated sentence".', print_exception=False
            )
        out[finding] = negated
    return out


def model_card(name: str | None) -> str:
    """Markdown: what the model is, what it was trained on, what it is not for."""
    from explorer.models import default_registry

    reg = default_registry()
    try:
        spec = reg.spec(name or reg.default)
    except ExplorerError as err:
        return str(err)
    return f"**{spec.name}** ({spec.backend})  \n{spec.description}\n\n{spec.card}"


def _csv(frame, stem: str) -> str:
    """A CSV download in the scratch folder (purged with the upload cache)."""
    return scratch_file(f"{stem}.csv", frame.to_csv(index=False))


@endpoint("findings", gpu_seconds=60)
def score_image(
    path: str | None,
    model_name: str | None,
    compare_name: str | None,
    custom_text: str | None,
    templates: list[str] | None,
    negation_text: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects it
):
    """Findings view: scores, figures, tables and CSV for one model (and an optional second)."""
    from explorer.plots import findings_figure
    from explorer.scoring import score_findings
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    pixels = _pixels(path)
    custom = parse_custom_findings(custom_text)
    negations = parse_negations(negation_text)
    if templates is not None and len(templates) == 0:
        raise gr.Error("Choose at least one prompt template.", print_exception=False)
    outputs, notices = [], []
    names = [model_name] + ([compare_name] if compare_name else [])
    for k, name in enumerate(names):
        progress((k, len(names)), desc=f"Scoring with {name or 'the default model'}")
        model, notice = _model(name)
        if notice:
            notices.append(notice)
        try:
            result = score_findings(
                model,
                pixels,
                CHEXPERT_FINDINGS,
                custom=custom,
                templates=templates or None,
                negations=negations,
            )
        except ExplorerError as err:
            raise user_error(err) from None
        frame = result.to_frame()
        outputs.append(
            (
                findings_figure(result),
                frame,
                _csv(frame, f"findings-{model.name}"),
                model_card(model.name),
            )
        )
    if len(outputs) == 1:
        outputs.append((None, None, None, ""))
    (fig, frame, csv, card), (fig2, frame2, csv2, card2) = outputs
    notice = "\n\n".join(f"⚠️ {n}" for n in notices)
    return fig, frame, csv, card, fig2, frame2, csv2, card2, notice


# --- attribution view -----------------------------------------------------------------------


def _phantom_mask(path: str, finding: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Ground-truth mask of a shipped phantom example (re-rendered from its seed), if any."""
    import json
    from pathlib import Path

    meta_file = examples_dir() / "phantoms.json"
    if not meta_file.exists():
        return None
    entry = json.loads(meta_file.read_text()).get(Path(path).name)
    if not entry:
        return None
    from explorer.phantom import FindingSpec, render_phantom

    specs = [FindingSpec(f["name"], f["laterality"], f["severity"]) for f in entry["findings"]]
    ph = render_phantom(entry["seed"], findings=specs, size=entry["size"])
    masks = [f.mask for f in ph.findings if finding is None or f.name in finding.lower()]
    if not masks or masks[0].shape != shape:
        return None
    return np.any(masks, axis=0)


def baseline_control(method: str):
    """Show the baseline choice only for the methods that use one (IG and occlusion)."""
    return gr.update(visible=method != "gradcam")


@endpoint("attribute", gpu_seconds=120)
def explain(
    path: str | None,
    model_name: str | None,
    finding: str | None,
    method: str,
    opacity: float,
    show_mask: bool,
    baseline: str | None = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects it
):
    """Attribution view: maps for the affirmed and negated prompt, their difference, token weights.

    ``baseline`` is what IG integrates from and occlusion paints (Grad-CAM has none); None
    = the method's default.
    """
    from explorer.attribution import attribute_pair, attribute_text
    from explorer.plots import mask_outline, overlay, token_highlights
    from explorer.vocab.prompts import prompt_pair

    pixels = _pixels(path)
    if not finding or not finding.strip():
        raise gr.Error("Type or pick a finding to explain.", print_exception=False)
    if len(finding) > MAX_PROMPT_CHARS:
        raise gr.Error(
            f"The finding must be at most {MAX_PROMPT_CHARS} characters.", print_exception=False
        )
    model, notice = _model(model_name)
    try:
        pair = prompt_pair(finding.strip(), "there_is")
        first, second, diff = attribute_pair(
            model,
            pixels,
            pair.affirmed,
            pair.negated,
            method,
            progress=lambda f, m: progress(f * 0.8, desc=m),
            baseline=baseline or None,
        )
        progress(0.85, desc="Token attributions")
        tokens_a = attribute_text(model, pixels, pair.affirmed)
        tokens_n = attribute_text(model, pixels, pair.negated)
    except ExplorerError as err:
        raise user_error(err) from None
    images = [
        overlay(pixels, a, opacity, signed)
        for a, signed in (
            (first.attribution, first.signed),
            (second.attribution, second.signed),
            (diff, True),
        )
    ]
    mask = _phantom_mask(path, pair.finding, pixels.shape) if show_mask else None
    if mask is not None:
        images = [mask_outline(im, mask) for im in images]
    params = ", ".join(f"{k}={v}" for k, v in first.params.items())
    delta = (
        f"; IG completeness gap {first.relative_delta:.1%}"
        if first.relative_delta is not None
        else ""
    )
    info = (
        f"**{model.name}**, method **{method}** ({params}){delta}.  \n"
        f"similarity: “{pair.affirmed}” {first.score:.4f} · “{pair.negated}” {second.score:.4f}"
        + (f"  \n⚠️ {notice}" if notice else "")
        + (
            ""
            if mask is not None or not show_mask
            else "  \n(no ground-truth mask: not a shipped phantom)"
        )
    )
    return (
        images[0],
        images[1],
        images[2],
        token_highlights(tokens_a.tokens, tokens_a.scores),
        token_highlights(tokens_n.tokens, tokens_n.scores),
        info,
    )
