"""The store's face: write, write_nowait, reads, transact, group commit, idempotent retries."""

from __future__ import annotations

import datetime
import uuid

import pytest
import trio

from actors import Conn, Op, StorePolicy, WriteRejected
from tests.harness._store import running_store
from tests.harness._wait import wait_until

INSERT = (
    "INSERT INTO auth_events (event_id, kind, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)


def event(kind: str = "sign_in", user: str = "u1") -> Op:
    return Op(INSERT, (uuid.uuid4(), kind, user))


async def test_write_returns_after_commit_and_reads_see_it(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        op = event()
        await store.write(op)
        row = await store.fetchrow(
            "SELECT kind, user_id FROM auth_events WHERE event_id = $1", op.args[0]
        )
        assert row == {"kind": "sign_in", "user_id": "u1"}
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 1
        assert await store.fetchrow("SELECT 1 FROM auth_events WHERE user_id = 'nobody'") is None


async def test_rows_come_back_as_dicts_of_python_values(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        event_id = uuid.uuid4()
        await store.write(
            Op(
                "INSERT INTO auth_events (event_id, kind, detail) VALUES ($1, 'k', $2)",
                (event_id, {"why": ["a", 1]}),
            )
        )
        rows = await store.fetch("SELECT event_id, occurred_at, detail FROM auth_events")
        assert rows == [
            {
                "event_id": event_id,
                "occurred_at": rows[0]["occurred_at"],
                "detail": {"why": ["a", 1]},
            }
        ]
        assert isinstance(rows[0]["event_id"], uuid.UUID)
        assert isinstance(rows[0]["occurred_at"], datetime.datetime)
        assert rows[0]["occurred_at"].tzinfo is not None
        assert await store.fetchval("SELECT $1::bytea", b"\x00\xff") == b"\x00\xff"


async def test_ops_of_one_write_commit_together_or_not_at_all(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        good = event(user="together")
        bad = Op("INSERT INTO auth_events (event_id, kind) VALUES ($1, NULL)", (uuid.uuid4(),))
        with pytest.raises(WriteRejected, match="null value"):
            await store.write(good, bad)
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 0


async def test_concurrent_writers_share_transactions(fresh_db: str) -> None:
    async with running_store(fresh_db, policy=StorePolicy(batch_window=0.01)) as (store, _):
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.write, event(user=f"u{i}"))
        stats = store.statistics()
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 200
        assert stats.ops_committed - before.ops_committed == 200
        assert stats.batches_committed - before.batches_committed < 50
        assert stats.max_batch_size > 4
        assert stats.commit_latency_p99_ms >= stats.commit_latency_p50_ms > 0


async def test_without_a_window_writers_that_queue_during_a_commit_share_the_next(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db, policy=StorePolicy(batch_window=0.0)) as (store, _):
        before = store.statistics().batches_committed
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(store.write, event(user=f"u{i}"))
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 300
        assert store.statistics().batches_committed - before < 100


async def test_a_batch_is_at_most_batch_max_ops(fresh_db: str) -> None:
    async with running_store(fresh_db, policy=StorePolicy(batch_max=10)) as (store, _):
        for i in range(95):
            store.write_nowait(event(user=f"u{i}"))
        await store.write(event(user="last"))
        stats = store.statistics()
        assert stats.max_batch_size == 10
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 96


async def test_write_nowait_is_committed_without_waiting(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        for i in range(50):
            store.write_nowait(event(user=f"u{i}"))
        assert store.statistics().queue_depth > 0  # nothing committed before a checkpoint
        # the queue drains on its own (its depth drops once the commit returns, after the rows
        # are visible: waiting on the rows and then reading the depth raced)
        await wait_until(lambda: store.statistics().queue_depth == 0, every=0.01)
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 50


async def test_writes_commit_in_the_order_they_were_queued(fresh_db: str) -> None:
    upsert = (
        "INSERT INTO users (user_id, issuer, subject, tier) VALUES ('u', 'i', 's', $1) "
        "ON CONFLICT (user_id) DO UPDATE SET tier = EXCLUDED.tier"
    )
    async with running_store(fresh_db, policy=StorePolicy(batch_max=7)) as (store, _):
        for i in range(50):
            store.write_nowait(Op(upsert, (f"t{i}",)))
        await store.write(Op(upsert, ("last",)))
        assert await store.fetchval("SELECT tier FROM users") == "last"


async def test_a_retried_op_applies_once(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        op = event()
        await store.write(op)
        await store.write(op)  # as after an ambiguous failure
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 1


async def test_a_refused_op_fails_alone_and_its_batch_neighbours_commit(fresh_db: str) -> None:
    async with running_store(fresh_db, policy=StorePolicy(batch_window=0.02)) as (store, _):
        bad = Op("INSERT INTO auth_events (event_id, kind) VALUES ($1, NULL)", (uuid.uuid4(),))
        results: dict[str, object] = {}

        async def good() -> None:
            await store.write(event(user="good"))
            results["good"] = "ok"

        async def refused() -> None:
            try:
                await store.write(bad)
            except WriteRejected as exc:
                results["bad"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(good)
            nursery.start_soon(refused)
        assert results["good"] == "ok"
        assert isinstance(results["bad"], WriteRejected)
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 1
        assert store.statistics().rejected_ops == 1


async def test_transact_runs_a_read_modify_write_in_one_transaction(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        await store.write(event(user="a"))

        async def rename(conn: Conn) -> int:
            n = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM auth_events WHERE user_id = 'a' FOR UPDATE) AS l"
            )
            await conn.execute("UPDATE auth_events SET user_id = 'b' WHERE user_id = 'a'")
            return int(n)

        assert await store.transact(rename) == 1

        async def fails(conn: Conn) -> None:
            await conn.execute("UPDATE auth_events SET user_id = 'c'")
            raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            await store.transact(fails)
        assert await store.fetchval("SELECT user_id FROM auth_events") == "b"


async def test_transact_with_an_advisory_lock_is_single_flight(fresh_db: str) -> None:
    """Two read-modify-write functions on one key serialize on the lock: no lost update."""
    async with running_store(fresh_db) as (store, _):
        await store.write(
            Op("INSERT INTO users (user_id, issuer, subject, tier) VALUES ('u', 'i', 's', '0')")
        )

        async def bump(conn: Conn) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('u'))")
            tier = await conn.fetchval("SELECT tier FROM users WHERE user_id = 'u'")
            await conn.execute("SELECT pg_sleep(0.05)")
            await conn.execute("UPDATE users SET tier = $1 WHERE user_id = 'u'", str(int(tier) + 1))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(store.transact, bump)
        assert await store.fetchval("SELECT tier FROM users") == "5"


async def test_listen_receives_notifications(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _), store.listen("steward_events") as inbox:
        await store.notify("steward_events", "hello")
        await store.notify("other_channel", "not for us")
        await store.notify("steward_events", "again")
        with trio.fail_after(5):
            assert await inbox.receive() == "hello"
            assert await inbox.receive() == "again"


async def test_a_full_listener_drops_the_newest_and_counts_them(fresh_db: str) -> None:
    async with (
        running_store(fresh_db, policy=StorePolicy(listen_buffer=2)) as (store, _),
        store.listen("c") as inbox,
    ):
        for i in range(5):
            await store.notify("c", str(i))
        await wait_until(
            lambda: store.statistics().notifications_dropped >= 3, within=5, every=0.01
        )
        assert [inbox.receive_nowait(), inbox.receive_nowait()] == ["0", "1"]


def test_a_pool_too_small_for_the_writer_and_readers_is_refused() -> None:
    with pytest.raises(ValueError, match=r"pool_max must be at least 2 .* got 1"):
        StorePolicy(pool_min=1, pool_max=1)
