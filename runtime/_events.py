"""Supervision events, published on bounded streams that tests, logs and metrics read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs
import trio

from runtime._exit import Exit

__all__ = [
    "ChildExited",
    "ChildRestarted",
    "ChildStarted",
    "EventSubscription",
    "IntensityExceeded",
    "SupervisionEvent",
    "subscribe_events",
]


@attrs.frozen
class ChildStarted:
    supervisor: str
    child: str
    at: float


@attrs.frozen
class ChildExited:
    supervisor: str
    child: str
    exit: Exit
    at: float


@attrs.frozen
class ChildRestarted:
    supervisor: str
    child: str
    restarts: int
    delay: float
    at: float


@attrs.frozen
class IntensityExceeded:
    supervisor: str
    child: str
    restarts: int
    period: float
    at: float


SupervisionEvent = ChildStarted | ChildExited | ChildRestarted | IntensityExceeded


@attrs.define(eq=False)
class EventSubscription:
    """One subscriber's bounded stream. When it is full the *newest* event is dropped and counted:
    a slow reader never slows a supervisor."""

    receive: trio.MemoryReceiveChannel[SupervisionEvent]
    _send: trio.MemorySendChannel[SupervisionEvent]
    dropped: int = 0

    def offer(self, event: SupervisionEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


_subscribers: list[EventSubscription] = []


def publish(event: SupervisionEvent) -> None:
    for sub in _subscribers:
        sub.offer(event)


@contextlib.contextmanager
def subscribe_events(capacity: int = 1000) -> Iterator[EventSubscription]:
    """Receive every supervision event of the process while the block runs.

    ``async for event in sub.receive: ...``; past ``capacity`` unread events, new ones are
    dropped and counted in ``sub.dropped``.
    """
    send, receive = trio.open_memory_channel[SupervisionEvent](capacity)
    sub = EventSubscription(receive, send)
    _subscribers.append(sub)
    try:
        yield sub
    finally:
        _subscribers.remove(sub)
        send.close()
