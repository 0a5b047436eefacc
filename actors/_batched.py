"""Reads by key that arrive together are answered by one query.

``BatchedLookup(fetch, max_keys)``: ``await lookup.get(key)`` joins the batch being gathered; the
first caller of a batch leads it: it waits for the read in flight (one batched read at a time),
closes its batch and runs ``fetch(keys)`` once for every key that joined meanwhile (at most
``max_keys``; a full batch makes the next caller lead a new one). After a restart, 10,000
clients coming back with their session ids cost a few hundred queries, not 10,000 (each pool
read also costs asyncpg's reset round trip on release).

A follower whose leader failed gets the leader's error when it was the store's
(``StoreUnavailable``: the same 503 it would have had alone); when the leader was cancelled (its
client left) before reading, the followers read their own keys again in a new batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import attrs
import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.define(eq=False)
class _Batch(Generic[K, V]):
    keys: list[K] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    found: dict[K, V] | None = None  # None: not read (the leader failed or was cancelled)
    error: Exception | None = None


class BatchedLookup(Generic[K, V]):
    """Coalesces concurrent lookups of keys into one ``fetch(keys) -> {key: value}``."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], max_keys: int) -> None:
        if max_keys < 1:
            msg = f"max_keys must be at least 1, got {max_keys}"
            raise ValueError(msg)
        self._fetch = fetch
        self.max_keys = max_keys
        self._gathering: _Batch[K, V] | None = None
        self._reading = trio.Lock()
        self.queries = 0  # fetch calls made (for tests and figures)

    async def get(self, key: K) -> V | None:
        """The value of ``key``, None when ``fetch`` did not return it."""
        while True:
            batch = self._gathering
            if batch is None or len(batch.keys) >= self.max_keys:
                batch = self._gathering = _Batch()
                batch.keys.append(key)
                await self._lead(batch)
            else:
                batch.keys.append(key)
                await batch.done.wait()
            if batch.found is not None:
                return batch.found.get(key)
            if batch.error is not None:
                raise batch.error
            # the leader left before reading: read again (this caller may lead now)

    async def _lead(self, batch: _Batch[K, V]) -> None:
        try:
            async with self._reading:
                if self._gathering is batch:
                    self._gathering = None  # who comes now gathers the next batch
                self.queries += 1
                try:
                    batch.found = await self._fetch(list(dict.fromkeys(batch.keys)))
                except Exception as exc:
                    batch.error = exc
                    raise
        finally:
            if self._gathering is batch:
                self._gathering = None
            batch.done.set()
