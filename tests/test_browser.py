"""The app in a real headless browser (Chromium via Playwright): what a person clicks works.

Skipped when Playwright or a Chromium binary is missing (``apt-get install chromium``). A
screenshot of each view is kept as a test artefact in ``artifacts/screenshots/`` (or in
``SCREENSHOT_DIR``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]
SHOTS = Path(
    os.environ.get("SCREENSHOT_DIR")
    or Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
)
#: No background networking: the sandbox refuses outside connections and Chromium retries them.
#: The GPU stays enabled: the map is a WebGL scatter (SwiftShader renders it headless).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(browser, app_url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(app_url)
    pg.wait_for_selector("text=CXR Negation Explorer")
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def fresh_page(browser):
    """A page of its own (its own browser storage), for a walk from the start."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    try:
        yield context.new_page()
    finally:
        context.close()


def _shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real picture of the page, not a blank one


def _upload(pg, path: Path) -> None:
    box = pg.locator("#cxr-upload")
    clear = box.get_by_role("button", name="Clear")
    if clear.count():
        clear.first.click()
    box.locator("input[type=file]").set_input_files(str(path))  # waits for the input
    pg.locator("#cxr-upload", has_text=path.stem).wait_for()
    pg.wait_for_timeout(1500)
    # Clearing the previous file must not pop up an error.
    assert pg.get_by_text("Please upload a chest X-ray").count() == 0


def test_findings_view_in_the_browser(page, samples_dir):
    _upload(page, samples_dir / "00000001_000.png")
    page.get_by_role("tab", name="Findings").click()
    page.get_by_role("button", name="Score findings").click()
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    page.wait_for_timeout(1000)
    _shot(page, "1-findings")
    assert page.locator("text=Pleural Effusion").count() > 0
    # Download the scores as a person would: the CSV has one row per CheXpert finding.
    link = page.locator("#findings-csv a").first
    with page.expect_download() as info:
        link.click()
    text = Path(info.value.path()).read_text()
    lines = text.strip().splitlines()
    assert lines[0].startswith("finding,") and len(lines) == 15, text[:300]
    assert any(line.startswith("Pleural Effusion,") for line in lines)


def test_attribution_view_in_the_browser(page):
    from explorer.paths import examples_dir

    _upload(page, examples_dir() / "phantom-left-effusion.png")
    page.get_by_role("tab", name="Attribution").click()
    page.get_by_role("button", name="Explain").click()
    page.wait_for_selector("text=IG completeness", state="detached")
    # the default method is the one that points best on the held-out phantoms (README)
    page.get_by_text("method occlusion").or_(page.get_by_text("occlusion (")).first.wait_for(
        timeout=180_000
    )
    assert page.get_by_text("there is no").count() > 0  # the negated prompt's tokens
    # beside the map: whether it can be trusted (randomisation check, deletion / insertion)
    trust = page.get_by_text("Can this map be trusted?").first
    trust.wait_for(timeout=60_000)
    assert "scrambled" in trust.locator("xpath=..").inner_text()
    page.wait_for_timeout(1500)
    _shot(page, "2-attribution")
    # Grad-CAM has no baseline: its choice goes away with it and comes back for IG
    baseline = page.get_by_text("Baseline (IG starts from it")
    assert baseline.is_visible()
    page.get_by_text("gradcam", exact=True).click()
    baseline.wait_for(state="hidden", timeout=10_000)
    page.get_by_text("ig", exact=True).click()
    baseline.wait_for(state="visible", timeout=10_000)


#: Page coordinates of the first point of the named trace of the map (plotly's own axes).
HOVER_TARGET_JS = """(name) => {
  const gd = document.querySelector('div.cxr-map');  // plotly draws into this div
  const trace = gd._fullData.find(t => t.name === name);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(trace.x[0]), box.top + ya._offset + ya.l2p(trace.y[0])];
}"""


