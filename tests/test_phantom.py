"""Tests of the phantom world: renderer, ground truth masks, labels and reports."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from explorer.paths import examples_dir
from explorer.phantom import (
    CHEXPERT_MAPPING,
    LATERALITIES,
    PHANTOM_FINDINGS,
    SEVERITIES,
    FindingSpec,
    Phantom,
    render_phantom,
    sample_findings,
)
from explorer.phantom.reports import Report, ReportSentence, generate_report
from explorer.vocab.labels import CHEXPERT_FINDINGS, NEGATIVE, POSITIVE, UNCERTAIN

N_SEEDS = 200


@functools.cache
def _sampled(seed: int) -> Phantom:
    return render_phantom(seed)


@functools.cache
def _twin(seed: int) -> Phantom:
    return render_phantom(seed, findings=[])


def _centre_col(ph: Phantom) -> float:
    """Column of the patient's midline (the thorax may be shifted)."""
    return ph.size / 2 * (1 + ph.params.center_x)


def _high_pass_var(img: np.ndarray, mask: np.ndarray) -> float:
    hp = img - ndimage.gaussian_filter(img, 2.0)
    return float(hp[mask].var())


# --- determinism, dtype, range ----------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    a, b = render_phantom(11), render_phantom(11)
    assert a.image.tobytes() == b.image.tobytes()
    assert [f.name for f in a.findings] == [f.name for f in b.findings]
    for fa, fb in zip(a.findings, b.findings, strict=True):
        assert fa.mask.tobytes() == fb.mask.tobytes()
        assert (fa.laterality, fa.severity, fa.location, fa.details) == (
            fb.laterality,
            fb.severity,
            fb.location,
            fb.details,
        )
    assert a.params == b.params


def test_different_seeds_differ() -> None:
    images = [render_phantom(s, findings=[]).image.tobytes() for s in range(5)]
    assert len(set(images)) == 5


@pytest.mark.parametrize("size", [224, 256, 320])
def test_dtype_range_and_shape(size: int) -> None:
    ph = render_phantom(3, size=size)
    assert ph.image.dtype == np.float32
    assert ph.image.shape == (size, size)
    assert float(ph.image.min()) >= 0.0 and float(ph.image.max()) <= 1.0
    assert not ph.image.flags.writeable
    for f in ph.findings:
        assert f.mask.dtype == bool and f.mask.shape == (size, size)


def test_shape_scales_with_size() -> None:
    small, large = render_phantom(5, size=224), render_phantom(5, size=320)
    ratio = large.params.thoracic_width_px / small.params.thoracic_width_px
    assert ratio == pytest.approx(320 / 224, rel=0.02)
    assert large.heart_mask.sum() / small.heart_mask.sum() == pytest.approx(
        (320 / 224) ** 2, rel=0.08
    )


