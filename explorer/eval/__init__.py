"""Evaluation: metrics, the negation benchmark, batch error analysis."""
