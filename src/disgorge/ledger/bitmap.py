"""Sets of record ids as roaring bitmaps (``pyroaring``)."""

from __future__ import annotations

from collections.abc import Iterable

from pyroaring import BitMap


def to_bitmap(ids: Iterable[int]) -> BitMap:
    """A bitmap of integer record ids."""
    return BitMap(int(i) for i in ids)


def dumps(bitmap: BitMap) -> bytes:
    """Portable serialisation of a bitmap."""
    return bitmap.serialize()


def loads(data: bytes) -> BitMap:
    """Inverse of :func:`dumps`."""
    return BitMap.deserialize(data)
