"""The TCP fault proxy passes, delays, black-holes and resets connections on command.

These tests do real I/O on 127.0.0.1, so they run on the real clock; the waits that prove
"nothing arrives" are short and bounded.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

import pytest
import trio

from actors import StorePolicy, StoreUnavailable
from tests.harness._pg import Cluster, psql_binary
from tests.harness._proxy import FaultProxy, Mode
from tests.harness._store import running_store
from tests.harness._wait import wait_until

QUIET = 0.2  # seconds a stalled connection is watched for a reply that must not come


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@asynccontextmanager
async def proxied_echo() -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of an echo server."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        async with FaultProxy.open("127.0.0.1", listeners[0].socket.getsockname()[1]) as proxy:
            yield proxy
        nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def assert_silent(stream: trio.SocketStream) -> None:
    """Nothing arrives on ``stream`` for QUIET seconds (and it is not closed)."""
    with trio.move_on_after(QUIET) as quiet:
        data = await stream.receive_some(100)
        pytest.fail(f"a stalled connection received {data!r}")
    assert quiet.cancelled_caught


async def wait_for(proxy: FaultProxy, **expected: object) -> None:
    """Until the proxy's statistics show ``expected`` (its tasks count after they forward)."""
    await wait_until(
        lambda: all(getattr(proxy.statistics(), k) == v for k, v in expected.items()),
        within=5,
        every=0.01,
    )


async def test_pass_through_forwards_both_ways_and_counts_connections_and_bytes() -> None:
    payload = bytes(range(256)) * 400  # more than one chunk
    async with proxied_echo() as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            assert await receive_exactly(stream, len(payload)) == payload
            await wait_for(proxy, bytes_up=len(payload), bytes_down=len(payload))
            stats = proxy.statistics()
            assert (stats.mode, stats.accepted, stats.active) == (Mode.PASS, 1, 1)
        await wait_for(proxy, active=0)
        assert proxy.statistics().accepted == 1


async def test_delay_holds_every_chunk_each_way() -> None:
    async with proxied_echo() as proxy:
        proxy.delay(0.1)
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            start = trio.current_time()
            await stream.send_all(b"ping")
            assert await receive_exactly(stream, 4) == b"ping"
            assert trio.current_time() - start >= 0.2  # once up, once down
            assert proxy.statistics().mode is Mode.DELAY


def test_a_negative_delay_is_refused() -> None:
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="at least 0 seconds, got -1"):
        proxy.delay(-1)


async def test_blackhole_holds_a_new_connection_until_pass_through() -> None:
    async with proxied_echo() as proxy:
        proxy.blackhole()
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"held")
            await assert_silent(stream)
            stats = proxy.statistics()
            assert (stats.accepted, stats.active, stats.bytes_up) == (1, 1, 0)
            proxy.pass_through()
            assert await receive_exactly(stream, 4) == b"held"


async def test_blackhole_stalls_an_existing_connection_until_pass_through() -> None:
    async with proxied_echo() as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"one")
            assert await receive_exactly(stream, 3) == b"one"
            await wait_for(proxy, bytes_up=3, bytes_down=3)
            proxy.blackhole()
            await stream.send_all(b"two")
            await assert_silent(stream)
            assert proxy.statistics().bytes_up == 3
            proxy.pass_through()
            assert await receive_exactly(stream, 3) == b"two"


async def test_reset_breaks_an_open_connection_with_rst_not_fin() -> None:
    async with proxied_echo() as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"one")
            assert await receive_exactly(stream, 3) == b"one"
            proxy.reset()
            # a FIN would read as b"" (end of stream); an RST is ECONNRESET
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some(100)
        await wait_for(proxy, active=0)


async def test_reset_resets_new_connections_until_pass_through() -> None:
    async with proxied_echo() as proxy:
        proxy.reset()
        with pytest.raises((trio.BrokenResourceError, OSError)):
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            async with stream:
                await stream.send_all(b"ping")
                await stream.receive_some(100)
        assert proxy.statistics().accepted == 1
        proxy.pass_through()
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"ping")
            assert await receive_exactly(stream, 4) == b"ping"


async def _psql_select(port: int, dsn: str) -> subprocess.CompletedProcess[bytes]:
    """psql to ``dsn``'s database through 127.0.0.1:``port``, one connection (no SSL retry)."""
    parts = urlsplit(dsn)
    credentials = parts.netloc.rpartition("@")[0]
    url = parts._replace(netloc=f"{credentials}@127.0.0.1:{port}", query="sslmode=disable")
    return await trio.run_process(
        [psql_binary(), url.geturl(), "-Atc", "SELECT 40 + 2"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )


async def test_psql_reaches_postgres_through_the_proxy_in_each_mode(pg_cluster: Cluster) -> None:
    dsn = pg_cluster.dsn()
    target = urlsplit(dsn)
    async with FaultProxy.open(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        passed = await _psql_select(proxy.port, dsn)
        assert (passed.returncode, passed.stdout.strip()) == (0, b"42")

        proxy.reset()
        refused = await _psql_select(proxy.port, dsn)
        assert refused.returncode != 0, refused.stdout

        proxy.blackhole()
        results: list[subprocess.CompletedProcess[bytes]] = []

        async def held() -> None:
            results.append(await _psql_select(proxy.port, dsn))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(held)
            await trio.sleep(QUIET)  # kept: nothing may get through while time passes
            assert results == [], "psql got through a black hole"
            assert proxy.statistics().active == 1
            proxy.pass_through()
        assert (results[0].returncode, results[0].stdout.strip()) == (0, b"42")
        stats = proxy.statistics()
        assert stats.accepted == 3 and stats.bytes_up > 0 and stats.bytes_down > 0


async def test_store_through_the_proxy_survives_a_reset(pg_cluster: Cluster, fresh_db: str) -> None:
    parts = urlsplit(fresh_db)
    async with FaultProxy.open("127.0.0.1", parts.port or 5432) as proxy:
        dsn = fresh_db.replace(f":{parts.port}/", f":{proxy.port}/")
        async with running_store(dsn, policy=StorePolicy(read_wait=0.2, command_timeout=2.0)) as (
            store,
            _,
        ):
            assert await store.fetchval("SELECT 1") == 1
            proxy.reset()
            with pytest.raises(StoreUnavailable):
                await store.fetchval("SELECT 1")
            proxy.pass_through()
            with trio.fail_after(10):
                while True:
                    try:
                        assert await store.fetchval("SELECT 2") == 2
                        break
                    except StoreUnavailable:
                        await trio.sleep(0.05)
