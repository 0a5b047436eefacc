"""A registry of live actors by unique key; an entry lives exactly as long as its block."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

from runtime._errors import DuplicateKey

__all__ = ["Registry", "live_registries"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """Unique keys to actor faces. ``with registry.register(key, face):`` for the actor's life."""

    def __init__(self, name: str = "registry") -> None:
        self.name = name
        self._entries: dict[K, V] = {}
        _all.add(self)

    @contextlib.contextmanager
    def register(self, key: K, face: V) -> Iterator[V]:
        if key in self._entries:
            msg = f"{self.name}: key {key!r} is already registered"
            raise DuplicateKey(msg)
        self._entries[key] = face
        try:
            yield face
        finally:
            if self._entries.get(key) is face:
                del self._entries[key]

    def lookup(self, key: K) -> V | None:
        return self._entries.get(key)

    def keys(self) -> list[K]:
        return list(self._entries)

    def items(self) -> list[tuple[K, V]]:
        return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


_all: weakref.WeakSet[Registry[Any, Any]] = weakref.WeakSet()


def live_registries() -> list[Registry[Any, Any]]:
    """Every registry still alive in the process (leak checks read it)."""
    return list(_all)
