"""The store through an outage (docs/store.md, "Writes during an outage"): a bounded write
wait, withdrawn entries, a bounded journal that refuses rather than drops, coalesced
heartbeats, and the "connected" signal actors wait on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import trio

from actors import Op, QueueFull, Store, StorePolicy, StoreUnavailable, WriteQueue
from server.postgres._embedded import EmbeddedPostgres
from tests.faults.conftest import new_database, own_cluster  # noqa: F401 (a fixture)
from tests.harness._pg import psql
from tests.harness._store import running_store
from tests.harness._wait import wait_until

INSERT = (
    "INSERT INTO auth_events (event_id, kind, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)


def event(user: str) -> Op:
    return Op(INSERT, (uuid.uuid4(), "sign_in", user))


def count(dsn: str, user: str) -> int:
    return int(psql(dsn, f"SELECT count(*) FROM auth_events WHERE user_id = '{user}'"))


POLICY = StorePolicy(
    write_wait=0.5, read_wait=0.3, connect_timeout=1.0, command_timeout=2.0, probe_interval=0.2
)


async def test_a_write_during_an_outage_is_answered_within_write_wait_and_withdrawn(
    own_cluster: EmbeddedPostgres,  # noqa: F811
) -> None:
    """Observed before: a write waited for the whole outage. Now it gives up after write_wait,
    and, the store being detached, its entry is withdrawn: it never commits. An acknowledged
    write before the outage and a queued fire-and-forget one during it both commit."""
    dsn = new_database(own_cluster)
    async with running_store(dsn, policy=POLICY) as (store, _):
        await store.write(event("acknowledged"))
        own_cluster.kill()
        with trio.fail_after(10):
            while store.connected:
                await trio.sleep(0.02)  # the connection check sees the outage with no write
        assert store.unready_reason() is not None
        assert "unreachable" in (store.unready_reason() or "")
        store.write_nowait(event("queued"))
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="withdrawn, never applied"):
            await store.write(event("refused"))
        assert time.monotonic() - started < POLICY.write_wait + 1.0
        stats = store.statistics()
        assert stats.writes_unacknowledged == 1 and stats.writes_withdrawn == 1
        assert stats.queue_depth == 1  # the fire-and-forget entry stays
        with pytest.raises(StoreUnavailable):
            await store.fetchval("SELECT 1")
        await own_cluster.start()
        with trio.fail_after(20):
            await store.wait_connected()
            await store.write()  # a barrier: what is queued has committed
    assert (count(dsn, "acknowledged"), count(dsn, "queued"), count(dsn, "refused")) == (1, 1, 0)


async def test_heartbeats_coalesce_while_queued(tmp_path: Path) -> None:
    queue = WriteQueue(memory_bound=100, journal_path=tmp_path / "j")
    beat = Op("UPDATE connections SET heartbeat_at = now() WHERE connection_id = $1", (1,))
    for _ in range(1000):
        queue.put([beat], wait=False, key=("heartbeat", 1))
    assert queue.depth == 1 and queue.coalesced == 999
    batch = queue.peek(10)  # taken by the writer: the next one queues anew
    queue.put([beat], wait=False, key=("heartbeat", 1))
    assert queue.depth == 2
    queue.ack(batch)
    assert queue.depth == 1


async def test_the_journal_is_bounded_refuses_past_it_and_drops_nothing(
    own_cluster: EmbeddedPostgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Past memory_bound entries spill; at journal_max_bytes a new write is refused with
    QueueFull (503 at the edge) and a fire-and-forget one is counted as dropped; everything
    queued before the bound commits once the database is back."""
    dsn = new_database(own_cluster)
    journal = tmp_path / "store.journal"
    policy = StorePolicy(
        memory_bound=10,
        write_wait=0.3,
        read_wait=0.3,
        connect_timeout=1.0,
        command_timeout=2.0,
        probe_interval=0.2,
    )
    queue = WriteQueue(
        memory_bound=10, journal_path=journal, spill_batch=5, journal_max_bytes=8_000
    )
    store = Store(dsn, policy=policy, queue=queue)
    async with running_store(dsn, policy=policy) as (migrated, _):
        del migrated  # the schema, made by a store of its own
    from actors import store_child_spec
    from runtime import Supervisor

    async with trio.open_nursery() as nursery:
        sup = await nursery.start(Supervisor("root", [store_child_spec(store)]).run)
        with trio.fail_after(10):
            await store.wait_connected()
        own_cluster.kill()
        await wait_until(lambda: not store.connected)
        queued = 0
        with pytest.raises(QueueFull, match="journal_max_bytes=8000"):
            while True:
                store.queue.put([event("spilled")], wait=False)
                queued += 1
                assert queued < 10_000
        assert queue.journal_bytes <= 8_000 and queue.refused == 1
        with pytest.raises(QueueFull):
            await store.write(event("refused"))
        with pytest.raises(QueueFull):
            store.check_room()
        store.write_nowait(event("dropped"))
        assert store.statistics().writes_dropped == 1
        assert queued > 10 and journal.exists()
        await own_cluster.start()
        await wait_until(lambda: not store.queue.depth, within=30, every=0.05)
        await sup.stop()
    assert count(dsn, "spilled") == queued
    assert count(dsn, "refused") == 0 and count(dsn, "dropped") == 0
    assert not journal.exists()


