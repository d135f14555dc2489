"""Findings tab: affirmed-vs-negated scores of the 14 CheXpert findings (and typed ones).

Library work is in :mod:`explorer.scoring`; the figure comes from :mod:`explorer.plots`.
"""

from __future__ import annotations

import gradio as gr

from explorer.errors import ExplorerError
from explorer.scoring import BLIND_MARGIN, BLIND_TEXT_COSINE
from explorer.ui.common import (
    MAX_PROMPT_CHARS,
    clear_error_marks,
    compare_choices,
    compare_menu,
    csv_download,
    load_model,
    upload_pixels,
    user_error,
)
from explorer.ui.serving import CONCURRENCY, endpoint

FINDINGS_HELP = (
    "For each finding the image is compared with an affirmed prompt (*there is X*) and its "
    "negation (*there is no X*). The bar shows the softmax over that pair: right of the middle "
    "the model prefers the affirmed sentence, left of it the negated one. Grey rows marked ⚠ "
    "are **negation-blind**: the model barely separates the two sentences there (the pair's "
    f"probability is within {BLIND_MARGIN:g} of 0.5, or the table's *text cosine*, how alike "
    f"the model finds the two sentences themselves, is {BLIND_TEXT_COSINE:g} or more). "
    "A typed finding that is a noun phrase (*small left pleural effusion*) goes into every "
    "template; a sentence (*heart size is normal*) is scored as typed against its negation; "
    "a typed denial (*no pneumothorax*) is the sentence its row reports. In a comparison the "
    "second chart keeps the first chart's order."
)
SCORE_COLUMNS = [
    "finding",
    "P(affirmed)",
    "sim affirmed",
    "sim negated",
    "margin",
    "negation-blind",
    "your negation",
]
MAX_CUSTOM_FINDINGS = 10


def guard_banner(result) -> str:
    """Markdown beside the chart: the domain guard's figure and sentence for one model.

    A warning banner when the image is outside the model's training domain; otherwise one
    quiet line (the figure, or that the model has no reference here).
    """
    if result.outside:
        return f"⚠️ **Not like this model's training images.** {result.sentence}"
    return f"<small>Domain check: {result.sentence}</small>"


def check_domain(model, pixels=None, features=None) -> str:
    """The domain guard's banner for an image under ``model`` (:mod:`explorer.guard`).

    ``features``: the image's guard features, if the caller has them (else from ``pixels``).
    """
    from explorer.guard import typicality

    return guard_banner(typicality(model, pixels, features=features))


def template_choices() -> list[str]:
    """The ids of the prompt templates (all averaged unless the person narrows them)."""
    from explorer.vocab.prompts import prompt_templates

    return [t.id for t in prompt_templates()]