def test_bone_is_bright_and_air_outside_the_body_is_dark() -> None:
    ph = _twin(2)
    img = ph.image
    lungs = img[ph.size // 3 : ph.size // 2, ph.size // 5 : ph.size // 3]
    assert img[:3, :3].mean() < 0.1  # air above the shoulders
    assert img[ph.heart_mask].mean() > lungs.mean() + 0.25


# --- sampling ---------------------------------------------------------------------------------


def test_case_sampling_prevalence_and_normals() -> None:
    counts = dict.fromkeys(PHANTOM_FINDINGS, 0)
    normal = 0
    n = 1000
    for seed in range(n):
        specs = sample_findings(seed)
        names = {s.name for s in specs}
        for name in names:
            counts[name] += 1
        normal += not (names - {"support devices"})
    assert 0.18 <= normal / n <= 0.33
    for name, c in counts.items():
        extra = 0.08 if name in ("cardiomegaly", "pleural effusion") else 0.0
        assert 0.1 <= c / n <= 0.3 + extra, (name, c / n)
    # Several findings can co-occur.
    assert any(len(sample_findings(s)) >= 3 for s in range(100))


# --- masks and locations ----------------------------------------------------------------------


def test_every_sampled_finding_has_a_plausible_mask() -> None:
    seen = set()
    for seed in range(N_SEEDS):
        ph = _sampled(seed)
        size = ph.size
        mid = _centre_col(ph)
        for f in ph.findings:
            seen.add(f.name)
            assert f.mask.any(), (seed, f.name)
            assert f.name in PHANTOM_FINDINGS
            assert f.laterality in LATERALITIES[f.name]
            assert f.severity in SEVERITIES[f.name]
            rows, cols = np.nonzero(f.mask)
            rc, cc = rows.mean() / size, (cols.mean() - mid) / size
            if f.laterality in ("left", "right"):
                # Patient's right is on the display's left.
                expected = 1 if f.laterality == "left" else -1
                assert np.sign(cc) == expected, (seed, f.name, f.laterality, cc)
            elif f.laterality == "bilateral":
                assert (cols < mid).any() and (cols > mid).any(), (seed, f.name)
            if f.name == "pleural effusion":
                assert rc > 0.55, (seed, rc)  # lower part of the chest
                assert rows.min() / size > 0.35
            elif f.name == "pneumothorax":
                assert rows.min() / size < 0.2  # reaches the apex
                assert rc < 0.45
                assert np.abs(cols - mid).mean() / size > 0.15  # lateral
            elif f.name == "nodule/mass":
                h = rows.max() - rows.min() + 1
                w = cols.max() - cols.min() + 1
                assert 0.7 < h / w < 1.4
                assert 0.55 < len(rows) / (h * w) < 0.95  # round: ~pi/4 of its box
                limit = 0.02 if f.severity == "large" else 0.003
                assert len(rows) / size**2 < limit
            elif f.name == "enlarged cardiomediastinum":
                assert abs(cc) < 0.06 and rc < 0.45
            elif f.name == "rib fracture":
                assert len(rows) / size**2 < 0.01
            elif f.name == "cardiomegaly":
                assert np.array_equal(f.mask, ph.heart_mask)
    assert seen == set(PHANTOM_FINDINGS)


def _ctr(ph: Phantom, mask: np.ndarray) -> float:
    cols = np.flatnonzero(mask.any(axis=0))
    return (cols[-1] - cols[0] + 1) / ph.params.thoracic_width_px


@pytest.mark.parametrize("seed", [0, 9, 21])
@pytest.mark.parametrize("severity", ["mild", "large"])
def test_cardiomegaly_ctr_from_mask(seed: int, severity: str) -> None:
    ph = render_phantom(seed, findings=[FindingSpec("cardiomegaly", severity=severity)])
    twin = _twin(seed)
    heart = ph.finding("cardiomegaly")
    assert heart is not None
    assert _ctr(ph, heart.mask) > 0.52
    assert _ctr(twin, twin.heart_mask) < 0.5
    assert heart.mask.sum() > twin.heart_mask.sum() * 1.15
    assert ph.params.cardiothoracic_ratio == pytest.approx(_ctr(ph, heart.mask), abs=0.01)


def test_forced_findings_and_spec_validation() -> None:
    spec = FindingSpec("pleural effusion", "left", "large")
    ph = render_phantom(4, findings=[spec, "pneumothorax"])
    assert ph.names == ("pleural effusion", "pneumothorax")
    eff = ph.finding("pleural effusion")
    assert eff is not None and (eff.laterality, eff.severity) == ("left", "large")
    assert ph.finding("consolidation") is None
    assert render_phantom(4, findings=[]).findings == ()
    with pytest.raises(ValueError):
        FindingSpec("pneumonia")
    with pytest.raises(ValueError):
        FindingSpec("pneumothorax", laterality="bilateral")
    with pytest.raises(ValueError):
        FindingSpec("nodule/mass", severity="moderate")
    with pytest.raises(ValueError):
        render_phantom(4, findings=["pneumothorax", "pneumothorax"])
    with pytest.raises(ValueError):
        render_phantom(-1)


def test_forced_devices() -> None:
    ph = render_phantom(8, findings=[FindingSpec("support devices", details=("pacemaker",))])
    dev = ph.finding("support devices")
    assert dev is not None and dev.details == ("pacemaker",)
    twin = _twin(8)
    assert ph.image[dev.mask].mean() > twin.image[dev.mask].mean() + 0.1
    assert np.percentile(ph.image[dev.mask], 90) > 0.85  # metal is white


def test_twin_has_same_anatomy_outside_the_sign() -> None:
    ph = render_phantom(6, findings=[FindingSpec("nodule/mass", "right", "small")])
    twin = _twin(6)
    mask = ph.findings[0].mask
    far = ~ndimage.binary_dilation(mask, iterations=4)
    assert np.abs(ph.image - twin.image)[far].max() < 1e-6
    assert ph.params == twin.params


# --- visual signs (compared with the normal twin of the same seed) ----------------------------


@pytest.mark.parametrize("seed", [1, 12, 30])
@pytest.mark.parametrize("side", ["left", "right"])
def test_effusion_is_brighter_than_the_twin(seed: int, side: str) -> None:
    ph = render_phantom(seed, findings=[FindingSpec("pleural effusion", side, "moderate")])
    twin = _twin(seed)
    mask = ph.findings[0].mask
    assert ph.image[mask].mean() > twin.image[mask].mean() + 0.08
    # The costophrenic angle on that side is no longer dark.
    rows = np.nonzero(mask)[0]
    assert rows.max() > np.percentile(np.nonzero(twin.heart_mask)[0], 60)


@pytest.mark.parametrize("seed", [2, 14, 33])
@pytest.mark.parametrize("severity", ["moderate", "large"])
def test_pneumothorax_is_lucent_with_a_pleural_line(seed: int, severity: str) -> None:
    side = "right" if seed % 2 == 0 else "left"
    ph = render_phantom(seed, findings=[FindingSpec("pneumothorax", side, severity)])
    twin = _twin(seed)
    mask = ph.findings[0].mask
    # Darker than the same region of the same chest without a pneumothorax.
    assert ph.image[mask].mean() < twin.image[mask].mean() - 0.03
    # A thin white visceral pleural line borders the air space medially (lower half of it,
    # where the border is vertical): the pixels just medial to the mask are brighter than the
    # air space.
    mid = _centre_col(ph)
    rows = np.flatnonzero(mask.any(axis=1))
    line, air = [], []
    for r in rows[len(rows) // 2 :]:
        cols = np.flatnonzero(mask[r])
        edge = cols.max() if cols.mean() < mid else cols.min()
        step = 1 if cols.mean() < mid else -1
        line.append(ph.image[r, edge + step])
        air.append(ph.image[r, edge - 2 * step])
    assert np.mean(line) > np.mean(air) + 0.02


@pytest.mark.parametrize("seed", [2, 14, 33])
def test_small_pneumothorax_is_apical_and_lucent(seed: int) -> None:
    ph = render_phantom(seed, findings=[FindingSpec("pneumothorax", "right", "small")])
    mask = ph.findings[0].mask
    rows = np.nonzero(mask)[0]
    assert rows.max() < ph.size * 0.4
    assert ph.image[mask].mean() < _twin(seed).image[mask].mean() - 0.03


@pytest.mark.parametrize("seed", [2, 14])
def test_pneumothorax_space_has_no_lung_markings(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import explorer.phantom.renderer as renderer

    spec = [FindingSpec("pneumothorax", "left", "large")]
    ph, twin = render_phantom(seed, findings=spec), _twin(seed)
    # Render again without vessel markings and parenchymal texture: the difference is the
    # markings' contribution to each image.
    monkeypatch.setattr(renderer, "_VESSEL", np.float32(0.0))
    monkeypatch.setattr(renderer, "_PARENCHYMA", np.float32(0.0))
    bare, bare_twin = render_phantom(seed, findings=spec), render_phantom(seed, findings=[])
    core = ndimage.binary_erosion(ph.findings[0].mask, iterations=3)
    markings = np.abs(ph.image - bare.image)
    twin_markings = np.abs(twin.image - bare_twin.image)
    # Only blur from the lung edge reaches into the air space.
    assert markings[core].mean() < 0.01 * twin_markings[core].mean()
    assert twin_markings[core].mean() > 0.005
    # The retracted lung medial to the line keeps its markings.
    lung = ndimage.binary_dilation(ph.findings[0].mask, iterations=12) & ~ndimage.binary_dilation(
        ph.findings[0].mask, iterations=4
    )
    lung &= ph.image < np.percentile(ph.image, 60)
    assert markings[lung].mean() > 0.005


@pytest.mark.parametrize(
    "spec",
    [
        FindingSpec("consolidation", "right", "large"),
        FindingSpec("consolidation", "left", "moderate"),
        FindingSpec("atelectasis", "left", "large"),
        FindingSpec("pulmonary edema", "bilateral", "moderate"),
        FindingSpec("nodule/mass", "left", "large"),
        FindingSpec("nodule/mass", "right", "small"),
        FindingSpec("enlarged cardiomediastinum", None, "large"),
    ],
    ids=lambda s: f"{s.name}-{s.laterality}-{s.severity}",
)
def test_opacities_are_brighter_than_the_twin(spec: FindingSpec) -> None:
    ph = render_phantom(17, findings=[spec])
    twin = _twin(17)
    mask = ph.findings[0].mask
    assert ph.image[mask].mean() > twin.image[mask].mean() + 0.04


def test_rib_fracture_changes_the_rib_at_the_mask() -> None:
    ph = render_phantom(10, findings=[FindingSpec("rib fracture", "left")])
    twin = _twin(10)
    mask = ph.findings[0].mask
    diff = np.abs(ph.image - twin.image)
    assert diff[mask].max() > 0.05
    # Elsewhere only the displaced lateral fragment may change: same side, nearby rows.
    rows, cols = np.nonzero(diff > 0.01)
    assert (cols > _centre_col(ph)).all()
    assert np.ptp(rows) < ph.size * 0.3


# --- labels -----------------------------------------------------------------------------------


def test_labels_mapping() -> None:
    specs = [
        FindingSpec("nodule/mass", "left", "small"),
        FindingSpec("rib fracture", "right"),
        FindingSpec("support devices"),
    ]
    labels = render_phantom(3, findings=specs).labels()
    assert set(labels) == set(CHEXPERT_FINDINGS)
    assert labels["Lung Lesion"] == POSITIVE
    assert labels["Lung Opacity"] == POSITIVE
    assert labels["Fracture"] == POSITIVE
    assert labels["Support Devices"] == POSITIVE
    assert labels["No Finding"] == NEGATIVE
    assert labels["Pneumothorax"] == NEGATIVE
    assert labels["Pneumonia"] is None and labels["Pleural Other"] is None

    devices_only = render_phantom(3, findings=["support devices"]).labels()
    assert devices_only["No Finding"] == POSITIVE
    assert devices_only["Lung Opacity"] == NEGATIVE
    for finding, chexpert in CHEXPERT_MAPPING.items():
        labels = render_phantom(3, findings=[finding]).labels()
        assert labels[chexpert] == POSITIVE, finding
        assert labels["No Finding"] == (POSITIVE if finding == "support devices" else NEGATIVE)


# --- reports ----------------------------------------------------------------------------------


def _check_report(ph: Phantom, report: Report) -> None:
    present = set(ph.names)
    truth = ph.labels()
    mentioned = report.mentioned()
    for name in present:
        assert mentioned.get(name) in (POSITIVE, UNCERTAIN), (ph.seed, name, report.text)
    for s in report.sentences:
        assert (s.text[0].isupper() or s.text[0].isdigit()) and s.text.endswith("."), s.text
        for f in s.findings:
            if s.status == NEGATIVE:
                assert f not in present, (ph.seed, s.text)
            else:
                assert f in present, (ph.seed, s.text)
            if s.status == UNCERTAIN:
                inst = ph.finding(f)
                assert inst is not None and inst.severity in ("mild", "small"), s.text
    labels = report.labels
    assert set(labels) == set(CHEXPERT_FINDINGS)
    for name, value in labels.items():
        if value is None or name in ("Pneumonia", "Pleural Other"):
            continue
        assert (value == NEGATIVE) == (truth[name] == NEGATIVE), (ph.seed, name, report.text)
    assert labels["Pleural Other"] is None
    if labels["Pneumonia"] is not None:
        assert (labels["Pneumonia"] != NEGATIVE) == ("consolidation" in present)
    text = report.text
    assert text.startswith("FINDINGS: ") and " IMPRESSION: " in text
    assert report.findings_text and report.impression_text


def test_report_label_consistency_over_many_seeds() -> None:
    uncertain = negatives = unmentioned = 0
    texts = set()
    for seed in range(N_SEEDS):
        ph = _sampled(seed)
        report = generate_report(ph, seed)
        _check_report(ph, report)
        labels = report.labels
        uncertain += UNCERTAIN in labels.values()
        negatives += NEGATIVE in [labels[c] for c in CHEXPERT_MAPPING.values()]
        unmentioned += None in [labels[c] for c in CHEXPERT_MAPPING.values()]
        texts.add(report.text)
    assert uncertain > 5 and negatives > N_SEEDS * 0.8 and unmentioned > N_SEEDS * 0.8
    assert len(texts) == N_SEEDS


def test_report_is_deterministic_and_varied() -> None:
    ph = _sampled(7)
    assert generate_report(ph, 5).text == generate_report(ph, 5).text
    assert generate_report(ph, np.random.default_rng(5)).text == generate_report(ph, 5).text
    assert len({generate_report(ph, k).text for k in range(20)}) > 10


def test_normal_reports_say_normal_things() -> None:
    phrases = set()
    for seed in range(60):
        ph = _twin(seed)
        report = generate_report(ph, seed)
        assert report.labels["No Finding"] == POSITIVE
        assert all(s.status == NEGATIVE for s in report.sentences)
        phrases.add(report.impression_text)
    assert "No acute cardiopulmonary process." in phrases


def test_report_without_removes_exactly_that_finding() -> None:
    checked = 0
    for seed in range(N_SEEDS):
        ph = _sampled(seed)
        report = generate_report(ph, seed)
        for name in report.mentioned():
            reduced = report.without(name)
            assert name not in reduced.mentioned()
            assert not reduced.sentences_about(name)
            before, after = report.labels, reduced.labels
            for other in report.mentioned():
                if other != name:
                    assert reduced.mentioned()[other] == report.mentioned()[other]
            chex = CHEXPERT_MAPPING[name]
            assert after[chex] is None
            for c in set(CHEXPERT_MAPPING.values()) - {chex}:
                assert after[c] == before[c], (seed, name, c)
            assert reduced.impression_text  # never an empty impression
            assert name not in {f for s in reduced.sentences for f in s.findings}
            checked += 1
    assert checked > N_SEEDS


def test_without_rewrites_combined_negatives() -> None:
    report = Report(
        sentences=(
            ReportSentence(
                "No pleural effusion or pneumothorax.",
                "findings",
                ("pleural effusion", "pneumothorax"),
                NEGATIVE,
            ),
            ReportSentence(
                "Moderate left pleural effusion.", "impression", ("pleural effusion",), 1
            ),
        )
    )
    with pytest.raises(ValueError):
        report.without("pneumonia")
    reduced = Report(sentences=report.sentences[:1]).without("pneumothorax")
    assert reduced.sentences[0].text == "No pleural effusion."
    assert reduced.sentences[0].findings == ("pleural effusion",)
    with pytest.raises(ValueError):
        ReportSentence("x.", "discussion", (), NEGATIVE)


def test_shipped_example_phantoms_match_the_renderer() -> None:
    """The app re-renders an example's masks from its seed: the PNG must be that rendering."""
    import json

    from PIL import Image

    folder = examples_dir()
    meta = json.loads((folder / "phantoms.json").read_text())
    assert meta
    for name, case in meta.items():
        specs = [FindingSpec(f["name"], f["laterality"], f["severity"]) for f in case["findings"]]
        ph = render_phantom(case["seed"], specs, case["size"])
        shipped = np.asarray(Image.open(folder / name), dtype=np.int16)
        rendered = np.round(ph.image * 255).astype(np.int16)
        assert np.abs(shipped - rendered).max() <= 1, f"{name} is stale: re-render it"
