"""Attribution tab: which pixels and words move the affirmed and the negated prompt's score.

Library work is in :mod:`explorer.attribution`; overlays come from :mod:`explorer.plots`; the
ground-truth lesion of a shipped phantom example from :mod:`explorer.phantom`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from explorer.attribution import (
    BASELINES,
    DEFAULT_BASELINES,
    IMAGE_METHODS,
    METHODS,
    describe_params,
    uses_baseline,
)
from explorer.attribution.options import TEXT_METHOD_OF
from explorer.errors import ExplorerError
from explorer.ui.common import (
    MAX_PROMPT_CHARS,
    clear_error_marks,
    load_model,
    number_in,
    reporter,
    upload_pixels,
    user_error,
)
from explorer.ui.serving import CONCURRENCY, endpoint

ATTRIBUTION_HELP = (
    "Which pixels and which words drive the similarity? Red marks evidence *for* the prompt, "
    "blue evidence *against* it (integrated gradients and occlusion are signed; Grad-CAM shows "
    "positive evidence only). The third map is the affirmed map minus the negated one: where "
    "the image speaks for *there is X* rather than *there is no X*. For the phantom examples the "
    "green outline is the true lesion. How far to trust them: for the phantom models, the "
    "strongest point of an occlusion or IG map falls on the true lesion of a held-out phantom for "
    "only about 4 in 10 of the findings the model gets right (large signs such as the heart "
    "almost always, nodules and rib fractures rarely); for the real-film models, on the 42 expert "
    "boxes of the real NIH test films, about 1 in 4 with occlusion, 1 in 8 with IG and 1 in 20 "
    "with Grad-CAM (see the README's pointing games). Read a map as what moved this "
    "model's score, not as an outline of the lesion. The *baseline* is the image IG starts "
    "from and the paint occlusion hides regions with: black, the image's mean grey, or a blur "
    "of the image (keeps the anatomy, wipes out small signs). Maps change with it; comparing "
    "them is a lesson in itself. *attention* reads a transformer's own attention "
    "(gradient-weighted rollout, Chefer et al. 2021) over the image patches and, beside it, over "
    "the words; a model with a convolutional image tower (the embedded ones) has words only. "
    "*cells* is not computed after the fact: *phantom-cells* sums its image embedding from "
    "10 x 10 image cells, so its similarity splits exactly into the cells' shares, and the map "
    "is that split. It was taught with the phantoms' lesion masks to put the shares on the "
    "lesion: on held-out phantoms its peak lands on the lesion for about 6 in 10 findings, on "
    "the real NIH boxes about 1 in 7, no better than the other maps. Other models have no such "
    "split and show the words only."
)
#: The method the tab opens on (the README says why: occlusion reads best on the phantoms).
OPENING_METHOD = "occlusion"
#: The finding the tab opens on.
OPENING_FINDING = "Pleural Effusion"


def lesion_mask(
    path: str, finding: str | None, shape: tuple[int, int], pixels: np.ndarray | None = None
) -> np.ndarray | None:
    """The true lesion of ``finding`` when ``path`` is a phantom whose masks are known, else None.

    A shipped phantom example is found by its name; a phantom of a batch (opened from the Batch
    tab) by its name and its ``pixels`` (:func:`explorer.phantom.seeded_phantom`). Which phantom
    masks belong to a CheXpert finding is the phantom package's business
    (:meth:`explorer.phantom.Phantom.mask_for`); a mask of another size than the shown image
    is not drawn.
    """
    from explorer.phantom import seeded_phantom, shipped_phantom

    phantom = shipped_phantom(Path(path).name)
    if phantom is None and pixels is not None:
        phantom = seeded_phantom(path, pixels)
    if phantom is None or not finding:
        return None
    mask = phantom.mask_for(finding)
    return mask if mask is not None and mask.shape == shape else None


def baseline_control(method: str):
    """Show the baseline choice only for the methods that use one (IG and occlusion)."""
    return gr.update(visible=uses_baseline(method))


@endpoint("attribute", gpu_seconds=120, fair=True)
def explain(
    path: str | None,
    model_name: str | None,
    finding: str | None,
    method: str,
    opacity: float,
    show_mask: bool,
    baseline: str | None = None,
    check_trust: bool = True,
    request: gr.Request = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects it
):
    """Maps for the affirmed and negated prompt, their difference, token weights, and the
    domain guard's banner (how typical the image is of the model's training images).

    ``baseline`` is what IG integrates from and occlusion paints (Grad-CAM has none); None
    = the method's default. ``check_trust`` adds, under the parameters, whether the affirmed
    map can be trusted (:mod:`explorer.attribution.checks`: the method run again on a model
    whose top image layers are scrambled, and deletion / insertion curves).
    """
    from explorer.attribution import attribute_pair, attribute_text
    from explorer.attribution.budget import attribution_budget
    from explorer.attribution.image import why_no_image_map
    from explorer.plots import mask_outline, overlay, with_colour_bar
    from explorer.ui.findings_view import check_domain
    from explorer.vocab.prompts import prompt_pair

    pixels = upload_pixels(path)
    if not finding or not finding.strip():
        raise user_error("Type or pick a finding to explain.")
    if len(finding) > MAX_PROMPT_CHARS:
        raise user_error(f"The finding must be at most {MAX_PROMPT_CHARS} characters.")
    alpha = number_in(opacity, "Overlay opacity", 0, 1, 0.6)
    model, notice = load_model(model_name)
    say = reporter(progress, request)
    text_method = TEXT_METHOD_OF.get(method, "layer_ig")
    # Attention needs a transformer image tower; without one the words' attention stands alone.
    no_map = why_no_image_map(model, method)
    try:
        pair = prompt_pair(finding.strip(), "there_is")
        say(0.0, "Measuring what this model affords here (once per model)")
        budget = attribution_budget(model)
        chosen = budget.image_options(method)
        if baseline and uses_baseline(method):
            chosen["baseline"] = baseline
        if no_map is None:
            first, second, diff = attribute_pair(
                model,
                pixels,
                pair.affirmed,
                pair.negated,
                method,
                progress=lambda f, m: say(0.8 * f, m),
                **chosen,
            )
        tokens_a, tokens_n = (
            attribute_text(
                model,
                pixels,
                text,
                method=text_method,
                progress=lambda f, m, at=at: say(at + 0.05 * f, f"words: {m}"),
                **budget.text_options(text_method),
            )
            for text, at in ((pair.affirmed, 0.8), (pair.negated, 0.85))
        )
        guard = check_domain(model, pixels)
        trust = None
        if no_map is not None:
            return (
                None,
                None,
                None,
                *(_highlights(t) for t in (tokens_a, tokens_n)),
                f"**{model.name}**, **{METHODS[method].display}**: {no_map}  \n"
                f"words: {describe_params(tokens_a.params)}."
                + (f"  \n⚠️ {notice}" if notice else ""),
                guard,
            )
        if check_trust:
            from explorer.attribution.checks import trust_report

            say(0.9, "Can the map be trusted? (the method on a scrambled model)")
            trust = trust_report(model, pixels, pair.affirmed, method, attribution=first, **chosen)
    except ExplorerError as err:
        raise user_error(err) from None
    images = [
        overlay(pixels, a, alpha, signed)
        for a, signed in (
            (first.attribution, first.signed),
            (second.attribution, second.signed),
            (diff, True),
        )
    ]
    mask = lesion_mask(path, pair.finding, pixels.shape, pixels) if show_mask else None
    if mask is not None:
        images = [mask_outline(im, mask) for im in images]
    signs = (first.signed, second.signed, True)
    images = [with_colour_bar(im, signed) for im, signed in zip(images, signs, strict=True)]
    params = describe_params(first.params)
    delta = (
        f"; IG completeness gap {first.relative_delta:.1%}"
        if first.relative_delta is not None
        else ""
    )
    spent = budget.sentence(method)
    info = (
        f"**{model.name}**, **{METHODS[method].display}** ({params}){delta}.  \n"
        + (f"{spent}  \n" if spent else "")
        + f"similarity: “{pair.affirmed}” {first.score:.4f} · “{pair.negated}” {second.score:.4f}"
        + (f"  \n{trust.sentence()}" if trust else "")
        + (f"  \n⚠️ {notice}" if notice else "")
        + (
            ""
            if mask is not None or not show_mask
            else "  \n(no ground-truth mask: not a phantom example or a batch phantom)"
        )
    )
    return (
        images[0],
        images[1],
        images[2],
        _highlights(tokens_a),
        _highlights(tokens_n),
        info,
        guard,
    )


def _highlights(tokens) -> list:
    """A token attribution's words as the highlighted-text value."""
    from explorer.plots import token_highlights

    words = tokens.words()
    return token_highlights([w for w, _ in words], [v for _, v in words])


