"""Ending an idle stream in the caller's step (server._stream_end), against a real Hypercorn.

The final event and the end of the chunked body go straight to the socket while the stream's
ASGI task still waits; the connection then serves its next request (Hypercorn's h11 state stays
right), and a write the socket takes only in part is finished by the stream's own task."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

import server._stream_end as stream_end_module
from actors._sessions import Outbox, StreamEvent, final_event
from server._http import lifespan
from server._stream_end import StreamEnd
from tests.harness._asgi_server import hypercorn_on_a_free_port

SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


class Harness:
    def __init__(self) -> None:
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
        end = StreamEnd.for_send(send)
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
        if event is not None:
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
    await trio.sleep(0.05)
    return stream, buffer, outbox, end


async def next_request_is_served(stream: trio.SocketStream, buffer: bytearray) -> None:
    """Hypercorn recycled the connection: the next request on it is answered."""
    await stream.send_all(b"GET /plain HTTP/1.1\r\nhost: t\r\n\r\n")
    reply = await read_until(stream, buffer, b"\r\n\r\nok")
    assert reply.startswith(b"HTTP/1.1 200")


def final() -> StreamEvent:
    return final_event("error", {"error": "revoked", "message": "access was revoked"})


async def test_an_idle_stream_ends_in_the_callers_step_and_its_connection_is_reused() -> None:
    harness = Harness()
    async with hypercorn_on_a_free_port(harness.app) as port:
        stream, buffer, outbox, end = await waiting_stream(harness, port)
        assert end is not None  # Hypercorn's HTTP/1.1 objects as this module knows them
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
        stream, buffer, outbox, _ = await waiting_stream(harness, port)
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

    assert StreamEnd.for_send(send) is None


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
