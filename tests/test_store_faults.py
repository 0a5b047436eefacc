"""The store loses nothing: crashes, outages, a kill mid-batch, a black-holed network."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
import trio

from actors import Op, StorePolicy, StoreUnavailable
from runtime import ChildRestarted, EventSubscription, faults, subscribe_events
from tests.harness._pg import Cluster
from tests.harness._proxy import FaultProxy
from tests.harness._store import running_store
from tests.harness._wait import wait_until

INSERT = (
    "INSERT INTO auth_events (event_id, kind, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)


def event(user: str) -> Op:
    return Op(INSERT, (uuid.uuid4(), "sign_in", user))


def restarted(sub: EventSubscription) -> list[str]:
    """The ids of the children restarted so far (read from the supervision events)."""
    ids: list[str] = []
    while True:
        try:
            e = sub.receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return ids
        if isinstance(e, ChildRestarted):
            ids.append(e.child)


async def test_a_store_crash_on_an_armed_fault_point_loses_no_queued_write(
    fresh_db: str,
) -> None:
    with subscribe_events() as sub:
        async with running_store(fresh_db) as (store, sup):
            faults.arm("store.commit", error=RuntimeError("crash in commit"), times=1)
            try:
                with trio.fail_after(20):
                    async with trio.open_nursery() as nursery:
                        for i in range(20):
                            nursery.start_soon(store.write, event(f"u{i}"))
            finally:
                faults.reset()
            assert await store.fetchval("SELECT count(*) FROM auth_events") == 20
            assert sup.which_children()[0].restarts == 1
            assert store.statistics().incarnations == 2
        assert restarted(sub) == ["store"]  # only the store restarted


async def test_an_asyncio_error_outside_any_call_crashes_the_incarnation_not_the_process(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db) as (store, sup):
        store.write_nowait(event("queued"))
        store._loop.call_exception_handler(
            {"message": "a stray failure", "exception": RuntimeError("stray")}
        )
        with trio.fail_after(20):
            await store.write(event("after"))
            while sup.which_children()[0].restarts == 0:
                await trio.sleep(0.01)
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 2


async def test_writes_queued_during_an_outage_commit_after_recovery_and_reads_fail_fast(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    with subscribe_events() as sub:
        async with running_store(fresh_db, policy=StorePolicy(read_wait=0.2)) as (store, _):
            await store.write(event("before"))
            await pg_cluster.stop("immediate")
            try:
                for i in range(10_000):
                    store.write_nowait(event(f"during{i}"))
                with pytest.raises(StoreUnavailable):
                    with trio.fail_after(15):
                        while True:  # the outage is noticed on the next use
                            await store.fetchval("SELECT 1")
                            await trio.sleep(0.05)
                with trio.fail_after(5), pytest.raises(StoreUnavailable):
                    await store.transact(lambda conn: conn.fetchval("SELECT 1"))
                # the connection check that the failure started
                await wait_until(lambda: not store.statistics().connected, within=5)
                stats = store.statistics()
                assert stats.queue_depth >= 1 and not stats.connected
                assert stats.outage_since is not None
            finally:
                await pg_cluster.start()
            with trio.fail_after(30):
                await store.write(event("after"))
            assert await store.fetchval("SELECT count(*) FROM auth_events") == 10_002
            stats = store.statistics()
            assert stats.connected and stats.outage_since is None and stats.reconnects >= 1
        assert restarted(sub) == []  # the store reconnected within its incarnation


async def test_a_kill_in_the_middle_of_batches_loses_no_acknowledged_or_queued_write(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    acknowledged: list[uuid.UUID] = []
    queued: list[uuid.UUID] = []
    async with running_store(fresh_db, policy=StorePolicy(read_wait=0.2)) as (store, _):

        async def writer(w: int) -> None:
            for i in range(60):
                op = event(f"w{w}-{i}")
                if i % 2:
                    store.write_nowait(op)
                    queued.append(op.args[0])
                else:
                    await store.write(op)
                    acknowledged.append(op.args[0])
                await trio.sleep(0.002)  # kept: the writers' pace, spread over the kill

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for w in range(8):
                    nursery.start_soon(writer, w)
                await wait_until(lambda: store.statistics().batches_committed >= 3, within=10)
                await pg_cluster.stop("immediate")
                await trio.sleep(0.3)  # kept: the database stays away a while, writes queue up
                await pg_cluster.start()
            await store.write(event("barrier"))  # committed after everything queued before it
        ids = {r["event_id"] for r in await store.fetch("SELECT event_id FROM auth_events")}
        assert len(acknowledged) == len(queued) == 240
        assert set(acknowledged) <= ids and set(queued) <= ids
        assert len(ids) == 481
        assert store.statistics().reconnects >= 1


async def test_a_black_holed_network_queues_writes_and_fails_reads_until_it_heals(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    port = urlsplit(fresh_db).port
    assert port is not None
    policy = StorePolicy(command_timeout=0.5, connect_timeout=0.5, read_wait=0.2)
    async with FaultProxy.open("127.0.0.1", port) as proxy:
        dsn = fresh_db.replace(f":{port}/", f":{proxy.port}/")
        async with running_store(dsn, policy=policy) as (store, sup):
            await store.write(event("before"))
            proxy.blackhole()
            for i in range(100):
                store.write_nowait(event(f"held{i}"))
            with trio.fail_after(10), pytest.raises(StoreUnavailable):
                while True:
                    await store.fetchval("SELECT 1")
                    await trio.sleep(0.05)
            proxy.pass_through()
            with trio.fail_after(30):
                await store.write(event("after"))
            assert await store.fetchval("SELECT count(*) FROM auth_events") == 102
            assert [c.restarts for c in sup.which_children()] == [0]


async def test_a_cancelled_write_is_still_applied_exactly_once(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    """The caller stopped waiting; the write was queued, so it commits once after recovery."""
    async with running_store(fresh_db, policy=StorePolicy(read_wait=0.2)) as (store, sup):
        await pg_cluster.stop("immediate")
        try:
            op = event("cancelled")
            with trio.move_on_after(0.2) as scope:
                await store.write(op)
            assert scope.cancelled_caught
        finally:
            await pg_cluster.start()
        with trio.fail_after(30):
            await store.write(event("after"))
        count = await store.fetchval("SELECT count(*) FROM auth_events WHERE user_id = 'cancelled'")
        assert count == 1
        assert [c.restarts for c in sup.which_children()] == [0]  # reconnected, never crashed
