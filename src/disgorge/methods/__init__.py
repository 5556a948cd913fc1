"""Unlearning methods, one file each, found by name in one registry."""

from . import (  # noqa: F401  (each module registers its method)
    bad_teacher,
    boundary_shrink,
    finetune,
    fisher,
    grad_diff,
    gradient_ascent,
    idk,
    l1_sparse,
    newton,
    npo,
    random_label,
    retrain,
    rmu,
    salun,
    scrub,
    ssd,
)
from .base import ConfigError, Method, MethodConfig, UnlearnRequest, option
from .registry import METHODS, get_method, register

__all__ = ["METHODS", "ConfigError", "Method", "MethodConfig", "UnlearnRequest", "get_method", "option", "register"]
