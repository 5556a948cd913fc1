"""A name -> object registry that validates names and suggests close matches on a miss."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import NotFound

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class Registry(Generic[T]):
    """Objects of one kind (methods, tasks, model families, scenarios) registered under unique lowercase names."""

    def __init__(self, kind: str, listing: str) -> None:
        self.kind = kind
        self.listing = listing
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (lowercase, unique)."""
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits, '_' or '-'")

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; a :class:`NotFound` naming close matches otherwise."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise NotFound(f"unknown {self.kind} {name!r}{hint}; {self.listing}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
