"""Which phantom masks belong to a CheXpert finding, and the shipped phantom examples."""

from __future__ import annotations

import json

import numpy as np

from explorer.phantom import (
    CHEXPERT_MAPPING,
    OPACITY_FINDINGS,
    FindingSpec,
    phantom_findings_for,
    render_phantom,
    shipped_phantom,
    shipped_phantoms,
)
from explorer.vocab.labels import CHEXPERT_FINDINGS


def test_every_mapped_chexpert_finding_has_its_phantom_findings():
    for phantom_name, chexpert in CHEXPERT_MAPPING.items():
        assert phantom_name in phantom_findings_for(chexpert), chexpert
        assert phantom_findings_for(chexpert.lower().replace(" ", "_")) == phantom_findings_for(
            chexpert
        )
        assert phantom_findings_for(phantom_name) == (phantom_name,)
    assert phantom_findings_for("Edema") == ("pulmonary edema",)
    assert phantom_findings_for("Fracture") == ("rib fracture",)
    assert phantom_findings_for("Lung Lesion") == ("nodule/mass",)
    assert set(phantom_findings_for("Lung Opacity")) == set(OPACITY_FINDINGS)
    for unseen in ("No Finding", "Pneumonia", "Pleural Other", "left lower lobe collapse", ""):
        assert phantom_findings_for(unseen) == ()


def _phantom_showing(phantom_names: tuple[str, ...]):
    """A shipped example showing one of ``phantom_names``, else a freshly rendered phantom."""
    for file_name, entry in shipped_phantoms().items():
        if any(f["name"] in phantom_names for f in entry["findings"]):
            return shipped_phantom(file_name)
    return render_phantom(5, findings=[FindingSpec(phantom_names[0])], size=128)


def test_every_chexpert_finding_with_a_phantom_source_gets_its_mask():
    mapped = [c for c in CHEXPERT_FINDINGS if phantom_findings_for(c)]
    # the ten mapped observations and Lung Opacity; the substring match missed three of them
    assert len(mapped) == len(set(CHEXPERT_MAPPING.values())) + 1
    assert {"Edema", "Fracture", "Lung Lesion"} <= set(mapped)
    for chexpert in mapped:
        sources = phantom_findings_for(chexpert)
        phantom = _phantom_showing(sources)
        mask = phantom.mask_for(chexpert)
        assert mask is not None and mask.shape == phantom.image.shape, chexpert
        expected = np.any([f.mask for f in phantom.findings if f.name in sources], axis=0)
        assert mask.any() and np.array_equal(mask, expected), chexpert


def test_mask_of_an_absent_finding_is_none_and_opacity_joins_its_sources():
    ph = render_phantom(
        3, findings=[FindingSpec("consolidation"), FindingSpec("nodule/mass")], size=128
    )
    assert ph.mask_for("Pleural Effusion") is None and ph.mask_for("No Finding") is None
    opacity = ph.mask_for("Lung Opacity")
    both = ph.finding("consolidation").mask | ph.finding("nodule/mass").mask
    assert np.array_equal(opacity, both) and opacity.sum() > ph.mask_for("Lung Lesion").sum()


def test_shipped_phantom_rerenders_the_listed_example(tmp_path):
    effusion = shipped_phantom("/any/upload/folder/phantom-left-effusion.png")
    assert effusion is not None and effusion.names == ("pleural effusion",)
    assert effusion.mask_for("Pleural Effusion").any()
    normal = shipped_phantom("phantom-normal.png")
    assert normal is not None and normal.mask_for("Pleural Effusion") is None
    assert shipped_phantom("00000001_000.png") is None
    assert shipped_phantoms(tmp_path) == {} and shipped_phantom("x.png", tmp_path) is None
    (tmp_path / "phantoms.json").write_text(
        json.dumps(
            {
                "fracture.png": {
                    "seed": 8,
                    "size": 96,
                    "findings": [{"name": "rib fracture", "laterality": "left", "severity": None}],
                }
            }
        )
    )
    fracture = shipped_phantom("fracture.png", tmp_path)
    assert fracture.size == 96 and fracture.mask_for("Fracture").any()
