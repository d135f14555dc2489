"""The app served for real on a free port and driven through gradio_client."""

from __future__ import annotations

import pytest

gradio = pytest.importorskip("gradio")
from conftest import default_model_ready  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from explorer.vocab.labels import CHEXPERT_FINDINGS  # noqa: E402


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def _meta(rows) -> dict[str, str]:
    data = rows["data"] if isinstance(rows, dict) else rows
    return {r[0]: r[1] for r in data}


def test_inspect_real_dicom(client, samples_dir):
    image, rows = client.predict(
        handle_file(str(samples_dir / "siim-pneumothorax-sample.dcm")), api_name="/inspect"
    )
    meta = _meta(rows)
    assert meta["format"] == "DICOM" and meta["width"] == "1024"
    assert image  # the displayed image came back


def test_bad_file_gets_sentence_and_server_keeps_serving(client, samples_dir, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(bad)), api_name="/inspect")
    message = str(info.value)
    assert "image" in message.lower() and "Traceback" not in message
    _, rows = client.predict(
        handle_file(str(samples_dir / "00000001_000.png")), api_name="/inspect"
    )
    assert _meta(rows)["format"] == "PNG"


def test_models_endpoint_lists_registry(client):
    table = client.predict(api_name="/models")
    data = table["data"] if isinstance(table, dict) else table
    assert any(row[0].startswith("phantom-negaware") for row in data)


needs_default = pytest.mark.skipif(
    not default_model_ready(), reason="embedded default model not built"
)


@needs_default
def test_findings_on_real_png_and_dicom(client, samples_dir):
    for name in ("00000001_000.png", "siim-pneumothorax-sample-monochrome1.dcm"):
        out = client.predict(
            handle_file(str(samples_dir / name)),
            "phantom-negaware",
            "phantom-infonce",
            "left lower lobe collapse",
            ["there_is", "bare"],
            "",
            api_name="/findings",
        )
        table = out[1]["data"] if isinstance(out[1], dict) else out[1]
        assert len(table) == 15  # 14 CheXpert findings + the typed one
        probs = [float(row[1]) for row in table]
        assert all(0.0 <= p <= 1.0 for p in probs)
        second = out[5]["data"] if isinstance(out[5], dict) else out[5]
        assert len(second) == 15
        assert "phantom-negaware" in out[3] and "not for diagnosis" in out[3]


@needs_default
@pytest.mark.parametrize("method", ["gradcam", "occlusion", "ig"])
@pytest.mark.slow
def test_attribution_methods_on_phantom_example(client, method):
    from explorer.paths import examples_dir

    path = examples_dir() / "phantom-left-effusion.png"
    a, n, d, tok_a, tok_n, info, banner = client.predict(
        handle_file(str(path)),
        "phantom-negaware",
        "Pleural Effusion",
        method,
        0.6,
        True,
        api_name="/attribute",
    )
    assert a and n and d
    assert all(str(m).endswith(".png") for m in (a, n, d))  # what people save, not WebP
    from explorer.attribution import METHODS

    assert METHODS[method].display in info and "similarity" in info
    assert "internal_batch_size" not in info and "scaled=" not in info  # words, not kwargs
    assert "Within phantom-negaware's training domain" in banner  # a phantom: no warning
    words = [item["token"] for item in (tok_n["value"] if isinstance(tok_n, dict) else tok_n)]
    assert "no" in words


@needs_default
def test_attention_on_a_convolutional_model_gives_the_words_and_says_why(client):
    from explorer.paths import examples_dir

    path = examples_dir() / "phantom-left-effusion.png"
    a, n, d, tok_a, tok_n, info, banner = client.predict(
        handle_file(str(path)),
        "phantom-negaware",
        "Pleural Effusion",
        "attention",
        0.6,
        True,
        api_name="/attribute",
    )
    assert a is None and n is None and d is None  # no image map: the tower is a ConvNeXt
    assert "Attention rollout" in info and "convolutional" in info
    assert "attention layers rolled out from the class token" in info
    words = [item["token"] for item in (tok_n["value"] if isinstance(tok_n, dict) else tok_n)]
    assert "no" in words and "effusion" in words


