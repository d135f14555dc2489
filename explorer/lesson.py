"""Teaching mode: a four-step lesson on negation, computed offline, exportable as one HTML file.

1. **A general sentence encoder is negation-blind**: cosine between "There is X." and "There is
   no X." under all-MiniLM-L6-v2 (the phantom models' text tower before training).
2. **Two models side by side on a phantom** (by default :data:`LESSON_MODELS`, the phantom
   pair): P(affirmed) for every finding on a phantom with a known left pleural effusion, and
   what each model affirms of its labels.
3. **An attribution that can look right for the wrong reason**: the map for "there is pleural
   effusion" with the true lesion outlined, and whether its peak falls inside the lesion.
4. **The report map**: phantom reports by a model's text embeddings, coloured by soft-label
   cluster, with the alignment figure.

Each step is a :class:`LessonStep` (title, two sentences computed from the figures, a plotly
figure or an image). :func:`lesson_html` writes a self-contained handout (plotly.js inlined once,
images as data URIs) that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explorer.progress import Progress

#: Findings of step 1 (phrases as a radiologist would write them).
BLINDNESS_FINDINGS = (
    "pleural effusion",
    "pneumothorax",
    "cardiomegaly",
    "consolidation",
    "pulmonary edema",
    "a rib fracture",
)
LESSON_PHANTOM = {"seed": 11, "size": 320, "finding": ("pleural effusion", "left", "moderate")}
#: The lesson's two models: trained on the same phantoms, differing only in the loss (the app's
#: default, a real-film model, is not what steps 2 and 3 are about).
LESSON_MODELS = ("phantom-negaware", "phantom-infonce")


@dataclass(frozen=True)
class LessonStep:
    """One step: a title, its explanation and a figure (plotly) or an RGB image."""

    title: str
    text: str
    figure: object | None = None
    image: np.ndarray | None = None


def sentence_encoder_cosines(findings: Sequence[str] = BLINDNESS_FINDINGS) -> dict[str, float]:
    """Cosine of "There is X." with "There is no X." under mean-pooled all-MiniLM-L6-v2."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from explorer.training.model import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    enc = AutoModel.from_pretrained(minilm_path()).eval()
    texts = [t for f in findings for t in (f"There is {f}.", f"There is no {f}.")]
    with torch.inference_mode():
        batch = tok(texts, padding=True, return_tensors="pt")
        hidden = enc(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    pairs = emb.reshape(len(findings), 2, -1)
    return {f: float((p[0] * p[1]).sum()) for f, p in zip(findings, pairs, strict=True)}


def _step_blindness() -> LessonStep:
    import plotly.graph_objects as go

    cos = sentence_encoder_cosines()
    fig = go.Figure(go.Bar(x=list(cos.values()), y=list(cos), orientation="h"))
    fig.update_layout(
        title="all-MiniLM-L6-v2: cosine('There is X.', 'There is no X.')",
        xaxis={"range": [0, 1], "title": "cosine similarity (1 = same meaning to the model)"},
        height=320,
        template="plotly_white",
        margin={"l": 140, "r": 20, "t": 50, "b": 40},
    )
    lo, hi = min(cos.values()), max(cos.values())
    text = (
        f"A general-purpose sentence encoder places each finding and its negation at cosine "
        f"{lo:.2f} to {hi:.2f}: to it, *there is no effusion* says nearly what *there is an "
        f"effusion* says. A CLIP model built on such a text tower inherits this blindness unless "
        f"training teaches it otherwise."
    )
    return LessonStep("1. A general sentence encoder is negation-blind", text, figure=fig)


def _lesson_phantom():
    from explorer.phantom import FindingSpec, render_phantom

    name, side, severity = LESSON_PHANTOM["finding"]
    return render_phantom(
        LESSON_PHANTOM["seed"], [FindingSpec(name, side, severity)], size=LESSON_PHANTOM["size"]
    )


def _step_models(models: Sequence, phantom) -> LessonStep:
    import plotly.graph_objects as go

    from explorer.scoring import score_findings
    from explorer.vocab.labels import NEGATIVE, POSITIVE

    fig = go.Figure()
    truth = phantom.labels()
    present = [f for f, v in truth.items() if v == POSITIVE]
    absent = [f for f, v in truth.items() if v == NEGATIVE]
    verdicts, affirmed = [], {}
    for model in models:
        result = score_findings(model, phantom.image)
        fig.add_trace(
            go.Bar(
                name=model.name,
                y=[s.finding for s in result.scores],
                x=[s.prob_affirmed for s in result.scores],
                orientation="h",
            )
        )
        says = {s.finding: s.prob_affirmed >= 0.5 for s in result.scores}
        affirmed[model.name] = says
        found = [f for f in present if says[f]]
        wrong = [f for f in absent if says[f]]
        verdicts.append(
            f"**{model.name}** affirms {len(found)}/{len(present)} of the findings the image "
            f"has ({', '.join(found) or 'none'}) and {len(wrong)}/{len(absent)} of those it has "
            f"not ({', '.join(wrong) or 'none'})"
        )
    fig.add_vline(x=0.5, line_dash="dot")
    fig.update_layout(
        title="P(affirmed) on a phantom with a moderate left pleural effusion",
        barmode="group",
        height=520,
        xaxis={"range": [0, 1]},
        template="plotly_white",
        margin={"l": 190, "r": 20, "t": 50, "b": 40},
    )
    comparison = ""
    if len(affirmed) == 2:
        one, two = affirmed.values()
        differ = [f for f in truth if one[f] != two[f]]
        comparison = (
            f" The two models disagree on {', '.join(differ)}."
            if differ
            else " The two models give the same verdict on every finding."
        )
    text = (
        f"Both models see the same image, whose labels are {', '.join(present)}. A model that "
        f"reads it right puts those bars right of the dotted line (the affirmed sentence wins) "
        f"and every labelled-absent finding left of it. {'; '.join(verdicts)}.{comparison}"
    )
    return LessonStep("2. Two models side by side on a phantom", text, figure=fig)


def _step_attribution(model, phantom, method: str = "gradcam") -> LessonStep:
    from explorer.attribution import attribute_image
    from explorer.eval.metrics import pointing_hit
    from explorer.plots import mask_outline, overlay

    inst = next(f for f in phantom.findings if f.name == "pleural effusion")
    attr = attribute_image(model, phantom.image, "there is pleural effusion", method)
    rgb = mask_outline(overlay(phantom.image, attr.attribution, 0.6, signed=False), inst.mask)
    hit = pointing_hit(attr.attribution, inst.mask)
    where = "inside" if hit else "outside"
    text = (
        f"{method} for *there is pleural effusion* on {model.name}: the strongest evidence lies "
        f"{where} the true effusion (green outline). "
        + (
            "A map can land on the lesion and still not explain the decision: check the negated "
            "prompt's map too, and whether the score itself is right."
            if hit
            else "The model's similarity rests on pixels away from the lesion, so even a correct "
            "score here would be right for the wrong reason."
        )
    )
    return LessonStep("3. An attribution can look right for the wrong reason", text, image=rgb)


def _step_map(model, corpus_spec: str) -> LessonStep:
    from explorer.plots import map_figure
    from explorer.reports.corpus import load_corpus
    from explorer.reports.map import build_map

    report_map = build_map(load_corpus(corpus_spec), model)
    a = report_map.alignment
    text = (
        f"{len(report_map):,} reports placed by {model.name}'s text embeddings and coloured by "
        f"soft-label cluster. {a.cluster_agreement:.0%} of each report's 10 nearest neighbours "
        f"share its cluster, against {a.cluster_chance:.0%} by chance: the closer to 100%, the "
        f"more the text space is organised by what reports affirm and deny."
    )
    return LessonStep("4. The report map", text, figure=map_figure(report_map, hover_chars=120))


def build_lesson(
    models: Sequence, corpus_spec: str = "phantom:400", progress: Progress | None = None
) -> tuple[LessonStep, ...]:
    """Compute the four steps with ``models`` (the first one drives steps 3 and 4)."""
    say = progress or (lambda frac, msg: None)
    say(0.0, "sentence encoder")
    steps = [_step_blindness()]
    say(0.2, "phantom models")
    phantom = _lesson_phantom()
    steps.append(_step_models(models, phantom))
    say(0.4, "attribution")
    steps.append(_step_attribution(models[0], phantom))
    say(0.6, "report map")
    steps.append(_step_map(models[0], corpus_spec))
    say(1.0, "done")
    return tuple(steps)


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _markdown_to_html(text: str) -> str:
    import re

    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", html.escape(text))


def lesson_html(steps: Sequence[LessonStep], title: str = "Negation in medical CLIP models") -> str:
    """A self-contained HTML handout (opens offline: plotly.js is inlined once)."""
    parts = []
    first_plot = True
    for step in steps:
        body = f"<h2>{html.escape(step.title)}</h2><p>{_markdown_to_html(step.text)}</p>"
        if step.figure is not None:
            body += step.figure.to_html(full_html=False, include_plotlyjs=first_plot)
            first_plot = False
        if step.image is not None:
            body += f'<img alt="{html.escape(step.title)}" src="{_png_data_uri(step.image)}">'
        parts.append(f"<section>{body}</section>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:60em;"
        "margin:2em auto;padding:0 1em}section{margin-bottom:2.5em}img{max-width:420px}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p><em>CXR Negation Explorer handout. "
        "Research and teaching material; not for diagnosis. The phantom models are trained on "
        "synthetic radiographs.</em></p>" + "".join(parts) + "</body></html>"
    )
