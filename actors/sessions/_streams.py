"""Connection actors: one live SSE stream each, with its bounded outbox, its keep-alives, its
reconnect deadline and its ``connections`` row (the table's statements are here)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
import trio

from actors._statuses import CloseReason, ConnectionKind
from actors._store import Conn, Op, Store
from actors.sessions._values import (
    SessionPolicy,
    StreamEvent,
    UserContext,
    final_event,
)
from runtime import fault_point

__all__ = [
    "Connection",
    "Outbox",
    "StreamOwner",
    "connection_closed_op",
    "connection_heartbeat_op",
    "connection_opened_op",
    "dead_nodes_connections_closed",
    "grant_connections_closed",
    "node_connections_closed_op",
    "open_streams_elsewhere",
    "stale_connections_closed",
]

log = structlog.get_logger("sessions")


class Outbox:
    """A stream's bounded queue of events: the connection's face puts, the stream's pump takes.

    A list and, only while the pump waits, what wakes it: an idle stream holds far less than a
    memory channel's state, its two ends and their bookkeeping (docs/benchmarks.md,
    idle-streams). The pump waits for the next event and for its client's disconnect in one task
    (``wait``), on the request's ``receive``; a put wakes it with a message on that same queue
    (``nudge``, when the transport offers one: no cancel scope per wait) or else by cancelling
    the wait, which loses nothing (a memory channel's receive is cancel-safe). Once closed, the
    pump takes what is left and then the end."""

    __slots__ = ("_closed", "_events", "_size", "_waiter", "_waiting", "ended", "ender", "nudge")

    def __init__(self, size: int) -> None:
        # a list, not a deque: an empty deque allocates a 64-slot block (760 bytes an idle
        # stream), and an outbox is short (``size``), so taking from its front costs nothing
        self._events: list[StreamEvent] = []
        self._size = size
        self._closed = False
        self._waiter: trio.CancelScope | None = None
        # given by the pump (``attach``) when its transport lets a put wake it through the
        # request's own receive (server/http/_stream_end.py): then the wait needs no cancel
        # scope, and a wake no cancel
        self.nudge: Callable[[], bool] | None = None
        self._waiting = False
        # given by the pump when its transport can write a final event in the caller's step;
        # ``ended`` once it did
        self.ender: Callable[[StreamEvent], bool] | None = None
        self.ended = False

    def attach(
        self, *, ender: Callable[[StreamEvent], bool], nudge: Callable[[], bool] | None
    ) -> None:
        """The pump's transport ends the stream itself (``ender``: the final event written in
        the caller's step) and wakes the waiting pump through its receive (``nudge``; None: the
        pump waits under a cancel scope)."""
        self.ender = ender
        self.nudge = nudge

    def end(self, event: StreamEvent) -> bool:
        """The final ``event`` written and the stream ended now, by the ender, when the pump waits
        with nothing queued (nothing can be overtaken); False, and nothing done, otherwise."""
        if (
            self.ender is None
            or (self._waiter is None and not self._waiting)
            or self._events
            or self._closed
        ):
            return False
        try:
            ended = self.ender(event)
        except Exception:  # an ender must not raise; one that does is dropped, the stream
            # ends through its pump (a revocation's loop over streams must not break)
            log.exception("stream_ender_failed")
            self.ender = None
            return False
        if not ended:
            return False
        # the pump is left waiting, to tidy up once the connection actor stops (``close``): the
        # pass over a session's streams writes every end before any stream's task runs
        self.ended = True
        self._closed = True
        return True

    def put(self, event: StreamEvent) -> bool:
        """Queue ``event``; False, and nothing queued, when the outbox is full."""
        if self._closed:
            return True  # a closed stream takes nothing more, as if it had been sent
        if len(self._events) >= self._size:
            return False
        self._events.append(event)
        self._wake()
        return True

    def close(self) -> None:
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._events)

    def take(self) -> StreamEvent | None:
        """The next event, or None when there is none now."""
        return self._events.pop(0) if self._events else None

    def _wake(self) -> None:
        if self._waiting:
            self._waiting = False
            if self.nudge is not None:
                self.nudge()  # fails only with the request gone, when the pump ends anyway
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None

    async def wait(self, receive: Callable[[], Awaitable[Mapping[str, Any]]] | None) -> bool:
        """Wait until an event is queued or the outbox closes (True), or until ``receive`` — the
        stream's HTTP request — says the client left (False). Returns at once with an event
        queued or the outbox closed."""
        if self._events or self._closed:
            await trio.lowlevel.checkpoint()
            return True
        if self.nudge is not None and receive is not None:
            self._waiting = True
            try:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return False
                    if self._events or self._closed:
                        return True
            finally:
                self._waiting = False
        with trio.CancelScope() as scope:
            self._waiter = scope
            try:
                if receive is None:
                    await trio.sleep_forever()
                while (await receive())["type"] != "http.disconnect":
                    pass
                return False
            finally:
                if self._waiter is scope:
                    self._waiter = None
        return True


class StreamOwner(Protocol):
    """What a connection actor knows of its user session."""

    @property
    def grant_id(self) -> uuid.UUID: ...

    @property
    def context(self) -> UserContext: ...

    def tick_by(self, deadline: float) -> None:
        """Wake the session's one ticker by ``deadline`` (this actor's next keep-alive or
        reconnect deadline)."""


class Connection:
    """The face of one connection actor: one live SSE stream of ``session`` (its owner)."""

    __slots__ = (
        "_actor_task",
        "_closed_event",
        "_node_id",
        "_on_release",
        "_policy",
        "_seq",
        "_store",
        "closed_reason",
        "counted",
        "id",
        "kind",
        "next_beat",
        "outbox",
        "reconnect_at",
        "sent",
        "session",
        "session_id",
        "stream_id",
    )

    def __init__(
        self,
        session: StreamOwner,
        kind: ConnectionKind,
        session_id: str | None,
        stream_id: str,
        *,
        store: Store,
        node_id: str,
        policy: SessionPolicy,
        reconnect_at: float | None = None,
        on_release: Callable[[str], None] | None = None,
    ) -> None:
        self.id = uuid.uuid4()
        self.session = session
        self.kind = kind
        self.session_id = session_id
        self.stream_id = stream_id
        self._store = store
        self._node_id = node_id
        self._policy = policy
        self._on_release = on_release  # given the user id when the stream slot is given back
        self.outbox = Outbox(policy.outbox_size)
        self.closed_reason: CloseReason | None = None
        self._actor_task: trio.lowlevel.Task | None = None  # the actor, while it waits
        self._closed_event: trio.Event | None = None  # made for whoever waits for the close
        self._seq = 0
        self.sent = 0
        # trio time at which the stream ends with a reconnect hint: the access token that opened
        # it has been expired for the configured grace (docs/sessions.md, "Streams outliving
        # their token")
        self.reconnect_at = reconnect_at
        self.counted = False  # holds one of its user's long-lived stream slots on this node
        self.next_beat = math.inf  # trio time of the next keep-alive, once the actor runs

    def release(self) -> None:
        """Give back the user's stream slot (once)."""
        if self.counted:
            self.counted = False
            if self._on_release is not None:
                self._on_release(self.session.context.user_id)

    def next_event_id(self) -> str:
        self._seq += 1
        return f"{self.stream_id}:{self._seq}"

    @property
    def last_seq(self) -> int:
        """The sequence number of the last event id this stream gave (0: none yet)."""
        return self._seq

    def advance_to(self, seq: int) -> str:
        """The stream carries the stored events up to ``seq`` (a resumption's replay, or what
        another node stored for it): its next own id counts on from there, never back. Returns
        ``seq``'s event id."""
        self._seq = max(self._seq, seq)
        return f"{self.stream_id}:{seq}"

    def send_nowait(self, event: StreamEvent) -> None:
        """Queue an event; a full outbox means a slow client: its stream is closed with an error."""
        if self.closed_reason is not None:
            return
        if self.outbox.put(event):
            self.sent += 1
        else:
            log.warning("stream_overflow", connection=str(self.id), kind=self.kind)
            self.finish(CloseReason.SLOW_CLIENT)

    async def send(self, event: StreamEvent) -> None:
        self.send_nowait(event)
        await trio.lowlevel.checkpoint()

    def fail(self, reason: CloseReason, message: str) -> None:
        """Send a final error event and close the stream."""
        self.end_with(final_event("error", {"error": reason, "message": message}), reason)

    def reconnect(self, reason: CloseReason, message: str, retry_ms: int) -> None:
        """Send a final event asking the client to reconnect (with a fresh token, resuming from
        its last event id) after ``retry_ms``, and close the stream."""
        data = {"error": reason, "message": message, "reconnect": True, "retryMs": retry_ms}
        self.end_with(final_event("warning", data, retry_ms), reason)

    def end_with(self, final: StreamEvent, reason: CloseReason) -> None:
        """Send ``final`` (from ``final_event``; one may serve many streams) and close."""
        if self.closed_reason is not None:
            return
        if self.outbox.end(final):
            self.closed_reason = reason  # the outbox is closed, its pump woken by the actor
            self._closed()
            return
        self.outbox.put(final)  # dropped when the outbox is full: the stream closes anyway
        self.finish(reason)

    def finish(self, reason: CloseReason) -> None:
        """Mark the stream closed for ``reason`` unless it already is (the first reason stays)."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.outbox.close()
            self._closed()

    def _closed(self) -> None:
        """Wake the actor (and whoever waits for the close)."""
        self.wake_actor()
        if self._closed_event is not None:
            self._closed_event.set()

    def wake_actor(self) -> None:
        """The actor waits in ``wait_task_rescheduled`` (no timer, no Event of its own), woken by
        a reschedule: when the stream closes, or when its session's ticker finds it due
        (``wake_at``). Much cheaper than a cancel when a session ends a thousand streams."""
        task, self._actor_task = self._actor_task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def wake_at(self) -> float:
        """When the actor has something to do: its next keep-alive or its reconnect deadline."""
        if self.reconnect_at is None:
            return self.next_beat
        return min(self.next_beat, self.reconnect_at)

    async def close(self, reason: CloseReason) -> None:
        """The HTTP side is done with this stream (client gone, request complete)."""
        self.finish(reason)
        await trio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        if self.closed_reason is None:
            if self._closed_event is None:
                self._closed_event = trio.Event()
            await self._closed_event.wait()
        else:
            await trio.lowlevel.checkpoint()

    def _abort_wait(self, _: Any) -> trio.lowlevel.Abort:
        self._actor_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(
        self, *, task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED
    ) -> None:
        store = self._store
        store.write_nowait(
            connection_opened_op(
                self.id,
                node_id=self._node_id,
                grant_id=self.session.grant_id,
                user_id=self.session.context.user_id,
                session_id=self.session_id,
                kind=self.kind,
            )
        )
        task_status.started(self)
        policy = self._policy
        try:
            self.next_beat = trio.current_time() + policy.heartbeat
            while True:
                if self.closed_reason is not None:
                    break
                if trio.current_time() < self.wake_at():
                    # woken by ``_closed`` or by the session's ticker at ``wake_at()``; one timer
                    # per session, not a cancel scope per stream (docs/benchmarks.md, idle-streams)
                    self.session.tick_by(self.wake_at())
                    self._actor_task = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
                    continue
                if self.reconnect_at is not None and trio.current_time() >= self.reconnect_at:
                    log.info("stream_token_expired", connection=str(self.id), kind=self.kind)
                    self.reconnect(
                        CloseReason.TOKEN_EXPIRED,
                        "the access token that opened this stream expired; reconnect with a fresh token",
                        policy.reconnect_retry_ms,
                    )
                    break
                self.next_beat = trio.current_time() + policy.heartbeat
                await fault_point("connection.heartbeat")
                self.send_nowait(StreamEvent(comment="keep-alive"))
                store.write_nowait(  # one at most waits in the queue (an outage)
                    connection_heartbeat_op(self.id), key=("heartbeat", self.id)
                )
        finally:
            self.release()
            if self.closed_reason is None:
                self.fail(CloseReason.CONNECTION_STOPPED, "the stream's actor stopped")
            self.outbox.close()  # wakes a pump whose stream was ended in the caller's step
            store.write_nowait(connection_closed_op(self.id, self.closed_reason))


# -- the connections table -------------------------------------------------------------------------


def connection_opened_op(
    connection_id: uuid.UUID,
    *,
    node_id: str,
    grant_id: uuid.UUID,
    user_id: str,
    session_id: str | None,
    kind: ConnectionKind,
) -> Op:
    return Op(
        "INSERT INTO connections (connection_id, node_id, grant_id, user_id, session_id, kind) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        (connection_id, node_id, grant_id, user_id, session_id, kind),
    )


def connection_heartbeat_op(connection_id: uuid.UUID) -> Op:
    return Op(
        "UPDATE connections SET heartbeat_at = now() WHERE connection_id = $1 AND closed_at IS NULL",
        (connection_id,),
    )


def connection_closed_op(connection_id: uuid.UUID, reason: CloseReason | None) -> Op:
    return Op(
        "UPDATE connections SET closed_at = now(), close_reason = $2 "
        "WHERE connection_id = $1 AND closed_at IS NULL",
        (connection_id, None if reason is None else str(reason)),
    )


def node_connections_closed_op(node_id: str, reason: CloseReason) -> Op:
    """Close the rows a previous process under ``node_id`` left open."""
    return Op(
        "UPDATE connections SET closed_at = now(), close_reason = $2 "
        "WHERE node_id = $1 AND closed_at IS NULL",
        (node_id, str(reason)),
    )


async def open_streams_elsewhere(store: Store, user_id: str, node_id: str) -> int:
    """The user's open long-lived streams (all kinds but POST replies) on other nodes."""
    return int(
        await store.fetchval(
            "SELECT count(*) FROM connections WHERE user_id = $1 AND closed_at IS NULL "
            "AND kind <> $3 AND node_id <> $2",
            user_id,
            node_id,
            ConnectionKind.POST,
        )
    )


