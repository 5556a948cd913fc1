"""Unlearning methods, one file each, found by name in one registry."""

from . import finetune, grad_diff, gradient_ascent, retrain  # noqa: F401  (registration)
from .base import ConfigError, Method, MethodConfig, UnlearnRequest, option
from .registry import METHODS, get_method, register

__all__ = ["METHODS", "ConfigError", "Method", "MethodConfig", "UnlearnRequest", "get_method", "option", "register"]