@needs_default
def test_cell_shares_on_the_cell_pooled_model_and_why_not_elsewhere(client):
    from explorer.paths import examples_dir

    path = handle_file(str(examples_dir() / "phantom-left-effusion.png"))
    a, n, d, _, tok_n, info, _ = client.predict(
        path, "phantom-cells", "Pleural Effusion", "cells", 0.6, True, api_name="/attribute"
    )
    assert a and n and d  # the cell-pooled model's own split of its similarity
    assert "Cell shares" in info and "split exactly over a 10 x 10 grid" in info
    words = [item["token"] for item in (tok_n["value"] if isinstance(tok_n, dict) else tok_n)]
    assert "effusion" in words
    a, n, d, *_, info, _ = client.predict(
        path, "phantom-negaware", "Pleural Effusion", "cells", 0.6, True, api_name="/attribute"
    )
    assert a is None and n is None and d is None  # pooled before it meets the text: words only
    assert "no cell shares" in info


@needs_default
@pytest.mark.slow
def test_attribution_baseline_is_used_and_stated(client):
    from explorer.paths import examples_dir

    path = handle_file(str(examples_dir() / "phantom-left-effusion.png"))
    args = (path, "phantom-negaware", "Pleural Effusion", "occlusion", 0.6, False)
    *_, info, _ = client.predict(*args, "blur", api_name="/attribute")
    assert "baseline: gaussian blur of the image" in info
    *_, info, _ = client.predict(*args, "black", api_name="/attribute")
    assert "baseline: black (all zeros)" in info


@needs_default
def test_domain_banner_for_a_real_film_and_not_for_a_phantom(client, tmp_path):
    """The guard warns beside the chart for a real film under a phantom model, in both tabs."""
    from PIL import Image

    from explorer.paths import examples_dir
    from explorer.phantom import render_phantom
    from explorer.phantom.splits import HELDOUT_SEED

    held_out = render_phantom(HELDOUT_SEED, size=160).image  # never trained on
    Image.fromarray((held_out * 255).round().astype("uint8")).save(tmp_path / "held-out.png")
    real = handle_file(str(examples_dir() / "00000001_000.png"))
    phantom = handle_file(str(tmp_path / "held-out.png"))
    args = ("phantom-negaware", "phantom-infonce", "", ["there_is"], "")
    *_, banner, banner2 = client.predict(real, *args, api_name="/findings")
    for text, name in ((banner, "phantom-negaware"), (banner2, "phantom-infonce")):
        assert "Not like this model's training images" in text
        assert f"Outside {name}'s training domain" in text and "typicality 0.0%" in text
    *_, banner, banner2 = client.predict(phantom, *args, api_name="/findings")
    assert "Outside" not in banner + banner2
    assert "Within phantom-negaware's training domain" in banner
    *_, banner = client.predict(
        real, "phantom-negaware", "Cardiomegaly", "gradcam", 0.5, False, api_name="/attribute"
    )
    assert "Outside phantom-negaware's training domain" in banner


