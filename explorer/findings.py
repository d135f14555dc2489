"""Finding vocabulary shared by the app, the phantom world, the labeler and training.

This module is the single home of the CheXpert label names and label values.
"""

from __future__ import annotations

#: The 14 CheXpert observations, in the order of the CheXpert paper (Irvin et al., 2019).
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# CheXpert label values. ``None`` (blank) means "not mentioned".
POSITIVE = 1
NEGATIVE = 0
UNCERTAIN = -1
