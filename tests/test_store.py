"""The store: migrations, group commit, reads, transactions, LISTEN/NOTIFY, and losing nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from actors import Conn, MigrationError, Op, StorePolicy, StoreUnavailable, WriteRejected, migrate
from actors._migrations import load_migrations
from runtime import ChildRestarted, faults, subscribe_events
from tests.harness._pg import Cluster, psql
from tests.harness._store import running_store

INSERT = (
    "INSERT INTO auth_events (event_id, kind, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)


def _drain(sub: object) -> list[object]:
    events = []
    while True:
        try:
            events.append(sub.receive.receive_nowait())  # type: ignore[attr-defined]
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def event(kind: str = "sign_in", user: str = "u1") -> Op:
    return Op(INSERT, (uuid.uuid4(), kind, user))


async def test_migrations_apply_once_and_are_recorded(fresh_db: str) -> None:
    async with running_store(fresh_db, migrated=False) as (store, _):
        applied = await migrate(store)
        assert applied == [m.version for m in load_migrations()]
        assert await migrate(store) == []
        rows = await store.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == applied


async def test_a_changed_migration_is_an_error_naming_the_file(
    fresh_db: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (v int);")
    async with running_store(fresh_db, migrated=False) as (store, _):
        assert await migrate(store, tmp_path) == [1]
        (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (v bigint);")
        with pytest.raises(MigrationError, match=r"0001_first.sql changed after it was applied"):
            await migrate(store, tmp_path)


async def test_write_returns_after_commit_and_reads_see_it(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        op = event()
        await store.write(op)
        row = await store.fetchrow(
            "SELECT kind, user_id FROM auth_events WHERE event_id = $1", op.args[0]
        )
        assert row == {"kind": "sign_in", "user_id": "u1"}
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 1


async def test_concurrent_writers_share_transactions(fresh_db: str) -> None:
    policy = StorePolicy(batch_window=0.01)
    async with running_store(fresh_db, policy=policy) as (store, _):
        before = store.statistics().batches_committed
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.write, event(user=f"u{i}"))
        stats = store.statistics()
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 200
        assert stats.batches_committed - before < 50
        assert stats.max_batch_size > 4


async def test_write_nowait_is_committed_without_waiting(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        for i in range(50):
            store.write_nowait(event(user=f"u{i}"))
        with trio.fail_after(10):
            while await store.fetchval("SELECT count(*) FROM auth_events") < 50:
                await trio.sleep(0.01)
        assert store.statistics().queue_depth == 0


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
                "SELECT count(*) FROM (SELECT 1 FROM auth_events WHERE user_id = 'a' FOR UPDATE) AS locked"
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


async def test_listen_receives_notifications(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _), store.listen("steward_events") as inbox:
        await store.notify("steward_events", "hello")
        with trio.fail_after(5):
            assert await inbox.receive() == "hello"


async def test_a_store_crash_loses_no_queued_write(fresh_db: str) -> None:
    with subscribe_events() as sub:
        await _crash_scenario(fresh_db)
        restarted = [e.child for e in _drain(sub) if isinstance(e, ChildRestarted)]
    assert restarted == ["store"]  # only the store restarted


async def _crash_scenario(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, sup):
        faults.arm("store.commit", error=RuntimeError("crash in commit"), times=1)
        try:
            ops = [event(user=f"u{i}") for i in range(20)]
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for op in ops:
                        nursery.start_soon(store.write, op)
        finally:
            faults.reset()
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 20
        assert sup.which_children()[0].restarts == 1


async def test_writes_queued_during_an_outage_commit_after_recovery(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    with subscribe_events() as sub:
        await _outage_scenario(pg_cluster, fresh_db)
        restarted = [e.child for e in _drain(sub) if isinstance(e, ChildRestarted)]
    assert restarted == []  # the store reconnected within its incarnation: nothing restarted


async def _outage_scenario(pg_cluster: Cluster, fresh_db: str) -> None:
    async with running_store(fresh_db, policy=StorePolicy(read_wait=0.2)) as (store, _):
        await store.write(event(user="before"))
        await pg_cluster.stop("immediate")
        try:
            for i in range(10_000):
                store.write_nowait(event(user=f"during{i}"))
            with pytest.raises(StoreUnavailable):
                with trio.fail_after(15):
                    while True:  # the outage is noticed on the next use
                        await store.fetchval("SELECT 1")
                        await trio.sleep(0.05)
            assert store.statistics().queue_depth >= 1
        finally:
            await pg_cluster.start()
        with trio.fail_after(20):
            await store.write(event(user="after"))
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 10_002
        stats = store.statistics()
        assert stats.connected and stats.outage_since is None and stats.reconnects >= 1


async def test_past_the_memory_bound_writes_spill_to_the_journal_and_replay_once(
    pg_cluster: Cluster, fresh_db: str, tmp_path: Path
) -> None:
    journal = tmp_path / "store.journal"
    policy = StorePolicy(memory_bound=5, read_wait=0.2)
    async with running_store(fresh_db, policy=policy, journal=journal) as (store, _):
        await pg_cluster.stop("immediate")
        try:
            for i in range(12):
                store.write_nowait(event(user=f"j{i}"))
            assert store.statistics().journal_depth >= 7
            assert journal.exists()
        finally:
            await pg_cluster.start()
        with trio.fail_after(20):
            await store.write(event(user="after"))
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 13
        assert not journal.exists()


async def test_a_new_store_replays_a_journal_left_by_a_dead_process_exactly_once(
    fresh_db: str, tmp_path: Path
) -> None:
    journal = tmp_path / "store.journal"
    from actors import WriteQueue

    queue = WriteQueue(memory_bound=0, journal_path=journal)
    ops = [event(user=f"dead{i}") for i in range(3)]
    for op in ops:
        queue.put([op], wait=False)
    # the first entry was applied before the process died, without its acknowledgement
    first_id = queue.peek(1)[0].id
    async with running_store(fresh_db) as (store, _):
        await store.write(
            ops[0], Op("INSERT INTO store_applied_ops (op_id) VALUES ($1)", (first_id,))
        )
        await store.write(Op("DELETE FROM auth_events WHERE user_id = 'dead0'"))
    async with running_store(fresh_db, journal=journal) as (store, _):
        with trio.fail_after(10):
            while journal.exists():
                await trio.sleep(0.01)
        users = [
            r["user_id"]
            for r in await store.fetch("SELECT user_id FROM auth_events ORDER BY user_id")
        ]
        # dead0 was deleted after it was applied: replay must not apply it again
        assert users == ["dead1", "dead2"]


async def test_bridge_cancel_returns_promptly_and_the_pool_stays_usable(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):
        with trio.move_on_after(0.3) as scope:
            await store.fetchval("SELECT pg_sleep(5)")
        assert scope.cancelled_caught
        assert await store.fetchval("SELECT 41 + 1") == 42


def test_database_is_untouched_by_the_harness(fresh_db: str) -> None:
    assert psql(fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


async def test_a_cancelled_write_is_still_applied_exactly_once(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    """The caller stopped waiting; the write was queued, so it commits once after recovery."""
    async with running_store(fresh_db, policy=StorePolicy(read_wait=0.2)) as (store, sup):
        await pg_cluster.stop("immediate")
        try:
            op = event(user="cancelled")
            with trio.move_on_after(0.2) as scope:
                await store.write(op)
            assert scope.cancelled_caught
        finally:
            await pg_cluster.start()
        with trio.fail_after(20):
            await store.write(event(user="after"))
        assert (
            await store.fetchval("SELECT count(*) FROM auth_events WHERE user_id = 'cancelled'")
            == 1
        )
        assert [c.restarts for c in sup.which_children()] == [
            0
        ]  # the store reconnected, never crashed
