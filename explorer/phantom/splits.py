"""Seed ranges of the phantom world: which seeds train, which are held out, which are left apart.

Phantom ``k`` of a set with base seed ``b`` is rendered from seed ``b + k``. The ranges below
start :data:`SEED_STRIDE` or more apart, so sets of fewer than ``SEED_STRIDE`` images never
share a phantom:

* :data:`TRAIN_SEED` - the training set of the shipped phantom models.
* :data:`HELDOUT_SEED` - the held-out set of the negation benchmark and the pointing game
  (never used in training).
* :data:`PHANTOM_BATCH_SEED` - phantom batches of the batch analysis (``phantom:N``).

Two more ranges are kept where they are used: the phantom report corpus of the report map
(``explorer.reports.corpus.PHANTOM_CORPUS_SEED``, 50,000,000) and the speed bench's images
(from 5,000,000).
"""

from __future__ import annotations

#: First seed of the training set.
TRAIN_SEED = 1_000_000
#: First seed of the held-out benchmark set.
HELDOUT_SEED = 9_000_000
#: Distance between the ranges' first seeds: a set holds fewer phantoms than this.
SEED_STRIDE = 1_000_000
#: First seed of phantom batches (apart from training, held-out and report-corpus seeds).
PHANTOM_BATCH_SEED = 70_000_000

__all__ = ["HELDOUT_SEED", "PHANTOM_BATCH_SEED", "SEED_STRIDE", "TRAIN_SEED"]
