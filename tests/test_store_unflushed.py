"""``Store.write(durable=False)``: acknowledged once visible, without waiting for the WAL flush
(a batch of only such writes commits with ``synchronous_commit`` off); one durable write in the
batch makes the whole batch wait for its flush (docs/store.md, "What is durable before the
answer"). Each op records the setting its transaction committed with."""

from __future__ import annotations

import functools
import uuid

import trio

from actors import Op, StorePolicy
from tests.harness._store import running_store

RECORD = (
    "INSERT INTO auth_events (event_id, kind, user_id) "
    "VALUES ($1, $2, current_setting('synchronous_commit'))"
)


def record(kind: str) -> Op:
    return Op(RECORD, (uuid.uuid4(), kind))


async def test_an_unflushed_write_commits_without_the_flush_wait_and_is_visible_at_once(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db) as (store, _):
        await store.write(record("unflushed"), durable=False)
        assert (
            await store.fetchval("SELECT user_id FROM auth_events WHERE kind = 'unflushed'")
            == "off"
        )
        await store.write(record("durable"))
        assert (
            await store.fetchval("SELECT user_id FROM auth_events WHERE kind = 'durable'") == "on"
        )
        await store.write(record("two-a"), record("two-b"), durable=False)  # a transaction
        rows = await store.fetch("SELECT user_id FROM auth_events WHERE kind LIKE 'two-%'")
        assert [r["user_id"] for r in rows] == ["off", "off"]


async def test_a_batch_with_one_durable_write_waits_for_the_flush_for_all(fresh_db: str) -> None:
    async with running_store(fresh_db, policy=StorePolicy(batch_window=0.05)) as (store, _):
        before = store.statistics().batches_committed
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(store.write, record("mixed"), durable=False))
            nursery.start_soon(store.write, record("mixed"))
            for _ in range(8):
                nursery.start_soon(functools.partial(store.write, record("mixed"), durable=False))
        assert store.statistics().batches_committed - before == 1  # they shared one batch
        rows = await store.fetch("SELECT user_id FROM auth_events WHERE kind = 'mixed'")
        assert [r["user_id"] for r in rows] == ["on"] * 10
