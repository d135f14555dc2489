"""Report map tab: layout and handlers (the library work is in :mod:`explorer.reports`).

Opened maps and corpora stay in memory in :mod:`explorer.reports.store` (a few maps, least
recently used dropped first).

The scatter is drawn by plotly.js inside a ``gr.HTML`` component, because ``gr.Plot`` sends no
selection events: the page's JavaScript turns a lasso / box selection or a click into a
``select`` event carrying the selected rows, and :func:`select_reports` fills the table.
plotly.js is served from the installed ``plotly`` package, so the map also works offline.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import gradio as gr
import numpy as np

from explorer.errors import ExplorerError
from explorer.reports.store import MAPS, cached_corpus
from explorer.ui.common import (
    clear_error_marks,
    csv_download,
    load_model,
    number_in,
    reporter,
    table_rows,
    upload_pixels,
    user_error,
)
from explorer.ui.serving import endpoint, scratch_dir, scratch_root, static_copy
from explorer.vocab.labels import LABEL_NAMES

log = logging.getLogger(__name__)

CORPORA = {
    "IU / Open-i reports (3,955 real reports)": "iu",
    "Phantom reports (2,000 synthetic)": "phantom:2000",
    "Your own table (CSV / Parquet upload)": "upload",
}
DEFAULT_CORPUS = next(iter(CORPORA))
#: Uploaded tables are embedded in the request; keep them small enough to stay interactive.
MAX_UPLOAD_REPORTS = 20_000
#: Beyond this many points the hover shows labels only, keeping the page light.
HOVER_TEXT_MAX_POINTS = 20_000
MAP_HELP = (
    "Each dot is a report, placed by UMAP from the selected model's **text embedding** of it and "
    "coloured by its **soft-label cluster** (reports grouped by the findings they affirm and "
    "deny, the same clinical similarity the negation-aware training uses). If the model's text "
    "space is organised by clinical meaning, colours form islands; if it is negation-blind, "
    "*no effusion* sits next to *effusion*. Upload an image above and press **Place my image** "
    "to see where it lands (★) and its nearest reports. Draw a lasso or box (or click a dot) to "
    "list reports below. The *alignment* figure is the share of each report's 10 nearest "
    "neighbours that belong to its own cluster, against the share expected by chance."
)
_PLOTLY_JS = Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js"

_JS = """
const draw = () => {
  const box = element.querySelector('.cxr-map');
  if (!box || !props.value || !window.Plotly) return;
  let fig;
  try { fig = JSON.parse(props.value); } catch (e) { return; }
  window.Plotly.react(box, fig.data, fig.layout, {responsive: true, displaylogo: false});
  if (box.dataset.bound) return;
  box.dataset.bound = '1';
  const rows = (ev) => (ev && ev.points ? ev.points : [])
    .filter((p) => p.customdata !== undefined && p.customdata !== null)
    .map((p) => Number(p.customdata));
  box.on('plotly_selected', (ev) => {
    const idx = rows(ev);
    if (idx.length) trigger('select', {index: idx, value: idx.length, selected: true});
  });
  box.on('plotly_click', (ev) => {
    const idx = rows(ev);
    if (idx.length) trigger('select', {index: idx, value: idx.length, selected: true});
  });
};
draw();
watch('value', draw);
"""


def _figure_json(report_map, colour_by: str, placement=None) -> str:
    from explorer.plots import map_figure

    fig = map_figure(
        report_map,
        colour_by=colour_by or "cluster",
        image_xy=placement.xy if placement else None,
        neighbour_idx=[n.index for n in placement.neighbours] if placement else (),
        hover_chars=220 if len(report_map) <= HOVER_TEXT_MAX_POINTS else 0,
    )
    return fig.to_json()


def _summary(report_map, notice: str | None) -> str:
    a = report_map.alignment
    t = report_map.timings
    lines = [
        f"**{report_map.corpus}**, {len(report_map):,} reports, labels from "
        f"{report_map.label_source}; model **{report_map.model}**.",
        f"**Alignment** (k={a.k}): {a.cluster_agreement:.1%} of neighbours share the report's "
        f"soft-label cluster (chance {a.cluster_chance:.1%}, lift ×{a.lift:.2f}); mean clinical "
        f"similarity to neighbours {a.soft_similarity:.2f} (random {a.soft_chance:.2f}).",
    ]
    caution = a.caution(len(report_map))
    if caution:
        lines.insert(2, f"⚠ {caution}")
    if report_map.truncated:
        limit = report_map.text_limit
        lines.insert(
            2,
            f"⚠ {report_map.truncated:,} of {len(report_map):,} reports are longer than "
            f"{report_map.model}'s {limit} tokens: the map places them by their first "
            f"{limit} tokens only.",
        )
    if t:
        lines.append("Built in " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ".")
    if report_map.licence:
        lines.append(f"*{report_map.licence}*")
    if notice:
        lines.insert(0, f"⚠ {notice}")
    return "\n\n".join(lines)


def _cluster_rows(report_map) -> list[list]:
    return [[c.id, c.name, c.size] for c in report_map.clusters]


def _build(corpus, model, progress=None, root: Path | None = None):
    """Build (or open from disk) a map, first saying on the bar how long it will take."""
    from explorer.reports.map import build_map, estimate_build

    estimate = None
    if progress is not None:
        estimate = estimate_build(corpus, model, root=root)
        progress(0.0, estimate.sentence(model.name))
    return build_map(corpus, model, progress=progress, root=root, estimate=estimate)


def _own_table(table_path: str | None, text_column: str | None):
    """The uploaded report table as a corpus (at most :data:`MAX_UPLOAD_REPORTS` rows)."""
    from explorer.reports.corpus import table_corpus

    if not table_path:
        raise user_error("Upload a CSV or Parquet file of reports first.")
    return table_corpus(
        Path(table_path),
        text_column=(text_column or "").strip() or None,
        filename=Path(table_path).name,
        max_rows=MAX_UPLOAD_REPORTS,
    )


def _corpus_and_key(spec: str, model, table_path=None, text_column=None, request=None):
    """``(corpus, key, owner)`` of a map: the key it is kept under in :data:`MAPS`, and, for
    an uploaded table, its owner, the uploader's session (part of the key, so another person's
    tables never push it out; they share a memory budget instead). A named corpus's map is
    shared: no owner."""
    if spec != "upload":
        return cached_corpus(spec), f"{spec}:{model.name}", None
    corpus = _own_table(table_path, text_column)
    owner = getattr(request, "session_hash", None) or "no-session"
    return corpus, f"upload:{owner}:{corpus.content_hash}:{model.name}", owner


def _map_of(spec: str, model, progress=None, table_path=None, text_column=None, request=None):
    """``(key, map)`` under a loaded model: kept in memory, else built and kept. A named
    corpus's map is cached on disk too; an uploaded table's is built in a scratch folder that
    goes when the map leaves :data:`MAPS`. Opening, the start-up warm-up and placing all come
    here."""
    corpus, key, owner = _corpus_and_key(spec, model, table_path, text_column, request)
    report_map = MAPS.get(key)
    if report_map is None:
        temp_dir = str(scratch_dir()) if owner else None
        try:
            report_map = _build(corpus, model, progress, Path(temp_dir) if temp_dir else None)
        except Exception:
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        MAPS.put(key, report_map, temp_dir, owner=owner)
    return key, report_map


def forget_map(key: str | None) -> None:
    """The map key's state expired (its TTL, or the page closed): an uploaded table's map goes
    with it; a shared map of a named corpus stays for everyone."""
    if key and key.startswith("upload:"):
        MAPS.drop(key)


def map_estimate(
    corpus_choice: str | None,
    table_path: str | None,
    text_column: str | None,
    model_name: str | None,
    request: gr.Request = None,
) -> str:
    """Before **Open map** is pressed: opens at once, or how long its first build takes here."""
    from explorer.reports.map import estimate_build

    spec = CORPORA.get(corpus_choice or DEFAULT_CORPUS, corpus_choice or "")
    if spec == "upload" and not table_path:
        return "Upload a report table to map it."
    model, _ = load_model(model_name)
    try:
        corpus, key, owner = _corpus_and_key(spec, model, table_path, text_column, request)
        if MAPS.get(key) is not None:
            return f"The map of these {len(corpus):,} reports for {model.name} is open: it shows at once."
        root = scratch_root() if owner else None  # an uploaded table's map is never on disk
        return estimate_build(corpus, model, root=root).sentence(model.name)
    except ExplorerError as err:
        return f"⚠ {err}"


@endpoint("map_open", gpu_seconds=120, fair=True)
def open_map(
    corpus_choice: str,
    table_path: str | None,
    text_column: str | None,
    model_name: str | None,
    colour_by: str | None,
    request: gr.Request = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects it
):
    """Open (building once if needed) a map; returns figure JSON, summary, clusters, key.

    The bar first says how long a build will take; closing the page stops the build (the
    embedded chunks stay on disk and the next build resumes there).
    """
    spec = CORPORA.get(corpus_choice, corpus_choice)
    model, notice = load_model(model_name)
    try:
        key, report_map = _map_of(
            spec, model, reporter(progress, request), table_path, text_column, request
        )
    except ExplorerError as err:
        raise user_error(err) from None
    figure = _figure_json(report_map, colour_by or "cluster")
    return figure, _summary(report_map, notice), _cluster_rows(report_map), key


def prebuild_default() -> threading.Thread:
    """Build the default map (IU reports, default model) in a background thread.

    ``app.py`` calls this on a Space or when ``EXPLORER_PREBUILD_MAP=1``, so the first
    visitor opens the map instantly; the built map is cached on disk either way.
    """

    def work() -> None:
        from explorer.models import default_registry

        try:
            reg = default_registry()
            _map_of(CORPORA[DEFAULT_CORPUS], reg.load(reg.default))
            log.info("default report map ready")
        except Exception:  # a failed warm-up must not stop the app; "Open map" retries
            log.exception("building the default report map failed")

    # Import plotly here, not in the thread: two threads importing its dependencies at once can
    # deadlock in importlib.
    import plotly.graph_objects  # noqa: F401

    thread = threading.Thread(target=work, name="prebuild-map", daemon=True)
    thread.start()
    return thread


def _opened(key: str | None):
    report_map = MAPS.get(key) if key else None
    if report_map is None:
        raise user_error('Open a map first (press "Open map").')
    return report_map


def recolour(key: str | None, colour_by: str | None) -> str:
    """Redraw the open map with another colouring (nothing to do before a map is open)."""
    report_map = MAPS.get(key) if key else None
    if report_map is None:
        return gr.skip()
    try:
        return _figure_json(report_map, colour_by or "cluster")
    except ValueError as err:
        raise user_error(f"Cannot colour by '{colour_by}': {err}.") from None


#: The Reports menu's choice for an uploaded table.
OWN_TABLE = next(c for c, spec in CORPORA.items() if spec == "upload")


def use_own_table() -> gr.Dropdown:
    """Switch the Reports menu to the uploaded table (uploading one means: map this)."""
    return gr.Dropdown(value=OWN_TABLE)


def _named_map(corpus_choice: str | None, model_name: str | None):
    """The map of a named corpus (not an uploaded table) under a model, opened if needed."""
    spec = CORPORA.get(corpus_choice or DEFAULT_CORPUS, corpus_choice or "")
    if spec == "upload" or spec not in CORPORA.values():
        raise user_error(
            'Open a map of your own table first (press "Open map"); a call can name one of '
            f"these corpora instead: {', '.join(c for c, v in CORPORA.items() if v != 'upload')}."
        )
    model, _ = load_model(model_name)
    try:
        return _map_of(spec, model)[1]
    except ExplorerError as err:
        raise user_error(err) from None


@endpoint("map_place", gpu_seconds=60)
def place_image(
    key: str | None,
    image_path: str | None,
    colour_by: str | None,
    k: float = 10,
    corpus_choice: str | None = None,
    model_name: str | None = None,
):
    """Place the uploaded image in a map; figure JSON and its nearest reports.

    The map is the one open in this session (``key``); a caller without one (a fresh API
    client) names a corpus and a model instead, and the map is opened for it.
    """
    report_map = MAPS.get(key) if key else None
    if report_map is None:
        report_map = _named_map(corpus_choice, model_name)
    pixels = upload_pixels(image_path)
    model, _ = load_model(report_map.model)
    emb = model.embed_image(pixels).float().cpu().numpy()[0]
    placement = report_map.place(emb, int(number_in(k, "Nearest reports", 1, 50, 10)))
    rows = [[n.similarity, n.id, n.text] for n in placement.neighbours]
    return _figure_json(report_map, colour_by or "cluster", placement), rows


def _selection_outputs(report_map, indices):
    table, counts = report_map.selection(indices)
    if table.empty:
        return table, counts, None, "Nothing selected."
    return (
        table,
        counts,
        csv_download(table, "selected-reports"),
        f"{len(table):,} reports selected.",
    )


def select_reports(key: str | None, evt: gr.SelectData):
    """Browser selection (lasso, box or click on the map) -> table, counts, CSV."""
    report_map = _opened(key)
    index = evt.index if isinstance(evt.index, list) else [evt.index]
    try:
        indices = [int(i) for i in index]
    except (TypeError, ValueError):
        raise user_error("The selection could not be read.") from None
    return _selection_outputs(report_map, indices)


def select_cluster(key: str | None, cluster: str | None):
    """All reports of one soft-label cluster -> table, counts, CSV (also the API twin)."""
    report_map = _opened(key)
    names = {c.name: c.id for c in report_map.clusters}
    if cluster not in names:
        raise user_error(f"No cluster named '{cluster}' in this map.")
    return _selection_outputs(report_map, np.flatnonzero(report_map.assignment == names[cluster]))


def cluster_choices(rows) -> gr.Dropdown:
    """The opened map's cluster names as the choices of the cluster dropdown."""
    names = [r[1] for r in table_rows(rows)]
    return gr.Dropdown(choices=names, value=None)


