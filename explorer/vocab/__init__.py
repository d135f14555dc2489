"""The vocabulary layer: label names and values, prompts, the negation engine, soft labels.

Nothing here imports any other part of the project except :mod:`explorer.errors`.
"""