@needs_default
def test_findings_api_takes_an_image_alone_and_names_its_outputs(client, samples_dir):
    """A programmer's first call: only the image; every other input has its default."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/findings", "/attribute"):
        assert all(p["parameter_has_default"] for p in api[name]["parameters"][1:]), name
        labels = [r["label"] for r in api[name]["returns"]]
        assert not any(str(label).startswith("value_") for label in labels), labels
    out = client.predict(handle_file(str(samples_dir / "00000001_000.png")), api_name="/findings")
    table = out[1]["data"] if isinstance(out[1], dict) else out[1]
    assert len(table) == 14 and "real-negaware" in out[3]  # the default model, all 14 findings
    assert "Within real-negaware's training domain" in out[9]


def test_findings_without_image_is_a_clear_error(client):
    with pytest.raises(Exception, match="upload a chest X-ray"):
        client.predict(None, "phantom-negaware", "", "", ["there_is"], "", api_name="/findings")


# --- report map -------------------------------------------------------------------------------

IU_CHOICE = "IU / Open-i reports (3,955 real reports)"


def _rows(table):
    return table["data"] if isinstance(table, dict) else table


@needs_default
@pytest.mark.slow
def test_report_map_on_iu_places_a_real_cxr_and_selects_a_cluster(client, samples_dir, app_url):
    import json

    pytest.importorskip("torchxrayvision")
    fig_json, summary, clusters = client.predict(
        IU_CHOICE, None, "", "phantom-negaware", "cluster", api_name="/map_open"
    )
    fig = json.loads(fig_json)
    assert len(fig["data"]) >= 2  # several clusters
    assert "Alignment" in summary and "phantom-negaware" in summary
    cluster_rows = _rows(clusters)
    assert sum(int(r[2]) for r in cluster_rows) > 3900

    fig_json, neighbours = client.predict(
        handle_file(str(samples_dir / "00000001_000.png")), "cluster", 5, api_name="/map_place"
    )
    names = [t.get("name") for t in json.loads(fig_json)["data"]]
    assert "your image" in names and "nearest reports" in names
    sims = [float(r[0]) for r in _rows(neighbours)]
    assert len(sims) == 5 and sims == sorted(sims, reverse=True)
    assert all(r[1] and r[2] for r in _rows(neighbours))  # ids and report texts

    # A fresh client places an image without opening a map first: it names corpus and model.
    fresh = Client(app_url, verbose=False)
    film = handle_file(str(samples_dir / "00000001_000.png"))
    fig_json, again = fresh.predict(
        film, "cluster", 5, IU_CHOICE, "phantom-negaware", api_name="/map_place"
    )
    assert [r[1] for r in _rows(again)] == [r[1] for r in _rows(neighbours)]
    with pytest.raises(Exception, match="Open a map of your own table first"):
        fresh.predict(
            film, "cluster", 5, "Your own table (CSV / Parquet upload)", api_name="/map_place"
        )

    name, size = cluster_rows[0][1], int(cluster_rows[0][2])
    table, counts, csv, note = client.predict(name, api_name="/map_cluster")
    assert len(_rows(table)) == size and f"{size:,} reports" in note
    assert csv


@needs_default
def test_report_map_of_an_uploaded_table_and_a_bad_one(client, tmp_path):
    good = tmp_path / "mine.csv"
    reports = ["Large right pleural effusion.", "No pneumothorax. Heart size is normal."] * 15
    good.write_text("id,report\n" + "\n".join(f"r{i},{t}" for i, t in enumerate(reports)))
    _, summary, clusters = client.predict(
        "Your own table (CSV / Parquet upload)",
        handle_file(str(good)),
        "",
        "phantom-negaware",
        "cluster",
        api_name="/map_open",
    )
    assert "30 reports" in summary and len(_rows(clusters)) >= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="say which column"):
        client.predict(
            "Your own table (CSV / Parquet upload)",
            handle_file(str(bad)),
            "",
            "phantom-negaware",
            "cluster",
            api_name="/map_open",
        )


def test_four_people_with_four_tables_each_keep_their_own_map(app_url, tmp_path):
    """The map store was one LRU of three for everyone: the fourth table pushed out the
    first person's map ("Open a map first"). Now each keeps theirs, within a memory budget."""
    people = []
    for k in range(4):
        table = tmp_path / f"table-{k}.csv"
        lines = [f"r{i},Person {k}: no pleural effusion, case {i}." for i in range(25)]
        table.write_text("id,report\n" + "\n".join(lines))
        person = Client(app_url, verbose=False)
        _, _, clusters = person.predict(
            "Your own table (CSV / Parquet upload)",
            handle_file(str(table)),
            "",
            "phantom-negaware",
            "cluster",
            api_name="/map_open",
        )
        people.append((person, _rows(clusters)[0][1]))
    for person, cluster in people:  # the first one too
        selected, *_ = person.predict(cluster, api_name="/map_cluster")
        assert len(_rows(selected)) >= 1


