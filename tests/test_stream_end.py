"""Ending an idle stream in the caller's step (server.http._stream_end), against a real Hypercorn.

The final event and the end of the chunked body go straight to the socket while the stream's
ASGI task still waits; the connection then serves its next request (Hypercorn's h11 state stays
right), and a write the socket takes only in part is finished by the stream's own task.

And the fast path is quarantined: a Hypercorn whose private objects differ (a name renamed, a
module moved) turns it off, logged once with the missing fact named, and an end that raises
falls back to the stream's own ASGI send. These tests pass on any Hypercorn and h11, whether
the fast path stays on or turns itself off (``.ci/canary`` runs them on the newest releases)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.tcp_server import TCPServer

import server.http._stream_end as stream_end_module
from actors.sessions import Outbox, StreamEvent, final_event
from server.http._plumbing import lifespan
from server.http._stream_end import FACTS, FastPath, FastPathState, StreamEnd
from tests.harness._asgi_server import hypercorn_on_a_free_port
from tests.harness._hypercorn import CANARY, renamed

SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


class Harness:
    def __init__(self, fast: FastPath | None = None) -> None:
        self.fast = FastPath() if fast is None else fast
        self.opened, self.streams = trio.open_memory_channel[tuple[Outbox, StreamEnd | None]](8)
        self.finished: list[str] = []

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["path"] == "/plain":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        outbox = Outbox(4)
        end = self.fast.for_send(send, receive)
        if end is not None:
            outbox.ender, outbox.nudge = end.end, end.nudge
        await self.opened.send((outbox, end))
        while (event := outbox.take()) is None:  # the pump's loop, reduced to what matters here
            if outbox.ended and end is not None:
                await end.flush()
                self.finished.append("ended")
                return
            if outbox.closed:
                break
            if not await outbox.wait(receive):
                self.finished.append("client left")
                return
        if event is not None:  # the final event, when the stream ends through ASGI
            body = json.dumps(event.data).encode()
            await send({"type": "http.response.body", "body": body, "more_body": False})
            self.finished.append("sent")
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def read_until(stream: trio.SocketStream, buffer: bytearray, marker: bytes) -> bytes:
    with trio.fail_after(10):  # a failure, not a hang
        while marker not in buffer:
            chunk = await stream.receive_some()
            assert chunk, f"the connection closed before {marker!r}; got {bytes(buffer)!r}"
            buffer += chunk
    end = buffer.index(marker) + len(marker)
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


async def open_stream(port: int) -> tuple[trio.SocketStream, bytearray]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /sse HTTP/1.1\r\nhost: t\r\naccept: text/event-stream\r\n\r\n")
    buffer = bytearray()
    head = await read_until(stream, buffer, b": open\n\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    return stream, buffer


async def waiting_stream(
    harness: Harness, port: int
) -> tuple[trio.SocketStream, bytearray, Outbox, StreamEnd | None]:
    """A stream opened and read up to its first comment, its task waiting in ``outbox.wait``."""
    stream, buffer = await open_stream(port)
    outbox, end = await harness.streams.receive()
    await trio.testing.wait_all_tasks_blocked()  # the stream's task is parked in outbox.wait
    return stream, buffer, outbox, end


async def next_request_is_served(stream: trio.SocketStream, buffer: bytearray) -> None:
    """Hypercorn recycled the connection: the next request on it is answered."""
    await stream.send_all(b"GET /plain HTTP/1.1\r\nhost: t\r\n\r\n")
    reply = await read_until(stream, buffer, b"\r\n\r\nok")
    assert reply.startswith(b"HTTP/1.1 200")


def final() -> StreamEvent:
    return final_event("error", {"error": "revoked", "message": "access was revoked"})


def direct(end: StreamEnd | None, fast: FastPath) -> StreamEnd:
    """The stream's ``StreamEnd``: there must be one, except in the canary (the newest Hypercorn
    and h11), where a fast path that turned itself off skips what only it does."""
    if end is None:
        if CANARY and fast.state is FastPathState.OFF:
            pytest.skip(f"the fast path turned itself off on this Hypercorn: {fast.off_reason}")
        raise AssertionError(
            f"no StreamEnd; the fast path is {fast.state.value}: {fast.off_reason}"
        )
    return end


async def ends_through_its_task(
    harness: Harness, stream: trio.SocketStream, buffer: bytearray, outbox: Outbox
) -> None:
    """What ``Connection.end_with`` does when the fast path declines: the final event queued, the
    outbox closed; the stream's task sends it through Hypercorn, and the connection is reused."""
    assert not outbox.end(final())
    assert not outbox.ended
    assert outbox.put(final())
    outbox.close()
    tail = await read_until(stream, buffer, b"0\r\n\r\n")
    assert b'"error": "revoked"' in tail
    await next_request_is_served(stream, buffer)
    await stream.aclose()