def build_tab(
    upload: gr.File,
    model_names: list[str],
    default_model: str | None,
    tab: gr.Tab,
    state_ttl_s: float | None = None,
) -> None:
    """The Report map tab (called inside ``tab``); ``upload`` is the shared image input.

    ``state_ttl_s``: how long the open map's key lives after its last use (the upload TTL);
    a map of an uploaded table is dropped with it.
    """
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    plotly_js = static_copy(_PLOTLY_JS)  # served from a temp folder, not the install path
    gr.set_static_paths([str(plotly_js.parent)])
    gr.Markdown(MAP_HELP)
    with gr.Row():
        corpus = gr.Dropdown(
            list(CORPORA), value=DEFAULT_CORPUS, label="Reports", elem_id="map-corpus"
        )
        model = gr.Dropdown(model_names, value=default_model, label="Model (text embeddings)")
        colour = gr.Dropdown(
            ["cluster", "disagreement", *CHEXPERT_FINDINGS],
            value="cluster",
            label="Colour by (cluster, labeler-vs-MeSH disagreement, or a finding)",
        )
    with gr.Accordion("Your own reports (CSV / Parquet)", open=False):
        table_file = gr.File(
            label="Report table",
            file_types=[".csv", ".tsv", ".parquet"],
            type="filepath",
            elem_id="map-table",
        )
        text_column = gr.Textbox(
            label="Text column (guessed from 'report', 'text', 'findings'... when empty)"
        )
        gr.Markdown(
            "Columns named like CheXpert findings (values 1 / 0 / -1 / blank) are used as labels; "
            "otherwise the built-in labeler labels the text. The table is processed in memory "
            "and in a temporary folder that is deleted; nothing is kept."
        )
    with gr.Row():
        open_btn = gr.Button("Open map", variant="primary")
        place_btn = gr.Button("Place my image")
        k = gr.Slider(1, 50, value=10, step=1, label="Nearest reports")
    estimate = gr.Markdown(elem_id="map-estimate")
    key = gr.State(None, time_to_live=state_ttl_s, delete_callback=forget_map)
    summary = gr.Markdown()
    scatter = gr.HTML(
        value="",
        html_template="<div class='cxr-map' style='width:100%;min-height:620px'></div>",
        js_on_load=_JS,
        head=f'<script src="/gradio_api/file={plotly_js}"></script>',
        label="Report map",
    )
    with gr.Row():
        with gr.Column(scale=1):
            clusters = gr.Dataframe(
                headers=["id", "cluster", "reports"], label="Soft-label clusters", interactive=False
            )
            pick = gr.Dropdown([], label="List a cluster's reports", allow_custom_value=True)
        with gr.Column(scale=2):
            neighbours = gr.Dataframe(
                headers=["similarity", "id", "report"],
                label="Nearest reports to your image",
                interactive=False,
                wrap=True,
            )
    sel_note = gr.Markdown()
    with gr.Row():
        # Headers before anything is selected (an empty table would show "1 2 3").
        selected = gr.Dataframe(
            headers=["id", "cluster", "positive", "report"],
            label="Selected reports",
            interactive=False,
            wrap=True,
        )
        counts = gr.Dataframe(
            headers=["finding", *LABEL_NAMES.values()],
            label="Findings in the selection",
            interactive=False,
        )
    sel_csv = gr.File(label="Download the selection (CSV)")

    # An uploaded table is what the person wants mapped: the Reports menu follows it.
    table_file.upload(use_own_table, outputs=corpus, api_name=False, queue=False)
    # How long Open map will take, said before it is pressed.
    gr.on(
        [tab.select, corpus.change, model.change, table_file.change],
        map_estimate,
        inputs=[corpus, table_file, text_column, model],
        outputs=estimate,
        show_progress="hidden",
        trigger_mode="always_last",  # the last choice wins, even while one is being measured
        api_name=False,
    )
    opened = open_btn.click(
        open_map,
        inputs=[corpus, table_file, text_column, model, colour],
        outputs=[scatter, summary, clusters, key],
        show_progress_on=scatter,
        api_name="map_open",
        concurrency_limit=1,
    )
    opened.then(cluster_choices, inputs=clusters, outputs=pick, api_name=False)
    colour.change(recolour, inputs=[key, colour], outputs=scatter, api_name="map_colour")
    clear_error_marks(upload.change, [scatter, neighbours])
    for changed in (corpus.change, table_file.change, model.change):
        clear_error_marks(changed, [scatter, summary, clusters])
    place_btn.click(
        place_image,
        inputs=[key, upload, colour, k, corpus, model],
        outputs=[scatter, neighbours],
        api_name="map_place",
        concurrency_limit=2,
    )
    scatter.select(
        select_reports,
        inputs=key,
        outputs=[selected, counts, sel_csv, sel_note],
        api_name=False,
    )
    pick.input(
        select_cluster,
        inputs=[key, pick],
        outputs=[selected, counts, sel_csv, sel_note],
        api_name="map_cluster",
    )


__all__ = ["build_tab", "open_map", "place_image", "select_cluster", "select_reports"]