# --- batch ------------------------------------------------------------------------------------

PHANTOMS = "Phantoms with known labels"
UPLOADED = "My images (ZIP) + labels (CSV)"


@needs_default
@pytest.mark.slow
def test_batch_of_200_phantoms_matches_the_cli(client, capsys):
    import json
    import math

    from explorer.cli import main

    status, problems, metrics, _, cases, flips, csv = client.predict(
        PHANTOMS,
        None,
        None,
        200,
        "phantom-negaware",
        "phantom-infonce",
        0.5,
        True,
        api_name="/batch",
    )
    assert "200 images" in status and "negation errors" in status and "flip" in status
    assert not _rows(problems)
    ui_auc = {r[0]: r[3] for r in _rows(metrics)}
    assert (
        main(["evaluate", "--images", "phantom:200", "--model", "phantom-negaware", "--json"]) == 0
    )
    cli = json.loads(capsys.readouterr().out)
    for m in cli["metrics"]:
        a, b = ui_auc[m["finding"]], m["AUC"]
        if b is None or (isinstance(b, float) and math.isnan(b)):
            assert a in (None, "NaN", "nan") or (isinstance(a, float) and math.isnan(a))
        else:
            assert float(a) == pytest.approx(b, abs=1e-4)
    rows = _rows(cases)
    assert rows and all(r[5] in (True, "true", "True") for r in rows)  # errors only
    conf = [float(r[6]) for r in rows]
    assert conf == sorted(conf, reverse=True)
    assert _rows(flips) and csv


@needs_default
def test_batch_with_broken_files_and_bad_rows_lists_reasons(client, samples_dir, tmp_path):
    import zipfile

    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(samples_dir / "00000001_000.png", "00000001_000.png")
        zf.write(samples_dir / "siim-pneumothorax-sample.dcm", "siim.dcm")
        zf.writestr("broken.dcm", b"this is not a DICOM file")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,Pneumothorax,Cardiomegaly\n00000001_000.png,0,1\nsiim.dcm,1,maybe\nghost.png,1,0\n"
    )
    status, problems, metrics, *_ = client.predict(
        UPLOADED,
        handle_file(str(archive)),
        handle_file(str(labels)),
        200,
        "phantom-negaware",
        "",
        0.5,
        False,
        api_name="/batch",
    )
    reasons = {r[0]: r[1] for r in _rows(problems)}
    assert "broken.dcm" in reasons and "not among the images" in reasons["ghost.png"]
    assert any("row 3" in k and "maybe" in v for k, v in reasons.items())
    assert "2 images" in status


@needs_default
@pytest.mark.slow
def test_lesson_runs_offline_and_offers_a_handout(client):
    out = client.predict("phantom-negaware", "phantom-infonce", api_name="/lesson")
    texts, handout = out[:4], out[-1]
    assert texts[0].startswith("### 1.") and "cosine" in texts[0]
    assert "phantom-infonce" in texts[1] and "true effusion" in texts[2]
    assert "reports placed by phantom-negaware" in texts[3]
    with open(handout, encoding="utf-8") as fh:
        assert fh.read().count("<section>") == 4


def test_clearing_the_upload_clears_the_view_without_an_error(client):
    image, rows = client.predict(None, api_name="/inspect")
    assert image is None and not _meta(rows)


def test_selection_tables_name_their_columns_before_anything_is_selected():
    from explorer.ui import build_demo

    tables = {
        block.label: block
        for block in build_demo().blocks.values()
        if isinstance(block, gradio.Dataframe)
    }
    assert tables["Selected reports"].headers == ["id", "cluster", "positive", "report"]
    counts = tables["Findings in the selection"].headers
    assert counts[0] == "finding" and "positive" in counts and "negative" in counts