async def test_an_idle_stream_ends_in_the_callers_step_and_its_connection_is_reused() -> None:
    harness = Harness()
    async with hypercorn_on_a_free_port(harness.app) as port:
        stream, buffer, outbox, end = await waiting_stream(harness, port)
        direct(end, harness.fast)  # Hypercorn's HTTP/1.1 objects as this module knows them
        assert harness.fast.state is FastPathState.ON
        assert outbox.end(final())
        assert outbox.ended and outbox.closed
        # written already: the stream's task has not run since (its wait is not even woken)
        tail = await read_until(stream, buffer, b"0\r\n\r\n")
        assert b'"error":"revoked"' in tail and tail.endswith(b"\n\n\r\n0\r\n\r\n")
        assert harness.finished == []
        assert not outbox.end(final())  # once
        outbox.close()  # what the connection actor does as it stops
        await next_request_is_served(stream, buffer)
        assert harness.finished == ["ended"]
        await stream.aclose()


async def test_what_the_socket_does_not_take_is_sent_by_the_streams_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness()
    real_write = stream_end_module.os.write
    monkeypatch.setattr(stream_end_module.os, "write", lambda fd, data: real_write(fd, data[:7]))
    async with hypercorn_on_a_free_port(harness.app) as port:
        stream, buffer, outbox, end = await waiting_stream(harness, port)
        direct(end, harness.fast)
        before = len(buffer)
        assert outbox.end(final())
        with trio.move_on_after(0.2):  # seven bytes arrived, not the end of the body
            await read_until(stream, buffer, b"0\r\n\r\n")
            raise AssertionError("the whole body arrived from a seven-byte write")
        assert len(buffer) == before + 7
        outbox.close()
        tail = await read_until(stream, buffer, b"0\r\n\r\n")
        assert b'"error":"revoked"' in tail
        await next_request_is_served(stream, buffer)
        assert harness.finished == ["ended"]
        await stream.aclose()


async def test_a_stream_with_events_queued_ends_through_its_task() -> None:
    """Nothing may overtake an event already queued: then the final event is queued too."""
    harness = Harness()
    async with hypercorn_on_a_free_port(harness.app) as port:
        stream, buffer, outbox, _ = await waiting_stream(harness, port)
        assert outbox.put(StreamEvent({"n": 1}))  # wakes the task through its receive queue
        assert not outbox.end(final())  # refused, nothing written
        assert not outbox.ended
        tail = await read_until(stream, buffer, b"0\r\n\r\n")
        assert b'{"n": 1}' in tail and b"revoked" not in tail
        await next_request_is_served(stream, buffer)
        assert harness.finished == ["sent"]
        await stream.aclose()


async def test_a_send_that_is_not_hypercorns_gets_no_stream_end() -> None:
    async def send(message: Any) -> None:
        pass

    fast = FastPath()
    assert fast.for_send(send) is None
    assert fast.on  # not Hypercorn's: nothing to turn off


async def test_a_waiting_stream_learns_that_its_client_left() -> None:
    harness = Harness()
    async with hypercorn_on_a_free_port(harness.app) as port:
        stream, _, outbox, _ = await waiting_stream(harness, port)
        await stream.aclose()
        with trio.fail_after(5):
            while not harness.finished:
                await trio.sleep(0.01)
        assert harness.finished == ["client left"]
        assert not outbox.ended


# (class, attribute, the fact that names it): each renamed in turn, as a Hypercorn release might
RENAMES = [
    (TCPServer, "send_lock", FACTS[9]),
    (HTTPStream, "closed", FACTS[10]),
    (HTTPStream, "state", FACTS[11]),
    (HTTPStream, "app_put", FACTS[12]),
    (H11Protocol, "connection", FACTS[6]),
]