def _count(status: str) -> int:
    """The row count of a command's status (``UPDATE 3``)."""
    return int(status.split()[-1])


async def dead_nodes_connections_closed(conn: Conn, node_ids: list[str]) -> int:
    """Close the open rows of nodes found dead; how many."""
    return _count(
        await conn.execute(
            "UPDATE connections SET closed_at = now(), close_reason = $2 "
            "WHERE closed_at IS NULL AND node_id = ANY($1::text[])",
            node_ids,
            str(CloseReason.NODE_DEAD),
        )
    )


async def stale_connections_closed(conn: Conn, silent_for: float) -> int:
    """Close the open rows with no heartbeat for ``silent_for`` seconds; how many."""
    return _count(
        await conn.execute(
            "UPDATE connections SET closed_at = now(), close_reason = $2 "
            "WHERE closed_at IS NULL AND heartbeat_at < now() - make_interval(secs => $1)",
            silent_for,
            str(CloseReason.STALE),
        )
    )


async def grant_connections_closed(conn: Conn, grant_id: uuid.UUID, reason: CloseReason) -> None:
    """Close the open rows of a grant that ended."""
    await conn.execute(
        "UPDATE connections SET closed_at = now(), close_reason = $2 "
        "WHERE grant_id = $1 AND closed_at IS NULL",
        grant_id,
        str(reason),
    )
