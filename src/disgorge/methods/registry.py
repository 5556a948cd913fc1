"""The one registry of unlearning methods: CLI, API, recipes and benchmarks all look methods up here."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from .. import catalogue
from .._registry import Registry
from ..errors import InvalidRequest
from ..spec import tomllib
from .base import OPTION_TYPES, Method, MethodConfig, option_type

METHODS: Registry = Registry("method", "see `disgorge methods`")


FINAL = ("check", "unlearn", "fit", "retain_guard")  # the contract every method shares; hooks are _check, _unlearn


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under its ``name``, after checking it keeps the contract (class
    attributes set, a dataclass ``Config`` extending :class:`MethodConfig`, the shared entry points not
    overridden)."""
    for attr in ("name", "family", "summary", "paper"):
        if not getattr(cls, attr, None):
            raise TypeError(f"method class {cls.__name__} must define {attr!r}")
    if not issubclass(cls.Config, MethodConfig) or not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass extending MethodConfig")
    hints = typing.get_type_hints(cls.Config)
    odd = [f.name for f in dataclasses.fields(cls.Config) if option_type(hints[f.name])[0] not in OPTION_TYPES]
    if odd:
        raise TypeError(f"{cls.__name__}.Config option(s) {', '.join(odd)} must be int, float, str or bool "
                        "(optionally | None): those are the types options are checked against")
    overridden = [name for name in FINAL if getattr(cls, name) is not getattr(Method, name)]
    if overridden:
        raise TypeError(f"method class {cls.__name__} overrides {', '.join(overridden)}; override the hooks "
                        "_check and _unlearn instead")
    return METHODS.register(cls.name)(cls)


def describe_methods() -> dict[str, dict[str, Any]]:
    """Every registered method as plain data: family, summary, paper, needs and its options (type, default, range,
    choices, help). ``disgorge methods`` reads this from ``catalogue.json`` (see :mod:`disgorge.catalogue`) so that
    listing methods does not import torch; a test keeps the file equal to this."""
    out = {}
    for name in METHODS.names():
        cls = METHODS.get(name)
        hints = typing.get_type_hints(cls.Config)
        options = []
        for f in dataclasses.fields(cls.Config):
            kind = typing.get_args(hints[f.name]) or (hints[f.name],)
            meta = f.metadata
            options.append({"name": f.name, "type": " | ".join("None" if k is type(None) else k.__name__ for k in kind),
                            "default": f.default, "help": meta.get("help", ""), "low": meta.get("low"),
                            "high": meta.get("high"), "positive": bool(meta.get("positive")),
                            "choices": list(meta["choices"]) if meta.get("choices") else None})
        out[name] = {"family": cls.family, "summary": cls.summary, "paper": cls.paper, "needs": sorted(cls.needs),
                     "doc": " ".join((cls.__doc__ or "").split()), "options": options}
    return out


def get_method(name: str, **options: Any) -> Method:
    """An instance of method ``name`` configured with ``options`` (validated)."""
    return METHODS.get(name)(**options)


def parse_options(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to options; values are read as TOML (numbers, booleans) or else kept as text."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"a method option takes KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw.strip()
    return options


def parse_variant(label: str) -> tuple[str, dict[str, Any]]:
    """A method with options written in one label, as the bench takes them: ``npo[lr=3e-4;forget_span=key]``."""
    name, bracket, rest = label.partition("[")
    if not bracket:
        return label, {}
    if not rest.endswith("]"):
        raise InvalidRequest(f"method variant {label!r} must end with ']' (e.g. npo[lr=3e-4;forget_span=key])")
    options = parse_options([p for p in rest[:-1].split(";") if p.strip()])
    METHODS.get(name).Config.from_dict(options)  # refuse unknown or out-of-range options now
    return name, options


def write_catalogue() -> Path:
    """Rewrite ``methods/catalogue.json`` from the registry (run after adding or changing a method)."""
    path = Path(__file__).with_name("catalogue.json")
    path.write_text(catalogue.render(describe_methods()), encoding="utf-8")
    return path