@pytest.mark.parametrize(("cls", "name", "fact"), RENAMES, ids=[r[1] for r in RENAMES])
async def test_a_renamed_attribute_turns_the_fast_path_off_once_and_streams_end_through_asgi(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, fact: str
) -> None:
    """The first stream finds the fact missing: the fast path turns itself off, logged once with
    the fact named, and neither that stream nor the next gets a ``StreamEnd``; both end through
    their own ASGI send with their final event, and their connections are reused."""
    renamed(monkeypatch, cls, name)
    harness = Harness()
    with structlog.testing.capture_logs() as logs:
        async with hypercorn_on_a_free_port(harness.app) as port:
            first = await waiting_stream(harness, port)
            second = await waiting_stream(harness, port)
            assert first[3] is None and second[3] is None
            assert harness.fast.state is FastPathState.OFF
            reason = harness.fast.off_reason or ""
            # in the canary a newer Hypercorn may lack an earlier fact already
            assert fact in reason or (CANARY and any(f in reason for f in FACTS)), reason
            for stream, buffer, outbox, _ in (first, second):
                await ends_through_its_task(harness, stream, buffer, outbox)
    off = [e for e in logs if e["event"] == "stream_fast_path_off"]
    assert len(off) == 1 and off[0]["reason"] == harness.fast.off_reason, logs
    assert off[0]["log_level"] == "warning" and off[0]["hypercorn"] and off[0]["h11"]
    assert harness.finished == ["sent", "sent"]


async def test_a_moved_module_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypercorn's modules are imported at the first stream, not with Steward's: one that is
    gone turns the fast path off (naming it) instead of failing the import of the server."""
    monkeypatch.setitem(sys.modules, "hypercorn.trio.tcp_server", None)  # import raises
    harness = Harness()
    async with hypercorn_on_a_free_port(harness.app) as port:
        stream, buffer, outbox, end = await waiting_stream(harness, port)
        assert end is None and harness.fast.state is FastPathState.OFF
        assert FACTS[3] in (harness.fast.off_reason or "")
        await ends_through_its_task(harness, stream, buffer, outbox)
    assert harness.finished == ["sent"]


@pytest.mark.parametrize(("cls", "name"), [(TCPServer, "send_lock"), (HTTPStream, "state")])
async def test_an_end_that_raises_falls_back_to_the_streams_task(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str
) -> None:
    """A fact that fails after the stream opened: ``end`` catches what it raises, writes
    nothing, turns the fast path off, and the stream ends through ASGI; so does another stream
    already given its ``StreamEnd``, without a second try."""
    harness = Harness()
    with structlog.testing.capture_logs() as logs:
        async with hypercorn_on_a_free_port(harness.app) as port:
            first = await waiting_stream(harness, port)
            second = await waiting_stream(harness, port)
            direct(first[3], harness.fast)
            direct(second[3], harness.fast)
            renamed(monkeypatch, cls, name)
            for stream, buffer, outbox, _ in (first, second):
                await ends_through_its_task(harness, stream, buffer, outbox)
            assert harness.fast.state is FastPathState.OFF
            assert harness.fast.fallbacks == 1 and harness.fast.ended == 0
            assert f"AttributeError: {cls.__name__!r} object has no attribute {name!r}" in (
                harness.fast.off_reason or ""
            )
    assert [e["event"] for e in logs].count("stream_fast_path_off") == 1
    assert harness.finished == ["sent", "sent"]


async def test_the_setting_turns_the_fast_path_off_from_the_start() -> None:
    harness = Harness(FastPath(enabled=False))
    with structlog.testing.capture_logs() as logs:
        async with hypercorn_on_a_free_port(harness.app) as port:
            stream, buffer, outbox, end = await waiting_stream(harness, port)
            assert end is None and harness.fast.state is FastPathState.DISABLED
            await ends_through_its_task(harness, stream, buffer, outbox)
    assert "stream_fast_path_off" not in [e["event"] for e in logs]  # chosen, not a fault
    assert harness.finished == ["sent"]


async def test_a_stream_served_by_a_node_can_be_woken_without_a_cancel_scope(
    fresh_db: str,
) -> None:
    """Through the whole edge (which wraps the request's receive to note the end of its body),
    a GET stream's outbox still gets the nudge that wakes its pump: the wrapper is looked
    behind. Without it every idle stream waited under a cancel scope, silently."""
    import httpx

    from tests.harness._steward import McpClient, get_stream, running_node, sign_in

    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        async with get_stream(mcp) as stream:
            await stream.next()
            assert mcp.session_id is not None
            if CANARY and not node.statistics().endpoint.stream_fast_path:
                pytest.skip("the fast path turned itself off on this Hypercorn")
            served = node.stream(mcp.session_id)
            assert served is not None and served.nudged
