"""A registry of live actors by unique key; an entry lives exactly as long as its block."""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

from runtime._errors import DuplicateKey

__all__ = ["Registration", "Registry", "live_registries"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """Unique keys to actor faces.

    ``with registry.register(key, face):`` (or ``async with``) around the actor's life: the
    entry is removed however the block is left, so a crashed actor never lingers in it.
    """

    def __init__(self, name: str = "registry") -> None:
        self.name = name
        self._entries: dict[K, V] = {}
        _all.add(self)

    def register(self, key: K, face: V) -> Registration[K, V]:
        """Claim ``key`` for ``face`` for the life of the returned context manager.

        Raises:
            DuplicateKey: on entering, when ``key`` is already registered.
        """
        return Registration(self, key, face)

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


class Registration(Generic[K, V]):
    """One claimed key; a sync and async context manager yielding the face."""

    def __init__(self, registry: Registry[K, V], key: K, face: V) -> None:
        self._registry = registry
        self._key = key
        self._face = face

    def __enter__(self) -> V:
        entries = self._registry._entries
        if self._key in entries:
            msg = f"{self._registry.name}: key {self._key!r} is already registered"
            raise DuplicateKey(msg)
        entries[self._key] = self._face
        return self._face

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = self._registry._entries
        if entries.get(self._key) is self._face:
            del entries[self._key]

    async def __aenter__(self) -> V:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


_all: weakref.WeakSet[Registry[Any, Any]] = weakref.WeakSet()


def live_registries() -> list[Registry[Any, Any]]:
    """Every registry still alive in the process (leak checks read it)."""
    return list(_all)
