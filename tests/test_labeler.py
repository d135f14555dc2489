"""The rule-based CheXpert labeler, its MeSH validation on the IU reports, and ``label`` CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.cli import main
from explorer.reports.labeler import (
    LUNG_GROUP,
    OTHER,
    ReportLabels,
    label_report,
    label_report_detailed,
    label_reports,
)
from explorer.vocab.labels import CHEXPERT_FINDINGS, KNOWN_FINDINGS, NEGATIVE, POSITIVE, UNCERTAIN

ROOT = Path(__file__).resolve().parents[1]
HAS_IU = importlib.util.find_spec("torchxrayvision") is not None
needs_iu = pytest.mark.skipif(not HAS_IU, reason="torchxrayvision (IU reports) not installed")

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN

# (report, {finding: expected value}); findings not listed are not checked.
CASES: list[tuple[str, dict[str, int | None]]] = [
    # --- negated
    ("No pleural effusion.", {"Pleural Effusion": N, "Pneumothorax": None}),
    ("There is no evidence of pneumothorax.", {"Pneumothorax": N}),
    (
        "No focal consolidation, pleural effusion, or pneumothorax.",
        {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N},
    ),
    ("The right pneumothorax has resolved.", {"Pneumothorax": N}),
    ("Pleural effusion is not seen.", {"Pleural Effusion": N}),
    ("No pneumothorax, stable cardiomegaly.", {"Pneumothorax": N, "Cardiomegaly": P}),
    ("Interval removal of the endotracheal tube.", {"Support Devices": N}),
    ("No acute bony abnormality.", {"Fracture": N}),
    ("Visualized osseous structures are intact.", {"Fracture": N}),
    ("Negative for pneumothorax or effusion.", {"Pneumothorax": N, "Pleural Effusion": N}),
    ("Pneumonia is unlikely.", {"Pneumonia": N}),
    ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": P, "Edema": N}),
    (
        "No pneumothorax and there is a small left effusion.",
        {"Pneumothorax": N, "Pleural Effusion": P},
    ),
    # --- uncertain, including hedges that contain a negation word
    ("Cannot exclude left basilar pneumonia.", {"Pneumonia": U}),
    ("A small left effusion cannot be excluded.", {"Pleural Effusion": U}),
    ("Pneumonia is not ruled out.", {"Pneumonia": U}),
    ("Possible right lower lobe infiltrate.", {"Lung Opacity": U}),
    ("Findings may represent early pulmonary edema.", {"Edema": U}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": U}),
    ("Left basilar opacity, atelectasis versus scarring.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Bibasilar airspace disease, possibly pneumonia.", {"Lung Opacity": P, "Pneumonia": U}),
    ("No suspicious pulmonary nodules.", {"Lung Lesion": N}),
    ("Question of a small right pneumothorax?", {"Pneumothorax": U}),
    # --- heart size
    ("Heart size is normal.", {"Cardiomegaly": N}),
    ("Normal cardiac silhouette.", {"Cardiomegaly": N}),
    ("The heart is not enlarged.", {"Cardiomegaly": N}),
    ("The heart is normal in size.", {"Cardiomegaly": N}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": P}),
    # a hedge on the size, uncertain as for the negation engine (tests/test_cues.py)
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": U}),
    ("The heart is borderline in size.", {"Cardiomegaly": U}),
    (
        "The cardiomediastinal silhouette is within normal limits.",
        {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N},
    ),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": P}),
    ("Stable cardiomegaly. Heart size unchanged.", {"Cardiomegaly": P}),
    ("Heart size is normal. Moderate cardiomegaly.", {"Cardiomegaly": P}),
    # --- lungs clear and other organ statements
    ("The lungs are clear.", {**dict.fromkeys(LUNG_GROUP, N), "Lung Lesion": None}),
    ("Clear lungs. Possible left basilar atelectasis.", {"Atelectasis": U, "Lung Opacity": N}),
    ("Lungs are clear except for left basilar atelectasis.", {"Atelectasis": P}),
    ("The pleural spaces are clear.", {"Pleural Effusion": N, "Pneumothorax": N}),
    ("Pulmonary vascularity is normal.", {"Edema": N}),
    ("Mild pulmonary vascular congestion.", {"Edema": P}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": U}),
    ("No costophrenic angle blunting to suggest effusion.", {"Pleural Effusion": N}),
    # --- findings and devices
    ("Healed right rib fractures.", {"Fracture": P}),
    ("Left-sided pacemaker with leads in the right ventricle.", {"Support Devices": P}),
    ("Small bilateral pleural effusions.", {"Pleural Effusion": P}),
    ("Large right hydropneumothorax.", {"Pneumothorax": P, "Pleural Effusion": P}),
    ("Right upper lobe nodular opacity.", {"Lung Lesion": P, "Lung Opacity": P}),
    ("Small pericardial effusion.", {"Pleural Effusion": None}),
    ("Apical pleural thickening.", {"Pleural Other": P}),
    # --- No Finding
    ("Heart size normal. Lungs clear. No pneumothorax or effusion.", {"No Finding": P}),
    ("No acute cardiopulmonary abnormality.", {"No Finding": P}),
    ("Right PICC line tip in the SVC. Lungs are clear.", {"No Finding": P, "Support Devices": P}),
    (
        "No acute cardiopulmonary process. Calcified granuloma right upper lobe.",
        {"No Finding": None},
    ),
    ("Small left pleural effusion. No pneumothorax.", {"No Finding": None}),
    ("Possible pneumonia. Heart size normal.", {"No Finding": None}),
    ("Comparison: none.", {"No Finding": None}),
    ("", dict.fromkeys(KNOWN_FINDINGS)),
    # --- "XXXX" de-identification marks
    ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": N}),
    ("Blunting of the right costophrenic XXXX.", {"Pleural Effusion": U}),
    ("Right chest XXXX tip in the mid SVC.", {"Support Devices": P}),
    ("Normal chest x-XXXX.", {"No Finding": P}),
    ("XXXX XXXX. XXXX.", dict.fromkeys(KNOWN_FINDINGS)),
    # --- the extra NIH findings: read like the 14, and an abnormality for No Finding
    ("Large hiatal hernia. Lungs are clear.", {"Hernia": P, "No Finding": None}),
    ("Emphysematous changes. No pneumothorax.", {"Emphysema": P, "No Finding": None}),
    ("No evidence of pulmonary fibrosis. Normal chest.", {"Fibrosis": N, "No Finding": P}),
    ("Chronic interstitial fibrotic changes at the bases.", {"Fibrosis": P}),
    ("Possible small hiatal hernia.", {"Hernia": U}),
    ("Subcutaneous emphysema in the left chest wall.", {"Emphysema": None, "No Finding": None}),
    ("Cystic fibrosis with bronchiectasis.", {"Fibrosis": None}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:50] or "empty" for c in CASES])
def test_hand_written_cases(text, expected):
    labels = label_report(text)
    assert list(labels) == list(KNOWN_FINDINGS)
    got = {f: labels[f] for f in expected}
    assert got == expected


def test_batch_equals_single_and_keeps_order():
    texts = [t for t, _ in CASES]
    assert label_reports(texts) == [label_report(t) for t in texts]
    assert label_reports([]) == []


def test_values_are_chexpert_values():
    for text, _ in CASES:
        assert set(label_report(text).values()) <= {POSITIVE, NEGATIVE, UNCERTAIN, None}


def test_evidence_names_sentence_and_cue():
    text = "Heart size is normal. Small left effusion cannot be excluded. No pneumothorax."
    res = label_report_detailed(text)
    assert isinstance(res, ReportLabels)
    ev = res.evidence("Pleural Effusion")
    assert ev.value == UNCERTAIN and ev.rule == "strong hedge"
    assert ev.cue == "be excluded" and ev.sentence == "Small left effusion cannot be excluded."
    ptx = res.evidence("Pneumothorax")
    assert (ptx.value, ptx.cue, ptx.rule) == (NEGATIVE, "No", "negation")
    heart = res.evidence("Cardiomegaly")
    assert (heart.value, heart.cue, heart.rule) == (NEGATIVE, "normal", "organ")
    for m in res.mentions:  # offsets point into the original text
        assert text[m.start : m.end] == m.text
        assert m.text in m.sentence or m.rule == "no finding"
    assert res.evidence("Lung Lesion") is None


def test_evidence_keeps_original_spelling_with_xxxx():
    text = "Normal chest x-XXXX. Cannot exclude pneumonia."
    res = label_report_detailed(text)
    ev = res.evidence("Pneumonia")
    assert ev.cue == "Cannot exclude" and ev.sentence == "Cannot exclude pneumonia."


def test_no_finding_explains_itself_and_other_abnormalities_block_it():
    normal = label_report_detailed("The lungs are clear. No acute cardiopulmonary abnormality.")
    ev = normal.evidence("No Finding")
    assert normal["No Finding"] == POSITIVE and ev.rule == "no finding"
    assert "acute cardiopulmonary abnormality" in ev.cue
    granuloma = label_report_detailed("Lungs are clear. Calcified granuloma in the left apex.")
    assert granuloma["No Finding"] is None
    assert any(m.finding == OTHER and m.value == POSITIVE for m in granuloma.mentions)


def test_results_are_frozen():
    res = label_report_detailed("No effusion.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.values = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.mentions[0].value = 1  # type: ignore[misc]


# --- the real IU corpus -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def validation():
    if not HAS_IU:
        pytest.skip("torchxrayvision (IU reports) not installed")
    from explorer.reports.mesh import validate

    return validate()


@needs_iu
def test_iu_reports_load_offline():
    from explorer.reports.mesh import IUReport, iu_reports, mesh_labels

    reports = iu_reports()
    assert len(reports) == 3955
    assert len({r.id for r in reports}) == len(reports)
    first = reports[0]
    assert isinstance(first, IUReport) and first.id == "CXR1"
    assert first.text.startswith(first.findings) and first.impression in first.text
    assert first.mesh == ("normal",)
    assert mesh_labels(first) == {f: (1 if f == "No Finding" else None) for f in KNOWN_FINDINGS}
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.findings = ""  # type: ignore[misc]
    reports.clear()  # the caller's list is a copy
    assert len(iu_reports()) == 3955


@needs_iu
def test_mesh_terms_map_to_chexpert():
    from explorer.reports.mesh import mesh_findings

    assert mesh_findings(["Pulmonary Atelectasis/base/left", "Cardiac Shadow/enlarged"]) == {
        "Atelectasis",
        "Cardiomegaly",
    }
    assert mesh_findings(["Opacity/lung/upper lobe/right/round"]) == {"Lung Opacity", "Lung Lesion"}
    assert mesh_findings(["Density/ribs/left/round", "Calcified Granuloma"]) == set()
    assert mesh_findings(["Thickening/pleura/apex", "Costophrenic Angle/blunted"]) == {
        "Pleural Other"
    }
    assert mesh_findings(["Hydropneumothorax/right"]) == {"Pneumothorax", "Pleural Effusion"}
    assert mesh_findings(["Pulmonary Emphysema", "Hernia, Hiatal", "Pulmonary Fibrosis/base"]) == {
        "Emphysema",
        "Hernia",
        "Fibrosis",
    }
    assert mesh_findings(["Subcutaneous Emphysema/chest wall", "Cystic Fibrosis"]) == set()


@needs_iu
def test_iu_validation_macro_f1(validation):
    assert validation.n_reports > 3700
    assert validation.uncertain == "negative"
    assert validation.macro_f1 >= 0.85, validation.to_markdown()
    assert validation.other_macro_f1 >= 0.80, validation.to_markdown()
    assert len(validation.macro_findings) >= 10
    scores = {s.finding: s for s in validation.scores}
    for name in ("No Finding", "Cardiomegaly", "Lung Opacity", "Pleural Effusion"):
        assert scores[name].f1 >= 0.85, name
    assert set(validation.macro_findings) <= set(CHEXPERT_FINDINGS)  # the extras are apart
    for name in ("Emphysema", "Fibrosis", "Hernia"):
        assert scores[name].support >= 15 and scores[name].f1 >= 0.85, name
    table = validation.to_markdown()
    assert table.count("\n|") == len(KNOWN_FINDINGS) + 1 and "Macro F1" in table
    assert "| Hernia † |" in table
    d = validation.disagreements[0]
    assert d.kind in ("labeler only", "MeSH only") and d.report_id.startswith("CXR")


# --- command line -----------------------------------------------------------------------------


def test_cli_label_json_subprocess():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "explorer",
            "label",
            "No pneumothorax. Cannot exclude pneumonia.",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data["labels"]) == list(KNOWN_FINDINGS)
    assert data["labels"]["Pneumothorax"] == 0 and data["labels"]["Pneumonia"] == -1
    assert data["evidence"]["Pneumonia"]["cue"] == "Cannot exclude"


def test_cli_label_table(capsys):
    assert main(["label", "Heart size is normal. Small right effusion."]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(KNOWN_FINDINGS)
    assert out[2].startswith("Cardiomegaly") and "negative" in out[2]
    assert "positive" in next(line for line in out if line.startswith("Pleural Effusion"))


def test_cli_label_needs_text_or_validation(capsys):
    assert main(["label"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(".") and "Traceback" not in err


@needs_iu
@pytest.mark.slow
def test_cli_validate_mesh_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "explorer", "label", "--validate-mesh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| Cardiomegaly |" in proc.stdout and "Macro F1" in proc.stdout
    macro = float(proc.stdout.split("**")[1])
    assert macro >= 0.85
