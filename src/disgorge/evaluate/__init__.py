"""Metric functions: split figures, membership inference, TOFU/MUSE figures and the strong per-example test, on
numbers models already produced (probes and certificates, which run models, are in :mod:`disgorge.evidence`)."""

from .metrics import accuracy, avg_gap, mia_auc, mia_efficacy, split_figures

__all__ = ["accuracy", "avg_gap", "mia_auc", "mia_efficacy", "split_figures"]