def test_an_uploaded_report_table_is_the_one_mapped(page, tmp_path):
    page.get_by_role("tab", name="Report map").click()
    page.get_by_text("Your own reports (CSV / Parquet)").click()
    table = tmp_path / "my-reports.csv"
    table.write_text("report\nNo pleural effusion.\nLarge left pleural effusion.\n")
    page.locator("#map-table input[type=file]").set_input_files(str(table))
    menu = page.locator("#map-corpus input").first
    page.wait_for_function(
        "() => document.querySelector('#map-corpus input').value.startsWith('Your own table')",
        timeout=30_000,
    )
    assert menu.input_value().startswith("Your own table")
    page.locator("#map-table").get_by_role("button", name="Clear").first.click()
    menu.click()
    page.get_by_role("option", name="IU / Open-i reports (3,955 real reports)").click()


def test_report_map_lasso_selection_fills_the_table(page, samples_dir):
    page.get_by_role("tab", name="Report map").click()
    page.get_by_role("button", name="Open map").click()
    plot = page.locator(".cxr-map .main-svg").first
    plot.wait_for(timeout=600_000)
    _upload(page, samples_dir / "00000001_000.png")
    page.get_by_role("tab", name="Report map").click()
    page.get_by_role("button", name="Place my image").click()
    page.locator(".cxr-map .legendtext", has_text="your image").wait_for(timeout=180_000)
    page.locator(".cxr-map .legendtext", has_text="nearest reports").wait_for()
    # Hover the star of the placed image: plotly shows its label.
    page.locator(".cxr-map").first.scroll_into_view_if_needed()
    # the placed image is named on the map, not only on hover
    page.locator(".cxr-map .annotation-text", has_text="your image").wait_for(timeout=30_000)
    # hovering a nearest report shows its text
    x, y = page.evaluate(HOVER_TARGET_JS, "nearest reports")
    page.mouse.move(x, y, steps=5)
    page.locator(".cxr-map .hovertext").first.wait_for(timeout=30_000)
    _shot(page, "3a-report-map-hover")
    # Drag a lasso around the middle of the plot, as a person would (mouse events need the
    # plot inside the viewport).
    page.locator(".cxr-map").first.scroll_into_view_if_needed()
    box = page.locator(".cxr-map .nsewdrag").first.bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    w, h = box["width"] * 0.35, box["height"] * 0.35
    page.mouse.move(cx - w, cy - h)
    page.mouse.down()
    for x, y in ((cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h), (cx - w, cy - h)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.wait_for_selector("text=reports selected.", timeout=60_000)
    _shot(page, "3-report-map")
    note = page.locator("text=reports selected.").first.inner_text()
    assert int(note.split()[0].replace(",", "")) > 0


def _choose_model(pg, name: str, label: str = "Model") -> None:
    """Pick ``name`` in the open tab's menu labelled ``label``, as a person would."""
    menu = pg.get_by_label(label, exact=True).locator("visible=true").first
    menu.click()
    pg.get_by_role("option", name=name, exact=True).click()
    pg.wait_for_timeout(500)


#: The findings of each drawn findings chart, bottom to top (plotly's own data).
CHART_ORDERS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .filter(gd => gd.data && gd.data.length && gd.offsetParent !== null)
  .map(gd => Array.from(gd.data[0].y))"""


def test_the_teachers_path(fresh_page, app_url):
    """Open, click an example, score, compare two models, attribute with the mask, open the
    map, run a batch, click a case, mark it (no note carries over), reload, export."""
    pg = fresh_page
    pg.goto(app_url)
    pg.wait_for_selector("text=CXR Negation Explorer")
    # Scoring before choosing an image: a toast says what to do, and the "Error" marks it
    # leaves on the outputs go once an image is there.
    pg.get_by_role("button", name="Score findings").click()
    pg.get_by_text("Please upload a chest X-ray").first.wait_for(timeout=30_000)
    findings = pg.locator("#findings-csv")
    pg.get_by_text("Phantom: moderate left pleural effusion (with its mask)").first.click()
    pg.locator("#cxr-upload", has_text="phantom-left-effusion").wait_for(timeout=30_000)
    pg.wait_for_function(
        "() => ![...document.querySelectorAll('.error')].some(e => e.offsetParent !== null"
        " && e.innerText.trim() === 'Error' && !e.closest('.toast-body'))",
        timeout=30_000,
    )
    assert findings.count() == 1
    # Score with the phantom pair and compare: the second chart keeps the first one's order.
    _choose_model(pg, "phantom-negaware")
    _choose_model(pg, "phantom-infonce", label="Compare with (optional)")
    pg.get_by_role("button", name="Score findings").click()
    pg.locator("#findings-guard-2").get_by_text("Domain check").wait_for(timeout=120_000)
    pg.wait_for_function(f"() => ({CHART_ORDERS_JS})().length === 2", timeout=60_000)
    # (a negation-blind row carries a ⚠ after its name, per model)
    first, second = ([y.removesuffix(" ⚠") for y in ys] for ys in pg.evaluate(CHART_ORDERS_JS))
    assert first == second and "Pleural Effusion" in first
    _shot(pg, "1-findings-compared")
    # Attribution with the true lesion outlined.
    pg.get_by_role("tab", name="Attribution").click()
    _choose_model(pg, "phantom-negaware")
    pg.get_by_text("gradcam", exact=True).click()
    pg.get_by_role("button", name="Explain").click()
    pg.get_by_text("Grad-CAM (").first.wait_for(timeout=180_000)
    assert pg.get_by_text("no ground-truth mask").count() == 0
    _shot(pg, "2-attribution-with-mask")
    # The report map says how long opening takes before it is pressed, then opens.
    pg.get_by_role("tab", name="Report map").click()
    estimate = pg.locator("#map-estimate")
    pg.wait_for_function(
        "() => /about|at once/.test(document.querySelector('#map-estimate').innerText)",
        timeout=120_000,
    )
    assert "reports for" in estimate.inner_text()
    pg.get_by_role("button", name="Open map").click()
    pg.locator(".cxr-map .main-svg").first.wait_for(timeout=600_000)
    pg.get_by_text("Alignment").first.wait_for(timeout=30_000)
    # A batch of phantoms; click a case: it opens in Findings, scored at once.
    pg.get_by_role("tab", name="Batch").click()
    pg.get_by_role("button", name="Evaluate batch").click()
    pg.get_by_text("negation errors among").first.wait_for(timeout=300_000)
    _shot(pg, "4-batch")
    # Rendered cells hold their text in span.text (a hidden sizing table repeats it in divs).
    cell = pg.locator("span.text", has_text="phantom-7").first
    name = cell.inner_text().strip()
    assert name.startswith("phantom-") and name.endswith(".png")
    cell.click()
    pg.locator("#cxr-upload", has_text=Path(name).stem).wait_for(timeout=60_000)
    pg.get_by_role("tab", name="Findings", selected=True).wait_for(timeout=30_000)
    pg.locator("#findings-guard").get_by_text("Domain check").wait_for(timeout=120_000)
    # Mark it with a note; open another case: its form is empty, the note stays with the first.
    pg.get_by_role("tab", name="Batch").click()
    pg.get_by_label("model wrong").check()
    note = pg.get_by_label("Note", exact=True)
    note.fill("missed the rim")
    pg.get_by_role("button", name="Save mark").click()
    pg.locator("span.text", has_text="missed the rim").first.wait_for(timeout=30_000)
    cells = pg.locator("span.text", has_text="phantom-")
    k = next(i for i, t in enumerate(cells.all_inner_texts()) if t.strip() not in (name, ""))
    other_name = cells.nth(k).inner_text().strip()
    cells.nth(k).click()
    pg.locator("#cxr-upload", has_text=Path(other_name).stem).wait_for(timeout=60_000)
    pg.get_by_role("tab", name="Batch").click()
    assert note.input_value() == ""
    assert not pg.get_by_label("model wrong").is_checked()
    pg.get_by_label("label wrong").check()
    pg.get_by_role("button", name="Save mark").click()
    pg.locator("#marks span.text", has_text="label wrong").first.wait_for(timeout=30_000)
    pg.wait_for_timeout(1000)  # the browser's storage is written after the table
    # The marks survive a reload (kept in this browser) and export with their own notes.
    pg.reload()
    pg.wait_for_selector("text=CXR Negation Explorer")
    pg.get_by_role("tab", name="Batch").click()
    pg.locator("span.text", has_text="missed the rim").first.wait_for(timeout=30_000)
    pg.get_by_role("button", name="Export marks (CSV)").click()
    link = pg.locator("#marks-csv a").first
    link.wait_for(timeout=30_000)
    with pg.expect_download() as info:
        link.click()
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    notes = {r["image"]: (r["mark"], r["note"]) for r in rows}
    assert notes == {name: ("model wrong", "missed the rim"), other_name: ("label wrong", "")}
    _shot(pg, "5-marks-after-reload")
    pg.get_by_role("button", name="Forget my marks").click()
    pg.locator("span.text", has_text="missed the rim").first.wait_for(
        state="detached", timeout=30_000
    )


def test_closing_the_page_stops_a_map_build(fresh_page, app_url, monkeypatch, tmp_path):
    """A reload during a long build ends its job (it used to hold the queue for minutes)."""
    from explorer.ui.serving import GAUGE

    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))  # a build that has never run
    pg = fresh_page
    pg.goto(app_url)
    pg.wait_for_selector("text=CXR Negation Explorer")
    pg.get_by_role("tab", name="Report map").click()
    pg.locator("#map-corpus input").first.click()
    pg.get_by_role("option", name="Phantom reports (2,000 synthetic)").click()
    _choose_model(pg, "real-infonce", label="Model (text embeddings)")
    pg.get_by_text("First build of this map for real-infonce").wait_for(timeout=120_000)
    pg.get_by_role("button", name="Open map").click()
    pg.get_by_text("embedding reports").first.wait_for(timeout=120_000)
    assert GAUGE.snapshot()["map_open"]["in_flight"] == 1
    pg.reload()
    pg.wait_for_selector("text=CXR Negation Explorer")
    for _ in range(60):  # the job stops at its next batch
        if GAUGE.snapshot()["map_open"]["in_flight"] == 0:
            break
        pg.wait_for_timeout(500)
    assert GAUGE.snapshot()["map_open"]["in_flight"] == 0
    assert not list(tmp_path.glob("maps/real-infonce/*/map.json"))  # it did not finish


#: Every shipped real film (the phantom models were trained on phantoms only).
SHIPPED_REAL_FILMS = ("00000001_000.png", "00027426_000.png", "siim-pneumothorax-sample.dcm")


@pytest.mark.parametrize("name", SHIPPED_REAL_FILMS)
def test_domain_banner_for_every_shipped_real_film(page, name):
    """A phantom-trained model on a real film: the Findings and Attribution tabs say so; the
    default real-film model does not warn."""
    from explorer.guard import typicality
    from explorer.imaging import load_radiograph
    from explorer.models import load_model
    from explorer.paths import examples_dir

    # The app runs in this process: the figure it will show, to tell it from the last film's.
    expected = typicality(
        load_model("phantom-negaware"), load_radiograph(examples_dir() / name).pixels
    )
    assert expected.outside
    figure = f"distance {expected.distance:.1f},"
    _upload(page, examples_dir() / name)
    page.get_by_role("tab", name="Findings").click()
    # the default, trained on real films, takes them as its own: no warning
    _choose_model(page, "real-negaware")
    page.get_by_role("button", name="Score findings").click()
    banner = page.locator("#findings-guard")
    banner.get_by_text("Within real-negaware's training domain").wait_for(timeout=300_000)
    _choose_model(page, "phantom-negaware")
    page.get_by_role("button", name="Score findings").click()
    banner.get_by_text(figure).wait_for(timeout=300_000)
    assert "Outside phantom-negaware's training domain" in banner.inner_text()
    assert "typicality" in banner.inner_text()
    # beside the chart: the banner is in the chart's column, right above it
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=120_000)
    b, c = banner.bounding_box(), chart.bounding_box()
    assert b is not None and c is not None and b["y"] < c["y"] < b["y"] + b["height"] + 200
    page.wait_for_timeout(500)
    _shot(page, f"5-guard-findings-{Path(name).stem}")
    page.get_by_role("tab", name="Attribution").click()
    _choose_model(page, "phantom-negaware")
    page.get_by_role("button", name="Explain").click()
    guard = page.locator("#attribution-guard")
    guard.get_by_text(figure).wait_for(timeout=300_000)
    assert "Outside phantom-negaware's training domain" in guard.inner_text()
    page.wait_for_timeout(500)
    _shot(page, f"5-guard-attribution-{Path(name).stem}")
