"""Server-sent events on the wire."""

from __future__ import annotations

import json

from actors._sessions import StreamEvent

__all__ = ["encode_event"]


def encode_event(event: StreamEvent) -> bytes:
    """One event in text/event-stream framing (a comment for keep-alives)."""
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
        lines.extend(f"data: {line}" for line in event.text.split("\n"))
    elif event.data is not None:
        lines.append("data: " + json.dumps(event.data, separators=(",", ":")))
    else:
        lines.append("data: ")
    return ("\n".join(lines) + "\n\n").encode()
