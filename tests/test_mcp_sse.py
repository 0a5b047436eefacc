"""SSE framing: what every event looks like on the wire."""

from __future__ import annotations

import json

from actors.sessions import StreamEvent
from server.http._sse import SSE_HEADERS, encode_event


def test_a_message_is_one_data_line_with_its_id() -> None:
    message = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "a\nb"}}
    wire = encode_event(StreamEvent(message, event_id="s1:4"))
    assert wire.endswith(b"\n\n") and wire.count(b"\n") == 3
    lines = wire.decode().split("\n")
    assert lines[0] == "id: s1:4"
    assert json.loads(lines[1].removeprefix("data: ")) == message


def test_a_priming_event_has_an_id_a_retry_and_empty_data() -> None:
    assert encode_event(StreamEvent(event_id="s1:1", retry_ms=1000)) == (
        b"id: s1:1\nretry: 1000\ndata: \n\n"
    )


def test_a_keep_alive_is_a_comment_and_legacy_events_are_named() -> None:
    assert encode_event(StreamEvent(comment="keep-alive")) == b": keep-alive\n\n"
    endpoint = encode_event(StreamEvent(event="endpoint", text="/messages?session_id=x"))
    assert endpoint == b"event: endpoint\ndata: /messages?session_id=x\n\n"
    multi = encode_event(StreamEvent(text="one\ntwo"))
    assert multi == b"data: one\ndata: two\n\n"


def test_streams_are_not_buffered_by_proxies() -> None:
    headers = dict(SSE_HEADERS)
    assert headers[b"content-type"] == b"text/event-stream"
    assert headers[b"x-accel-buffering"] == b"no"
    assert b"no-cache" in headers[b"cache-control"]