def parse_custom_findings(text: str | None) -> list[str]:
    """One free-text finding per line (blank lines ignored); bounded in count and length."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if len(lines) > MAX_CUSTOM_FINDINGS:
        raise user_error(f"Please type at most {MAX_CUSTOM_FINDINGS} extra findings, one per line.")
    for ln in lines:
        if len(ln) > MAX_PROMPT_CHARS:
            raise user_error(
                f"Each extra finding must be at most {MAX_PROMPT_CHARS} characters "
                f"(one has {len(ln):,})."
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in ln):
            raise user_error(
                "Extra findings must be plain text: one contains control characters "
                "(such as tabs, escapes or NUL)."
            )
    return lines


def parse_negations(text: str | None) -> dict[str, str]:
    """Lines of ``finding => negated prompt`` (the user's own negation of a finding)."""
    out = {}
    for ln in (text or "").splitlines():
        if not ln.strip():
            continue
        if "=>" not in ln:
            raise user_error('Write each negation as "finding => negated sentence".')
        finding, negated = (part.strip() for part in ln.split("=>", 1))
        if not finding or not negated or len(negated) > MAX_PROMPT_CHARS:
            raise user_error('Write each negation as "finding => negated sentence".')
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
    """Scores, figures, tables and CSV for one model (and an optional second).

    The last two outputs are the domain guard's banner for each model (how typical the image
    is of that model's training images; :mod:`explorer.guard`).
    """
    from explorer.guard import encode_with_features
    from explorer.plots import findings_figure, findings_order
    from explorer.scoring import score_findings
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    pixels = upload_pixels(path)
    custom = parse_custom_findings(custom_text)
    negations = parse_negations(negation_text)
    if templates is not None and len(templates) == 0:
        raise user_error("Choose at least one prompt template.")
    outputs, notices, order = [], [], None
    same = compare_name and compare_name == model_name  # no comparison with itself
    names = [model_name] + ([compare_name] if compare_name and not same else [])
    for k, name in enumerate(names):
        progress((k, len(names)), desc=f"Scoring with {name or 'the default model'}")
        model, notice = load_model(name)
        if notice:
            notices.append(notice)
        try:
            # One forward pass gives the embedding scored and the domain guard's features.
            features, embedding = encode_with_features(model, pixels)
            result = score_findings(
                model,
                pixels,
                CHEXPERT_FINDINGS,
                custom=custom,
                templates=templates or None,
                negations=negations,
                image_embedding=embedding,
            )
            banner = check_domain(model, features=features)
        except ExplorerError as err:
            raise user_error(err) from None
        cut = [s.finding for s in result.scores if s.truncated]
        if cut:
            notices.append(
                f"{model.name} reads at most {model.max_text_tokens} tokens of a sentence: the "
                f"prompts of {', '.join(repr(c) for c in cut)} were cut to that length, so "
                "the words past it were not read. Shorten them."
            )
        frame = result.to_frame()
        figure = findings_figure(result, order=order)  # the second model in the first's order
        order = order or findings_order(result)
        outputs.append(
            (
                figure,
                frame,
                csv_download(frame, f"findings-{model.name}"),
                model_card(model.name),
                banner,
            )
        )
    if len(outputs) == 1:
        outputs.append((None, None, None, "", ""))
    (fig, frame, csv, card, guard), (fig2, frame2, csv2, card2, guard2) = outputs
    notice = "\n\n".join(f"⚠️ {n}" for n in notices)
    return fig, frame, csv, card, fig2, frame2, csv2, card2, notice, guard, guard2


def show_second(name: str | None) -> gr.Column:
    """Show the second model's column only when a second model is chosen."""
    return gr.Column(visible=bool(name))


def build_tab(upload: gr.File, model_names: list[str], default_model: str | None):
    """The Findings tab (called inside ``gr.Tab``); ``upload`` is the shared image input.

    Returns a function that chains this tab's scoring, with its current settings, after
    another tab's event (the Batch tab's drill-down scores the opened case at once).
    """
    template_ids = template_choices()
    gr.Markdown(FINDINGS_HELP)
    with gr.Row():
        model = gr.Dropdown(model_names, value=default_model, label="Model")
        # Another model that loads here (an API caller may name any registered model).
        compare = gr.Dropdown(
            compare_choices(model_names, default_model),
            value="",
            allow_custom_value=True,
            label="Compare with (optional)",
        )
    with gr.Accordion("Prompts", open=False):
        templates = gr.CheckboxGroup(template_ids, value=template_ids, label="Templates averaged")
        custom = gr.Textbox(
            value="", label="Extra findings, one per line (negated automatically)", lines=2
        )
        negations = gr.Textbox(
            value="",
            label="Your own negations, one per line: finding => negated sentence",
            lines=2,
        )
    model.change(compare_menu(model_names), [model, compare], compare, api_name=False)
    run = gr.Button("Score findings", variant="primary")
    notice = gr.Markdown(label="Notice")
    with gr.Row():
        with gr.Column():
            card = gr.Markdown(label="Model card")
            guard = gr.Markdown(label="Domain check", elem_id="findings-guard")
            plot = gr.Plot(label="Affirmed vs negated")
            table = gr.Dataframe(headers=SCORE_COLUMNS, label="Scores", interactive=False)
            csv = gr.File(label="Download CSV", elem_id="findings-csv")
        with gr.Column(visible=False) as second:
            card2 = gr.Markdown(label="Model card (second model)")
            guard2 = gr.Markdown(label="Domain check (second model)", elem_id="findings-guard-2")
            plot2 = gr.Plot(label="Second model")
            table2 = gr.Dataframe(
                headers=SCORE_COLUMNS, label="Scores (second model)", interactive=False
            )
            csv2 = gr.File(label="Download CSV (second model)")
    compare.change(show_second, compare, second, api_name=False)
    inputs = [upload, model, compare, custom, templates, negations]
    outputs = [plot, table, csv, card, plot2, table2, csv2, card2, notice, guard, guard2]
    run.click(
        score_image,
        inputs=inputs,
        outputs=outputs,
        api_name="findings",
        concurrency_limit=CONCURRENCY["findings"],
    )

    clear_error_marks(upload.change, outputs)

    def score_after(event):
        # The endpoint runs inside (its gauge and GPU grant); this chained event is UI-only.
        return event.then(
            lambda *args: score_image(*args),
            inputs=inputs,
            outputs=outputs,
            api_name=False,
            concurrency_limit=CONCURRENCY["findings"],
        )

    return score_after
