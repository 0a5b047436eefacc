"""Running a store (under a real supervisor) in a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from actors import Store, StorePolicy, WriteQueue, migrate, store_child_spec
from runtime import Supervisor, SupervisorHandle


@asynccontextmanager
async def running_store(
    dsn: str,
    *,
    policy: StorePolicy | None = None,
    journal: Path | None = None,
    migrated: bool = True,
) -> AsyncIterator[tuple[Store, SupervisorHandle]]:
    policy = policy or StorePolicy()
    store = Store(
        dsn, policy=policy, queue=WriteQueue(memory_bound=policy.memory_bound, journal_path=journal)
    )
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(
            Supervisor("root", [store_child_spec(store)], intensity=10, period=5.0).run
        )
        if migrated:
            await migrate(store)
        try:
            yield store, sup
        finally:
            await sup.stop()