async def test_a_long_outage_logs_one_connect_failure_a_minute_not_one_per_attempt() -> None:
    """A store that cannot connect retries every few hundred milliseconds for as long as the
    outage lasts; its log says so when the error starts (and changes), then once a minute."""
    from structlog.testing import capture_logs

    from runtime import Backoff
    from server.postgres._embedded import free_port

    policy = StorePolicy(
        connect_timeout=0.5, reconnect=Backoff(min=0.01, max=0.02, jitter=0.0, reset_after=30.0)
    )
    dsn = f"postgresql://nobody:x@127.0.0.1:{free_port()}/none"  # nothing listens there
    with capture_logs() as logs:
        async with running_store(dsn, policy=policy, migrated=False) as (store, _):
            await wait_until(lambda: store.statistics().connect_failures >= 20, every=0.05)
            assert not store.connected
    failed = [e for e in logs if e["event"] == "store_connect_failed"]
    assert len(failed) == 1, failed
    assert failed[0]["attempts"] == 1 and failed[0]["error"] == "ConnectionRefusedError"


async def test_uncached_requests_during_a_black_hole_are_answered_within_db_wait(
    fresh_db: str,
) -> None:
    """The TCP path to PostgreSQL black-holed (nothing answers, nothing is refused): 40
    requests at once whose bearer tokens no cache holds each get 503 with Retry-After within
    db_wait, however many there are. Before, a read waited for a connection of the pool
    behind the reads already hanging on it (each up to command_timeout), so the answers came
    after 10 to 60 s. The node's timeouts are the defaults (connect 5 s, command 10 s)."""
    import httpx

    from tests.harness._proxy import FaultProxy
    from tests.harness._steward import MCP_HEADERS, running_node

    port = int(fresh_db.rsplit(":", 1)[1].split("/", 1)[0])
    db_wait = 1.5
    async with FaultProxy.open("127.0.0.1", port) as proxy:
        dsn = fresh_db.replace(f":{port}/", f":{proxy.port}/")
        policy = StorePolicy(write_wait=db_wait, answer_wait=db_wait, read_wait=0.5)
        async with (
            running_node(dsn, store_policy=policy) as node,
            httpx.AsyncClient(timeout=120) as http,
        ):
            url = f"{node.info.listen_url}/mcp"
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            # the pool holds its connections: a request before the fault opens them
            first = await http.post(
                url, json=ping, headers={**MCP_HEADERS, "authorization": "Bearer x"}
            )
            assert first.status_code == 401
            proxy.blackhole()
            answers: list[tuple[float, int, str | None]] = []

            async def one(i: int) -> None:
                started = time.monotonic()
                headers = {**MCP_HEADERS, "authorization": f"Bearer unknown-{i}"}
                r = await http.post(url, json=ping, headers=headers)
                answers.append(
                    (time.monotonic() - started, r.status_code, r.headers.get("retry-after"))
                )

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
            assert {status for _, status, _ in answers} == {503}, answers
            assert all(retry for _, _, retry in answers)
            slowest = max(seconds for seconds, _, _ in answers)
            assert slowest < db_wait + 2.0, sorted(seconds for seconds, _, _ in answers)
            proxy.pass_through()