def build_tab(upload: gr.File, model_names: list[str], default_model: str | None) -> gr.Dropdown:
    """The Attribution tab (called inside ``gr.Tab``); ``upload`` is the shared image input.

    Returns:
        The finding dropdown (the Batch tab opens a clicked case's finding in it).
    """
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    gr.Markdown(ATTRIBUTION_HELP)
    with gr.Row():
        model = gr.Dropdown(model_names, value=default_model, label="Model")
        finding = gr.Dropdown(
            list(CHEXPERT_FINDINGS),
            value=OPENING_FINDING,
            allow_custom_value=True,
            label="Finding",
        )
        method = gr.Radio(list(IMAGE_METHODS), value=OPENING_METHOD, label="Method")
    with gr.Row():
        opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity")
        show_mask = gr.Checkbox(
            value=True, label="Show ground-truth lesion mask (phantom examples)"
        )
        baseline = gr.Radio(
            list(BASELINES),
            value=DEFAULT_BASELINES[OPENING_METHOD],
            label="Baseline (IG starts from it, occlusion paints with it)",
        )
        check_trust = gr.Checkbox(
            value=True,
            label="Check whether the map can be trusted (runs the method once more)",
        )
        explain_btn = gr.Button("Explain", variant="primary")
    info = gr.Markdown(label="Method and parameters")
    guard = gr.Markdown(label="Domain check", elem_id="attribution-guard")
    with gr.Row():
        map_a = gr.Image(label="Affirmed prompt", type="numpy", interactive=False, format="png")
        map_n = gr.Image(label="Negated prompt", type="numpy", interactive=False, format="png")
        map_d = gr.Image(
            label="Difference (affirmed − negated)", type="numpy", interactive=False, format="png"
        )
    with gr.Row():
        tok_a = gr.HighlightedText(label="Words: affirmed prompt", color_map=None)
        tok_n = gr.HighlightedText(label="Words: negated prompt", color_map=None)
    method.change(baseline_control, method, baseline, api_name=False, queue=False)
    outputs = [map_a, map_n, map_d, tok_a, tok_n, info, guard]
    clear_error_marks(upload.change, outputs)
    explain_btn.click(
        explain,
        inputs=[upload, model, finding, method, opacity, show_mask, baseline, check_trust],
        outputs=outputs,
        api_name="attribute",
        concurrency_limit=CONCURRENCY["attribute"],
    )
    return finding
