"""LatestCache: what a module makes from an input's shape on first use and keeps (prepacked
weights, captured CUDA graphs, recorded programs), bounded: a model fed ever-new shapes keeps the
most recently used few instead of growing without end."""
from __future__ import annotations

import collections
from typing import Any, Callable, Hashable


class LatestCache:
    """A mapping of at most `maxsize` entries; the least recently used goes first."""

    def __init__(self, maxsize: int = 8):
        if maxsize < 1:
            raise ValueError(f"LatestCache: maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: Hashable, default: Any = None) -> Any:
        value = self._items.get(key, default)
        if key in self._items:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> Any:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value kept for key, made by make() (and kept) on the first call for it."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return self.put(key, make())

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        return f"LatestCache({len(self._items)}/{self.maxsize})"