def test_attribution_outlines_the_phantom_lesion_of_every_mapped_finding(tmp_path, monkeypatch):
    """The attribution view asks the phantom package which masks a finding has (not substrings)."""
    import json

    from explorer.ui.attribution_view import lesion_mask

    effusion = "/uploads/abc/phantom-left-effusion.png"  # Gradio keeps the file name
    assert lesion_mask(effusion, "Pleural Effusion", (320, 320)).any()
    assert lesion_mask(effusion, "Pleural Effusion", (224, 224)) is None  # not the shown size
    assert lesion_mask(effusion, "Cardiomegaly", (320, 320)) is None
    assert lesion_mask("/uploads/abc/00000001_000.png", "Pleural Effusion", (320, 320)) is None
    cases = {"Edema": "pulmonary edema", "Fracture": "rib fracture", "Lung Lesion": "nodule/mass"}
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "phantoms.json").write_text(
        json.dumps(
            {
                f"case-{k}.png": {
                    "seed": 20 + k,
                    "size": 96,
                    "findings": [{"name": name, "laterality": None, "severity": None}],
                }
                for k, name in enumerate(cases.values())
            }
        )
    )
    monkeypatch.setenv("EXPLORER_ASSETS", str(tmp_path))
    for k, finding in enumerate(cases):
        assert lesion_mask(f"/uploads/x/case-{k}.png", finding, (96, 96)).any(), finding


def test_a_batch_phantom_opened_in_attribution_has_its_mask(tmp_path):
    """Batch phantoms were rendered with masks: opened from the batch, their lesion is drawn,
    while another image that merely carries such a name gets none."""
    import numpy as np

    from explorer.eval.batch import phantom_batch
    from explorer.imaging import load_radiograph
    from explorer.phantom import render_phantom
    from explorer.ui.attribution_view import lesion_mask

    batch = phantom_batch(6)
    k = next(i for i, row in enumerate(batch.labels) if np.nansum(row[1:] == 1) > 0)
    item = batch.images[k]
    finding = next(
        f
        for f, v in zip(CHEXPERT_FINDINGS, batch.labels[k], strict=True)
        if v == 1
        and f != "No Finding"
        and render_phantom(int(item.name[8:-4])).mask_for(f) is not None
    )
    path = tmp_path / item.name
    path.write_bytes(item.png_bytes())
    pixels = load_radiograph(path).pixels
    assert lesion_mask(str(path), finding, pixels.shape, pixels).any()
    other = np.flipud(pixels).copy()  # not that phantom's pixels, under its name
    assert lesion_mask(str(path), finding, other.shape, other) is None


def test_a_note_never_carries_over_to_the_next_case():
    """Mark case A with a note, open case B: B's form is empty; reopen A: A's mark is back."""
    from types import SimpleNamespace

    from explorer.ui.batch_view import mark_case, open_case

    images = [
        SimpleNamespace(name=n, png_bytes=lambda: b"not read here") for n in ("a.png", "b.png")
    ]
    state = {"batch": SimpleNamespace(images=images)}

    def click(row, marks):
        return open_case(state, marks, SimpleNamespace(row_value=row))

    *_, case_a, _, mark, note = click(["a.png", "Pneumothorax", "1", "0.31"], [])
    assert (mark, note) == (None, "")
    marks = mark_case(case_a, "model wrong", "missed the apical rim", [])
    *_, case_b, _, mark, note = click(["b.png", "Edema", "0", "0.72"], marks)
    assert (mark, note) == (None, "")  # the form is B's own: empty
    marks = mark_case(case_b, "label wrong", note, marks)
    *_, mark, note = click(["a.png", "Pneumothorax", "1", "0.31"], marks)
    assert (mark, note) == ("model wrong", "missed the apical rim")
    assert [r[5] for r in marks] == ["missed the apical rim", ""]  # each row its own note


def test_batch_shows_the_drop_zones_only_for_your_own_images():
    from explorer.ui.batch_view import SOURCES, source_controls

    shown = {s: tuple(c.visible for c in source_controls(s)) for s in SOURCES}
    assert shown == {
        "Phantoms with known labels": (True, False),
        "My images (ZIP) + labels (CSV)": (False, True),
        "Real NIH test films": (False, False),
    }


