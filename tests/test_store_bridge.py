"""Smoke test of the trio-asyncio bridge under the pinned versions (trio 0.35, trio-asyncio 0.16,
asyncpg 0.32): a query, a transaction, LISTEN/NOTIFY, a cancel, and a server restart."""

from __future__ import annotations

import trio

from actors import Conn, StorePolicy, StoreUnavailable
from tests.harness._pg import Cluster
from tests.harness._store import running_store


async def test_a_query_and_a_transaction_cross_the_bridge(fresh_db: str) -> None:
    async with running_store(fresh_db, migrated=False) as (store, _):
        assert await store.fetchval("SELECT $1::int + 1", 41) == 42

        async def two_statements(conn: Conn) -> list[int]:
            await conn.execute("CREATE TABLE t (v int)")
            await conn.execute("INSERT INTO t VALUES (1), (2)")
            return [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")]

        assert await store.transact(two_statements) == [1, 2]


async def test_notifications_reach_a_trio_channel(fresh_db: str) -> None:
    async with running_store(fresh_db, migrated=False) as (store, _), store.listen("ch") as inbox:
        await store.notify("ch", "one")
        with trio.fail_after(10):
            assert await inbox.receive() == "one"


async def test_a_cancelled_query_returns_promptly_and_the_pool_stays_usable(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db, migrated=False) as (store, _):
        with trio.fail_after(4):  # well under the query's 30 s: the cancel reached asyncio
            with trio.move_on_after(0.3) as scope:
                await store.fetchval("SELECT pg_sleep(30)")
        assert scope.cancelled_caught
        assert await store.fetchval("SELECT 41 + 1") == 42
        with trio.fail_after(10):  # the server-side query went too
            while await store.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
            ):
                await trio.sleep(0.05)


async def test_the_pool_recovers_after_a_server_restart(pg_cluster: Cluster, fresh_db: str) -> None:
    async with running_store(fresh_db, migrated=False, policy=StorePolicy(read_wait=0.2)) as (
        store,
        _,
    ):
        async with store.listen("ch") as inbox:
            await pg_cluster.stop("immediate")
            try:
                with trio.fail_after(10):  # the listening connection ends with the server
                    async for _ in inbox:
                        pass
                with trio.fail_after(10):
                    while True:
                        try:
                            await store.fetchval("SELECT 1")
                        except StoreUnavailable:
                            break
                        await trio.sleep(0.05)
            finally:
                await pg_cluster.start()
        with trio.fail_after(30):
            while True:
                try:
                    assert await store.fetchval("SELECT 2") == 2
                    break
                except StoreUnavailable:
                    await trio.sleep(0.05)
        async with store.listen("ch") as inbox:
            await store.notify("ch", "back")
            with trio.fail_after(10):
                assert await inbox.receive() == "back"
