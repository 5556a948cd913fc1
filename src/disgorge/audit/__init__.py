"""Audits of what a model learned and from whom: group figures (:mod:`.bias`), per-record memorisation
(:mod:`.memorization`) and training-data attribution (:mod:`.attribution`), each stored beside the model with a
ledger row (:mod:`.store`)."""

from .attribution import Attribution, tracin
from .bias import bias_audit
from .memorization import memorization_audit
from .store import read_audit, store_audit

__all__ = ["Attribution", "bias_audit", "memorization_audit", "read_audit", "store_audit", "tracin"]
