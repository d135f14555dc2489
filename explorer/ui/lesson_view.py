"""Lesson tab: the four-step negation lesson (:mod:`explorer.lesson`) and its HTML handout."""

from __future__ import annotations

import gradio as gr

from explorer.errors import ExplorerError
from explorer.ui.common import load_model, reporter, user_error
from explorer.ui.serving import endpoint, scratch_file

LESSON_HELP = (
    "A ready lesson for a teaching session, computed here and offline: why negation is hard for "
    "general text encoders, how two models trained on the same phantoms differ, an attribution "
    "checked against the true lesion, and the report map. **Build the lesson** runs it (about a "
    "minute the first time) and offers a self-contained HTML handout."
)


@endpoint("lesson", gpu_seconds=300, fair=True)
def run_lesson(
    model_a: str | None,
    model_b: str | None,
    request: gr.Request = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects it
):
    """Four (markdown, figure or image) steps and the handout file (stops if the page goes)."""
    from explorer.lesson import build_lesson, lesson_html

    try:
        models = [load_model(n)[0] for n in (model_a, model_b) if n]
        steps = build_lesson(models, progress=reporter(progress, request))
    except ExplorerError as err:
        raise user_error(err) from None
    handout = scratch_file("negation-lesson.html", lesson_html(steps))
    texts = [f"### {s.title}\n{s.text}" for s in steps]
    return (*texts, steps[0].figure, steps[1].figure, steps[2].image, steps[3].figure, handout)


def build_tab(model_names: list[str], default_model: str | None) -> None:
    """The Lesson tab."""
    gr.Markdown(LESSON_HELP)
    from explorer.lesson import LESSON_MODELS

    # The lesson's own pair (same phantoms, different loss) where it is here, else the default.
    first, second = (n if n in model_names else None for n in LESSON_MODELS)
    first = first or default_model
    others = [n for n in model_names if n != first]
    with gr.Row():
        a = gr.Dropdown(model_names, value=first, label="Model", elem_id="lesson-model")
        b = gr.Dropdown(
            ["", *model_names],
            value=second or (others[0] if others else ""),
            label="Compared with",
        )
        go = gr.Button("Build the lesson", variant="primary")
    texts = [gr.Markdown()]
    fig1 = gr.Plot(label="Step 1")
    texts.append(gr.Markdown())
    fig2 = gr.Plot(label="Step 2")
    texts.append(gr.Markdown())
    img3 = gr.Image(label="Step 3", type="numpy", interactive=False)
    texts.append(gr.Markdown())
    fig4 = gr.Plot(label="Step 4")
    handout = gr.File(label="Handout (HTML, opens offline)")
    go.click(
        run_lesson,
        inputs=[a, b],
        outputs=[*texts, fig1, fig2, img3, fig4, handout],
        show_progress_on=fig1,  # the steps' progress in one place, not a counter per output
        api_name="lesson",
        concurrency_limit=1,
    )
