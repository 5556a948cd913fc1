"""Verification: split metrics, membership inference, reference comparison, effect probes, certificates."""

from .metrics import GAP_KEYS, accuracy, avg_gap, mia_auc, mia_efficacy, split_figures

__all__ = ["GAP_KEYS", "accuracy", "avg_gap", "mia_auc", "mia_efficacy", "split_figures"]
