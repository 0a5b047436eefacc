"""Server-sent events on the wire (text/event-stream framing)."""

from __future__ import annotations

import json

from actors import StreamEvent

__all__ = ["SSE_HEADERS", "encode_event"]

# no-cache and X-Accel-Buffering keep proxies from holding events back (MCP-R16)
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
    (b"x-content-type-options", b"nosniff"),
]


def encode_event(event: StreamEvent) -> bytes:
    """One event; a comment-only event (keep-alive) is a ``:`` line."""
    if event.comment is not None and event.data is None and event.text is None:
        return f": {event.comment}\n\n".encode()
    lines = []
    if event.event_id is not None:
        lines.append(f"id: {event.event_id}")
    if event.event is not None:
        lines.append(f"event: {event.event}")
    if event.retry_ms is not None:
        lines.append(f"retry: {event.retry_ms}")
    if event.text is not None:
        lines.extend(f"data: {line}" for line in event.text.splitlines() or [""])
    elif event.data is not None:
        # json.dumps escapes newlines, so one data line always holds the whole message
        lines.append("data: " + json.dumps(event.data, separators=(",", ":")))
    else:
        lines.append("data: ")
    return ("\n".join(lines) + "\n\n").encode()
