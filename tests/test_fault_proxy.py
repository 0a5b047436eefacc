"""The TCP fault proxy passes, delays, black-holes and resets connections on command."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from actors import StorePolicy, StoreUnavailable
from tests.harness._pg import Cluster
from tests.harness._proxy import FaultProxy
from tests.harness._store import running_store


async def echo_server(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def round_trip(port: int, payload: bytes = b"ping") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        return await stream.receive_some(100)


async def test_pass_delay_blackhole_and_reset() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo_server, 0, host="127.0.0.1"))
        echo_port = listeners[0].socket.getsockname()[1]
        async with FaultProxy.open("127.0.0.1", echo_port) as proxy:
            assert await round_trip(proxy.port) == b"ping"

            proxy.delay(0.2)
            start = trio.current_time()
            assert await round_trip(proxy.port) == b"ping"
            assert trio.current_time() - start >= 0.4  # delayed both ways

            proxy.blackhole()
            with trio.move_on_after(0.3) as scope:
                await round_trip(proxy.port)
            assert scope.cancelled_caught

            proxy.reset()
            with pytest.raises((trio.BrokenResourceError, OSError)):
                await round_trip(proxy.port)

            proxy.pass_through()
            assert await round_trip(proxy.port) == b"ping"
            stats = proxy.statistics()
            assert stats.accepted >= 5 and stats.bytes_up > 0 and stats.bytes_down > 0
        nursery.cancel_scope.cancel()


async def test_store_through_the_proxy_survives_a_reset(pg_cluster: Cluster, fresh_db: str) -> None:
    from urllib.parse import urlsplit

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