def test_example_gallery_lists_every_shipped_example_with_what_it_shows():
    from pathlib import Path

    from explorer.paths import examples_dir
    from explorer.ui.common import example_gallery

    gallery = dict((Path(p).name, c) for p, c in example_gallery())
    shipped = {p.name for p in examples_dir().iterdir() if p.suffix in (".png", ".dcm")}
    assert set(gallery) == shipped
    assert gallery["00000001_000.png"] == "Real NIH film: Cardiomegaly (NIH label)"
    assert (
        gallery["phantom-left-effusion.png"]
        == "Phantom: moderate left pleural effusion (with its mask)"
    )
    assert gallery["phantom-normal.png"] == "Phantom: normal"
    assert list(gallery)[:3] == [
        "00000001_000.png",
        "00027426_000.png",
        "siim-pneumothorax-sample.dcm",
    ]


def test_long_work_says_its_stage_and_time_left_and_stops_when_the_page_goes(monkeypatch):
    import time
    from types import SimpleNamespace

    from explorer.progress import Cancelled
    from explorer.ui.common import end_session, reporter

    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    shown = []
    page = SimpleNamespace(session_hash="page-1")
    say = reporter(lambda f, desc: shown.append((f, desc)), page, prefix="m: ")
    say(0.0, "embedding reports")
    clock[0] += 20.0
    say(0.25, "embedding reports")
    clock[0] += 1.0
    say(1.0, "done")
    assert shown == [
        (0.0, "m: embedding reports"),  # no guess before the work has run a while
        (0.25, "m: embedding reports · about 60 s left"),  # 20 s for a quarter
        (1.0, "m: done"),
    ]
    other = reporter(None, SimpleNamespace(session_hash="page-2"))
    end_session(page)  # the page is closed or reloaded
    with pytest.raises(Cancelled, match="closed"):
        say(0.5, "embedding reports")
    other(0.5, "another person's work goes on")


def test_the_map_tab_says_how_long_opening_takes_before_it_is_pressed(tmp_path, monkeypatch):
    from explorer.reports import map as map_mod
    from explorer.ui.report_map_view import OWN_TABLE, map_estimate, open_map

    monkeypatch.setattr(map_mod, "_umap_compiled", False)  # as in a fresh server
    table = tmp_path / "reports.csv"
    table.write_text(
        "report\n"
        + "".join(f"Case {i}: no pleural effusion, heart size normal.\n" for i in range(30))
    )
    assert map_estimate(OWN_TABLE, None, None, "phantom-negaware").startswith("Upload a report")
    before = map_estimate(OWN_TABLE, str(table), None, "phantom-negaware")
    assert before.startswith("First build of this map for phantom-negaware: about")
    assert "30 reports" in before and "layout (UMAP)" in before
    open_map(OWN_TABLE, str(table), None, "phantom-negaware", "cluster", None, None)
    after = map_estimate(OWN_TABLE, str(table), None, "phantom-negaware")
    assert after == "The map of these 30 reports for phantom-negaware is open: it shows at once."


def test_the_map_says_how_many_reports_the_model_cut():
    """Reports longer than the text tower's limit are placed by their first tokens: say so."""
    from types import SimpleNamespace

    from explorer.reports.clusters import Alignment
    from explorer.ui.report_map_view import _summary

    texts = ("short report.", "a long report " * 100, "another long one " * 100)

    class Map(SimpleNamespace):
        def __len__(self) -> int:
            return len(self.texts)

    def built(truncated: int) -> Map:  # (build_map counts the cut reports once)
        return Map(
            alignment=Alignment(10, 3, 0.5, 0.2, 0.6, 0.4),
            timings={},
            corpus="mine",
            label_source="the labeler",
            model="tiny",
            licence="",
            texts=texts,
            truncated=truncated,
            text_limit=77,
        )

    text = _summary(built(2), None)
    assert "2 of 3 reports are longer than tiny's 77 tokens" in text
    assert "longer than" not in _summary(built(0), None)
