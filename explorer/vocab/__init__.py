"""The vocabulary layer: label names and values, the cue vocabulary, prompts, the negation
engine, soft labels.

Nothing here imports any other part of the project except :mod:`explorer.errors` and
:mod:`explorer.paths` (where ``explorer/configs/`` is).
"""
