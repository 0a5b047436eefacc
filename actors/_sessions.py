"""User sessions as supervised actors, each owning its token keeper and its connection actors.

    sessions (dynamic supervisor, registry by grant id)
    └── session[grant]              transient; rest_for_one over:
        ├── token_keeper            refreshes upstream tokens ahead of expiry (single flight across nodes)
        └── connections             dynamic supervisor
            └── connection[id]      temporary: one SSE stream, bounded outbox, heartbeat, final error event

See docs/sessions.md for the lifecycle and what each failure does.
"""

from __future__ import annotations

import collections
import datetime
import math
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import structlog
import trio

from actors._auth import AuthService, Principal
from actors._batched import BatchedLookup
from actors._events import ClusterEvent, cluster_event_ops
from actors._grants import end_grants_ops, live_grants_of
from actors._revocation import UserChange, reinstate_user, revoke_user
from actors._statuses import CloseReason, GrantStatus
from actors._store import Conn, Op, Store, StoreUnavailable, WriteRejected
from actors._tiers import TierChange, apply_idp_tier, override_tier
from actors._upstream import (
    IdTokenInvalid,
    UpstreamClient,
    UpstreamRevoked,
    UpstreamTokens,
    UpstreamUnavailable,
)
from runtime import (
    Backoff,
    ChildSpec,
    DynamicSupervisor,
    Registry,
    Restart,
    Shutdown,
    Strategy,
    Supervisor,
    SupervisorHandle,
    fault_point,
)

__all__ = [
    "AuthenticationRequiredError",
    "Connection",
    "SessionLimitReached",
    "SessionManager",
    "SessionPolicy",
    "SessionRestarting",
    "StreamEvent",
    "StreamLimitReached",
    "TokenState",
    "TransportSession",
    "UserContext",
    "UserSession",
    "log_level_op",
]

TRANSPORT_READ_BATCH = 500  # session ids read in one query at most (actors._batched)
log = structlog.get_logger("sessions")
SESSION_LIMIT = "STW01"  # the SQLSTATE of steward_session_slot's refusal (migration 0009)
UTC = datetime.UTC
ConnectionKind = Literal["get", "post", "legacy_sse", "listen"]


def log_level_op(session_id: str, level: str) -> Op:
    """Record the log level a transport session asked for (logging/setLevel)."""
    return Op(
        "UPDATE transport_sessions SET log_level = $2 WHERE session_id = $1", (session_id, level)
    )


@attrs.frozen
class UserContext:
    """What an operator's handler sees of the caller."""

    user_id: str
    grant_id: uuid.UUID
    client_id: str
    tier: str
    scopes: frozenset[str]
    session_id: str | None = None


@attrs.frozen
class StreamEvent:
    """One SSE event: a JSON-RPC message, a priming event, a keep-alive comment or the final error."""

    data: dict[str, Any] | None = None
    text: str | None = None  # raw data instead of JSON (the legacy transport's endpoint event)
    event_id: str | None = None
    event: str | None = None
    retry_ms: int | None = None
    comment: str | None = None
    final: bool = False


@attrs.frozen
class TransportSession:
    session_id: str
    grant_id: uuid.UUID
    user_id: str
    client_id: str
    protocol_version: str
    client_info: dict[str, Any]
    capabilities: dict[str, Any]
    log_level: str | None


class SessionRestarting(Exception):
    """The session's actor is restarting; the request may be retried shortly (503)."""

    def __init__(self, grant_id: uuid.UUID) -> None:
        super().__init__(f"session {grant_id} is restarting")
        self.grant_id = grant_id


class StreamLimitReached(Exception):
    """The user already holds the most long-lived streams their tier allows (429)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this account already holds its maximum of {limit} open streams")
        self.limit = limit


class SessionLimitReached(Exception):
    """The user already holds the most live transport sessions their tier allows (429)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this account already holds its maximum of {limit} MCP sessions")
        self.limit = limit


class AuthenticationRequiredError(Exception):
    """The grant is not active any more (the upstream refresh failed for good, revoked, expired,
    ended): the client must authorize again. The edge answers it in one place, with the 401
    challenge that starts re-authorization (``McpHttp.reauthorize``)."""

    def __init__(self, reason: str, grant_id: uuid.UUID | None = None) -> None:
        super().__init__(f"the session is {reason}; authorize again")
        self.reason = reason
        self.grant_id = grant_id


@attrs.frozen
class SessionPolicy:
    outbox_size: int = 256  # events buffered per stream; past it the slow stream is closed
    heartbeat: float = 15.0  # keep-alive comment interval on every stream
    idle_timeout: float = 1800.0  # a session actor with no request and no stream stops (rows stay)
    # upstream tokens are refreshed ``refresh_lead`` before they expire, but never earlier than
    # ``refresh_lead_fraction`` of their lifetime before (a 30 s token: 7.5 s before); the lead
    # is spread by ± ``refresh_jitter`` of itself so a fleet does not refresh at once
    refresh_lead: float = 60.0
    refresh_lead_fraction: float = 0.25
    refresh_jitter: float = 0.2
    # no two refreshes of one grant start closer than ``refresh_floor``, on any node; each
    # refresh in a row answered with a lifetime shorter than that doubles it, up to
    # ``refresh_backoff_max`` (docs/sessions.md, "When the token keeper refreshes")
    refresh_floor: float = 5.0
    refresh_backoff_max: float = 300.0
    lease: float = 30.0  # how long a node may hold the single-flight refresh lease
    max_sessions: int = 100_000
    max_connections: int = 64  # streams per user session
    restart_wait: float = 2.0  # how long a request waits for a restarting session before 503
    touch_interval: float = 30.0  # last_seen writes per session at most this often
    reconnect_retry_ms: int = 1000  # the `retry:` of a stream's final reconnect event
    stream_count_wait: float = 0.25  # the read of other nodes' streams of a user, at most
    nodes_recheck: float = 10.0  # how long "no other node is alive" is believed before a re-read
    # a transport session with no request and no stream this long is ended (janitor); a node's
    # cached copy unused this long is read again (so it sees that end)
    transport_idle: float = 86400.0
    keeper_backoff: Backoff = Backoff(min=1.0, max=60.0, jitter=0.3, reset_after=120.0)  # noqa: RUF009
    # a session's own supervisor (its token keeper and connections): crashes past this many in
    # ``session_period`` end the session; a database outage is never counted (docs/runtime.md)
    session_intensity: int = 5
    session_period: float = 60.0


def final_event(level: str, data: dict[str, Any], retry_ms: int | None = None) -> StreamEvent:
    """The event a stream ends with: a JSON-RPC notification every MCP client understands (a
    custom SSE event type is dropped by some clients), marked final so the stream ends after it.
    It carries no event id, so a client resuming with Last-Event-ID continues after the event
    before it."""
    return StreamEvent(
        {
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": level, "logger": "steward", "data": data},
        },
        retry_ms=retry_ms,
        final=True,
    )


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
        # set by the pump when its transport lets a put wake it through the request's own
        # receive (server._stream_end): then the wait needs no cancel scope, and a wake no cancel
        self.nudge: Callable[[], bool] | None = None
        self._waiting = False
        # set by the pump when its transport can write a final event in the caller's step
        # (server._stream_end); ``ended`` once it did
        self.ender: Callable[[StreamEvent], bool] | None = None
        self.ended = False

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


class Connection:
    """The face of one connection actor: one live SSE stream."""

    __slots__ = (
        "_actor_task",
        "_closed_event",
        "_seq",
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
        session: UserSession,
        kind: ConnectionKind,
        session_id: str | None,
        stream_id: str,
        outbox_size: int,
        *,
        reconnect_at: float | None = None,
    ) -> None:
        self.id = uuid.uuid4()
        self.session = session
        self.kind = kind
        self.session_id = session_id
        self.stream_id = stream_id
        self.outbox = Outbox(outbox_size)
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
            self.session.manager.stream_closed(self.session.context.user_id)

    def next_event_id(self) -> str:
        self._seq += 1
        return f"{self.stream_id}:{self._seq}"

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
        store = self.session.manager.store
        node = self.session.manager.node_id
        store.write_nowait(
            Op(
                "INSERT INTO connections (connection_id, node_id, grant_id, user_id, session_id, kind) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                (
                    self.id,
                    node,
                    self.session.grant_id,
                    self.session.context.user_id,
                    self.session_id,
                    self.kind,
                ),
            )
        )
        task_status.started(self)
        policy = self.session.manager.policy
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
                    Op(
                        "UPDATE connections SET heartbeat_at = now() WHERE connection_id = $1 AND closed_at IS NULL",
                        (self.id,),
                    ),
                    key=("heartbeat", self.id),
                )
        finally:
            self.release()
            if self.closed_reason is None:
                self.fail(CloseReason.CONNECTION_STOPPED, "the stream's actor stopped")
            self.outbox.close()  # wakes a pump whose stream was ended in the caller's step
            store.write_nowait(
                Op(
                    "UPDATE connections SET closed_at = now(), close_reason = $2 WHERE connection_id = $1 AND closed_at IS NULL",
                    (self.id, str(self.closed_reason)),
                )
            )


# what a read of ``upstream_tokens`` adds for the token keeper: the seconds until the floor
# ends (the database's clock, like the lease) and the access token's lifetime (migration 0010)
_STATE = (
    "EXTRACT(EPOCH FROM refresh_not_before - now())::float8 AS floor_wait, "
    "EXTRACT(EPOCH FROM access_expires_at - access_issued_at)::float8 AS lifetime"
)
NO_REFRESH_TOKEN = (
    "the identity provider issued no refresh token and the access token it issued has expired; "
    "sign in again"
)


@attrs.frozen
class TokenState:
    """A grant's upstream tokens as the token keeper schedules their refresh (its
    ``upstream_tokens`` row)."""

    tokens: UpstreamTokens
    lifetime: float  # seconds the IdP granted the access token (0 or less for a broken answer)
    floor_until: float  # unix time before which no refresh of the grant may start, on any node
    generation: int  # refresh_generation: bumped by each refresh, on whichever node
    short_lifetimes: int  # refreshes in a row answered with a lifetime under the floor


def refresh_lead(policy: SessionPolicy, lifetime: float) -> float:
    """How long before expiry a token of ``lifetime`` seconds is refreshed (before jitter): the
    configured lead, but at most ``refresh_lead_fraction`` of the lifetime."""
    return min(policy.refresh_lead, policy.refresh_lead_fraction * max(0.0, lifetime))


def refresh_due(policy: SessionPolicy, state: TokenState, now: float) -> bool:
    """Whether the token is within the longest jittered lead of its expiry."""
    lead = refresh_lead(policy, state.lifetime) * (1 + policy.refresh_jitter)
    return state.tokens.expires_at - now <= lead


def refresh_gap(policy: SessionPolicy, short_lifetimes: int) -> float:
    """The floor before the next refresh of a grant whose last ``short_lifetimes`` refreshes in a
    row were answered with a lifetime under the floor: the floor, doubled for each one past the
    first, at most ``refresh_backoff_max``."""
    if short_lifetimes <= 1:
        return policy.refresh_floor
    doubled = policy.refresh_floor * 2.0 ** min(short_lifetimes - 1, 60)
    return max(policy.refresh_floor, min(policy.refresh_backoff_max, doubled))


class TokenKeeper:
    """Keeps a session's upstream access token fresh; one per session actor.

    It sleeps until the token is within its lead of expiry (``refresh_lead``, bounded by a
    fraction of the token's lifetime, jittered), or until the grant's refresh floor has passed
    when that is later, and refreshes through ``SessionManager.refresh_state`` (single flight
    across nodes). Without a refresh token it sleeps until the token expires and then asks for
    re-authorization."""

    def __init__(self, session: UserSession) -> None:
        self.session = session
        self.tokens: UpstreamTokens | None = None
        self.state: TokenState | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[TokenKeeper] = trio.TASK_STATUS_IGNORED
    ) -> None:
        manager = self.session.manager
        try:
            await self._load()
        except StoreUnavailable:
            # restarted during an outage: ready now (the session keeps serving what it can),
            # the tokens are read once the store is back (docs/runtime.md)
            task_status.started(self)
            await manager.store.wait_connected()
            await self._load()
        else:
            task_status.started(self)
        if self.state is None:
            await trio.sleep_forever()
        policy = manager.policy
        while True:
            state = self.state
            assert state is not None
            if state.tokens.refresh_token is None:
                await self._expire_without_refresh_token(state)
            lead = refresh_lead(policy, state.lifetime) * (
                1 + random.uniform(-policy.refresh_jitter, policy.refresh_jitter)
            )
            wake = max(state.tokens.expires_at - lead, state.floor_until)
            await trio.sleep(max(0.0, wake - time.time()))
            await manager.store.wait_connected()  # the refresh's lease lives in the database
            await fault_point("token_keeper.refresh")
            try:
                self.state = await manager.refresh_state(
                    self.session.grant_id, known_generation=state.generation
                )
                self.tokens = self.state.tokens
            except AuthenticationRequiredError as exc:
                log.info("upstream_refresh_revoked", grant_id=str(self.session.grant_id))
                manager.auth.audit(
                    "upstream_refresh_failed",
                    user_id=self.session.context.user_id,
                    grant_id=self.session.grant_id,
                    outcome="invalid_grant",
                )
                await self.session.invalidate(
                    GrantStatus.REAUTH_REQUIRED,
                    "the identity provider revoked the grant; sign in again",
                )
                raise Shutdown("revoked") from exc
            except UpstreamUnavailable:
                manager.auth.audit(
                    "upstream_refresh_failed",
                    user_id=self.session.context.user_id,
                    grant_id=self.session.grant_id,
                    outcome="unavailable",
                )
                raise

    async def _expire_without_refresh_token(self, state: TokenState) -> None:
        """The IdP issued no refresh token: the session serves until the access token expires,
        then the grant needs re-authorization, saying why."""
        await trio.sleep(max(0.0, state.tokens.expires_at - time.time()))
        manager = self.session.manager
        log.info("upstream_token_expired_without_refresh", grant_id=str(self.session.grant_id))
        manager.auth.audit(
            "upstream_refresh_failed",
            user_id=self.session.context.user_id,
            grant_id=self.session.grant_id,
            outcome="no_refresh_token",
        )
        await self.session.invalidate(GrantStatus.REAUTH_REQUIRED, NO_REFRESH_TOKEN)
        raise Shutdown("reauth_required")

    async def _load(self) -> None:
        manager = self.session.manager
        row = await manager.store.fetchrow(
            f"SELECT *, {_STATE} FROM upstream_tokens WHERE grant_id = $1", self.session.grant_id
        )
        if row is not None:
            self.state = manager.token_state(row)
            self.tokens = self.state.tokens


class UserSession:
    """The face of one user-session actor (one grant: a user through one client)."""

    def __init__(self, manager: SessionManager, row: dict[str, Any]) -> None:
        self.manager = manager
        self.grant_id: uuid.UUID = row["grant_id"]
        self.context = UserContext(
            row["user_id"], row["grant_id"], row["client_id"], row["tier"], frozenset(row["scopes"])
        )
        self.expires_at: float = row["expires_at"].timestamp()
        self._keeper: TokenKeeper | None = None
        self._connections: SupervisorHandle | None = None
        self._sup: SupervisorHandle | None = None
        self._last_touch = 0.0
        self.last_active = trio.current_time()
        self.invalid_reason: GrantStatus | None = None
        self._ticker: trio.CancelScope | None = None  # while the ticker sleeps (tick_by)

    @property
    def supervisor(self) -> SupervisorHandle | None:
        """This session's supervisor (``runtime.tree()`` draws its connections under it)."""
        return self._sup

    def context_for(self, session_id: str | None) -> UserContext:
        return attrs.evolve(self.context, session_id=session_id) if session_id else self.context

    def touch(self) -> None:
        """A request arrived: keep the actor alive; write last_seen at most every touch_interval."""
        now = trio.current_time()
        self.last_active = now
        if now - self._last_touch >= self.manager.policy.touch_interval:
            self._last_touch = now
            self.manager.store.write_nowait(
                Op("UPDATE grants SET last_seen_at = now() WHERE grant_id = $1", (self.grant_id,)),
                key=("touch", self.grant_id),
            )

    def connections(self) -> list[Connection]:
        if self._connections is None:
            return []
        return [
            c.face
            for c in self._connections.which_children()
            if isinstance(c.face, Connection) and c.face.closed_reason is None
        ]

    async def open_connection(
        self,
        *,
        kind: ConnectionKind,
        session_id: str | None,
        stream_id: str | None = None,
        reconnect_at: float | None = None,
        max_streams: int | None = None,
    ) -> Connection:
        """Start a connection actor. ``max_streams`` bounds the long-lived streams (all kinds but
        POST replies) the user holds at once, on this node and (as the connections table says)
        on the others: past it, StreamLimitReached."""
        if self.invalid_reason is not None:
            raise AuthenticationRequiredError(self.invalid_reason, self.grant_id)
        assert self._connections is not None
        conn = Connection(
            self,
            kind,
            session_id,
            stream_id or secrets.token_hex(8),
            self.manager.policy.outbox_size,
            reconnect_at=reconnect_at,
        )
        if max_streams is not None and kind != "post":
            await self.manager.take_stream_slot(self.context.user_id, max_streams)
            conn.counted = True
        try:
            face = await self._connections.start_child(
                ChildSpec(str(conn.id), conn.run, restart=Restart.TEMPORARY, shutdown_grace=1.0)
            )
        except BaseException:
            conn.release()
            raise
        assert face is conn
        return conn

    async def upstream_access_token(self) -> str:
        """The upstream access token; AuthenticationRequiredError once its refresh failed for good,
        UpstreamUnavailable while it is expired and a retried refresh may still succeed."""
        if self.invalid_reason is not None:
            raise AuthenticationRequiredError(self.invalid_reason, self.grant_id)
        keeper = self._keeper
        if keeper is None or keeper.tokens is None:
            raise UpstreamUnavailable("no upstream token for this session")
        if keeper.tokens.expires_at <= time.time():
            raise UpstreamUnavailable(
                "the upstream token expired and its refresh has not succeeded yet"
            )
        return keeper.tokens.access_token

    async def invalidate(
        self, status: GrantStatus, message: str, *, also: Sequence[Op] = ()
    ) -> None:
        """End this session: in one transaction the grant ends (``end_grants_ops``: its status,
        its open connection rows, its audit event, every node told), with ``also``; each stream
        gets a final error event; the actor stops."""
        if self.invalid_reason is not None:
            if also:  # already ended (and told the other nodes): what comes with it still counts
                await self.manager.store.write(*also)
            return
        self.invalid_reason = status
        self.manager.forget(self.grant_id, self.context.user_id)
        try:
            await self.manager.store.write(
                *end_grants_ops(
                    [self.grant_id], status=status, message=message, origin=self.manager.node_id
                ),
                *also,
            )
        except BaseException:
            # not acknowledged (it may still commit, and this node does not hear its own
            # event): this node's streams end now, failing closed, and the session is not
            # marked ended, so that a retry makes the whole change and tells the other nodes
            self.close_streams(CloseReason(status), message)
            self.invalid_reason = None
            raise
        self.manager.grants_ended()
        self.manager.forget(self.grant_id, self.context.user_id)  # verified meanwhile
        self.close_streams(CloseReason(status), message)
        log.info(
            "auth_event",
            kind=str(status),
            user_id=self.context.user_id,
            client_id=self.context.client_id,
            grant_id=str(self.grant_id),
            reason=message,
        )
        log.info("session_invalidated", grant_id=str(self.grant_id), status=str(status))
        if self._sup is not None:
            self.manager._stop_soon(self)

    async def end_locally(self, status: GrantStatus, message: str) -> None:
        """Another node (or the janitor) already changed the rows: close this node's streams with
        an error event and stop the actor."""
        if self.invalid_reason is not None:
            return
        self.invalid_reason = status
        self.manager.forget(self.grant_id, self.context.user_id)
        self.close_streams(CloseReason(status), message)
        if self._sup is not None:
            self.manager._stop_soon(self)
        await trio.lowlevel.checkpoint()

    def close_streams(self, reason: CloseReason, message: str) -> None:
        final = final_event("error", {"error": reason, "message": message})
        for conn in self.connections():
            conn.end_with(final, reason)

    async def run(
        self, *, task_status: trio.TaskStatus[UserSession] = trio.TASK_STATUS_IGNORED
    ) -> None:
        keeper = TokenKeeper(self)
        # rest_for_one with the connections first: a crashing token keeper restarts alone and the
        # streams stay (docs/sessions.md); a crashing connections supervisor takes the keeper
        # with it, which only re-reads the tokens
        children = [
            ChildSpec(
                "connections",
                DynamicSupervisor(
                    "connections",
                    max_children=self.manager.policy.max_connections,
                    intensity=1000,
                    period=1.0,
                ).run,
            ),
            ChildSpec(
                "token_keeper",
                keeper.run,
                restart=Restart.TRANSIENT,
                backoff=self.manager.policy.keeper_backoff,
                shutdown_grace=1.0,
            ),
        ]
        sup = Supervisor(
            f"session:{self.grant_id}",
            children,
            strategy=Strategy.REST_FOR_ONE,
            intensity=self.manager.policy.session_intensity,
            period=self.manager.policy.session_period,
        )
        async with trio.open_nursery() as nursery:
            handle: SupervisorHandle = await nursery.start(sup.run)
            self._sup = handle
            self._keeper = keeper
            connections = handle.child("connections")
            assert isinstance(connections, SupervisorHandle)
            self._connections = connections
            with self.manager.registry.register(self.grant_id, self):
                task_status.started(self)
                nursery.start_soon(self._idle_watch, handle)
                nursery.start_soon(self._tick)
                exit = await handle.wait_exited()
                nursery.cancel_scope.cancel()
        if self.invalid_reason is not None or exit.kind.value != "error":
            return
        raise RuntimeError(f"session {self.grant_id} failed: {exit.describe()}")

    def tick_by(self, deadline: float) -> None:
        """Make the ticker wake by ``deadline`` (a connection actor about to wait)."""
        ticker = self._ticker
        if ticker is not None and deadline < ticker.deadline:
            ticker.deadline = deadline

    async def _tick(self) -> None:
        """One timer for the heartbeats and reconnect deadlines of all this session's streams:
        it sleeps until the earliest, then wakes each connection actor that is due."""
        while True:
            now = trio.current_time()
            upcoming = [t for conn in self.connections() if (t := conn.wake_at()) > now]
            with trio.CancelScope(deadline=min(upcoming, default=math.inf)) as scope:
                self._ticker = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._ticker = None
            now = trio.current_time()
            for conn in self.connections():
                if conn.wake_at() <= now:
                    conn.wake_actor()

    async def _idle_watch(self, handle: SupervisorHandle) -> None:
        idle = self.manager.policy.idle_timeout
        while True:
            await trio.sleep(idle / 4)
            await fault_point("session.tick")
            if not self.connections() and trio.current_time() - self.last_active > idle:
                log.info("session_idle_stop", grant_id=str(self.grant_id))
                await handle.stop("idle")
                return


class SessionManager:
    """The face of the ``sessions`` dynamic supervisor."""

    def __init__(
        self,
        store: Store,
        auth: AuthService,
        upstream: UpstreamClient,
        *,
        node_id: str,
        policy: SessionPolicy | None = None,
        on_forget: Callable[[uuid.UUID, str], None] | None = None,
        on_forget_user: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.upstream = upstream
        self.node_id = node_id
        self.policy = policy or SessionPolicy()
        self.registry: Registry[uuid.UUID, UserSession] = Registry("sessions")
        # the revocations the authorization server finds (/revoke, code and refresh-token
        # reuse) take the same path as an operator's: this manager's invalidate
        auth.invalidate_grant = self.invalidate
        auth.on_tier_changed = self.tier_changed_here
        # set by the MCP endpoint: a user's tier changed on this node or another (what the user
        # may list changed with it: list_changed on the user's streams here)
        self.on_tier_changed: Callable[[str, str], object] | None = None
        self._sup: SupervisorHandle | None = None
        self._hydrating: dict[uuid.UUID, trio.Event] = {}
        self._on_forget = on_forget
        self._on_forget_user = on_forget_user
        self._nursery: trio.Nursery | None = None
        self.refreshes: collections.Counter[str] = collections.Counter()  # by outcome
        # tier re-reads after an upstream refresh: ok, failed, skipped (no claims source), refused
        self.tier_rereads: collections.Counter[str] = collections.Counter()
        self._ts_cache: dict[str, TransportSession] = {}  # bounded: oldest out past 50,000
        # cache misses arriving together (clients back after a restart) read in one query
        self._ts_lookup: BatchedLookup[str, dict[str, Any]] = BatchedLookup(
            self._read_transports, TRANSPORT_READ_BATCH
        )
        self._ts_touched: dict[str, float] = {}  # session id -> last_seen written (Trio time)
        self.open_streams: collections.Counter[str] = collections.Counter()  # user -> long-lived
        self._others_alive = True  # until the nodes table says otherwise
        self._nodes_checked_until = 0.0
        self.on_grants_ended: Callable[[], None] | None = None  # wakes the upstream revoker

    def child_spec(self) -> ChildSpec:
        return ChildSpec("sessions", self.run, shutdown_grace=5.0)

    async def run(
        self, *, task_status: trio.TaskStatus[SessionManager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sup = DynamicSupervisor(
            "sessions", max_children=self.policy.max_sessions, intensity=1000, period=1.0
        )
        self.take_over()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._sup = await nursery.start(sup.run)
            task_status.started(self)
            await self._sup.wait_exited()

    def take_over(self) -> None:
        """Close the connection rows a previous process under this node id left open (it was
        killed, or the database was away when it stopped): their streams are gone, and open
        rows would count against their users' stream limits on other nodes until the janitor
        found them stale. Queued before this incarnation opens any stream, so the write queue
        (in order) commits it before any row of this incarnation, whenever the store connects."""
        self.store.write_nowait(
            Op(
                "UPDATE connections SET closed_at = now(), close_reason = 'node_restarted' "
                "WHERE node_id = $1 AND closed_at IS NULL",
                (self.node_id,),
            ),
            Op(
                "UPDATE nodes SET started_at = now(), heartbeat_at = now(), status = 'alive' "
                "WHERE node_id = $1",
                (self.node_id,),
            ),
        )
        log.info("node_take_over", node_id=self.node_id)

    @property
    def supervisor(self) -> SupervisorHandle | None:
        """The ``sessions`` dynamic supervisor (``runtime.tree()`` draws the sessions under it)."""
        return self._sup

    def forget(self, grant_id: uuid.UUID, user_id: str) -> None:
        if self._on_forget is not None:
            self._on_forget(grant_id, user_id)

    def _stop_soon(self, session: UserSession) -> None:
        if self._nursery is not None and self._sup is not None:
            sup = self._sup

            async def stop() -> None:
                try:
                    await sup.terminate_child(
                        str(session.grant_id), session.invalid_reason or "invalidated"
                    )
                except Exception as exc:  # the session may have stopped on its own meanwhile
                    log.debug(
                        "session_stop_skipped",
                        grant_id=str(session.grant_id),
                        error=type(exc).__name__,
                    )

            self._nursery.start_soon(stop)

    async def take_stream_slot(self, user_id: str, limit: int) -> None:
        """Reserve one of the user's ``limit`` long-lived streams, or raise StreamLimitReached.
        Other nodes' open streams are counted from the connections table when this node alone is
        under the limit; that read is bounded and skipped when the database does not answer."""
        if self.open_streams[user_id] < limit:
            elsewhere = 0
            with trio.move_on_after(self.policy.stream_count_wait):
                try:
                    if await self._other_nodes_alive():
                        elsewhere = int(
                            await self.store.fetchval(
                                "SELECT count(*) FROM connections WHERE user_id = $1 AND closed_at IS NULL "
                                "AND kind <> 'post' AND node_id <> $2",
                                user_id,
                                self.node_id,
                            )
                        )
                except StoreUnavailable:
                    log.debug("stream_count_skipped", reason="database unreachable")
            if self.open_streams[user_id] + elsewhere < limit:
                self.open_streams[user_id] += 1
                return
        raise StreamLimitReached(limit)

    async def _other_nodes_alive(self) -> bool:
        """Whether another node may hold streams (the nodes table, re-read at most every
        ``nodes_recheck`` seconds): a lone node skips the per-stream read."""
        now = trio.current_time()
        if now >= self._nodes_checked_until:
            others = await self.store.fetchval(
                "SELECT count(*) FROM nodes WHERE status = 'alive' AND node_id <> $1", self.node_id
            )
            self._others_alive = int(others) > 0
            self._nodes_checked_until = now + self.policy.nodes_recheck
        return self._others_alive

    def stream_closed(self, user_id: str) -> None:
        self.open_streams[user_id] -= 1
        if self.open_streams[user_id] <= 0:
            del self.open_streams[user_id]

    def live(self) -> list[UserSession]:
        return [s for _, s in self.registry.items()]

    async def session_for(self, principal: Principal) -> UserSession:
        """The live session of this principal's grant, hydrated from the database if need be."""
        session = self.registry.lookup(principal.grant_id)
        if session is not None:
            if session.invalid_reason is not None:
                raise AuthenticationRequiredError(session.invalid_reason, principal.grant_id)
            return session
        pending = self._hydrating.get(principal.grant_id)
        if pending is not None:
            await pending.wait()
            return await self.session_for(principal)
        done = self._hydrating[principal.grant_id] = trio.Event()
        try:
            return await self._hydrate(principal)
        finally:
            del self._hydrating[principal.grant_id]
            done.set()

    async def _hydrate(self, principal: Principal) -> UserSession:
        row = await self.store.fetchrow(
            "SELECT * FROM grants WHERE grant_id = $1", principal.grant_id
        )
        if (
            row is None
            or row["user_id"] != principal.user_id
            or row["client_id"] != principal.client_id
        ):
            raise AuthenticationRequiredError("unknown_session", principal.grant_id)
        if row["status"] not in ("active", "refreshing"):
            raise AuthenticationRequiredError(row["status"], principal.grant_id)
        if row["expires_at"] <= datetime.datetime.now(UTC):
            await self.store.write(
                Op(
                    "UPDATE grants SET status = 'expired' WHERE grant_id = $1 AND status = 'active'",
                    (row["grant_id"],),
                )
            )
            raise AuthenticationRequiredError("expired", principal.grant_id)
        assert self._sup is not None
        grant_id: uuid.UUID = row["grant_id"]
        if self._sup.has_child(str(grant_id)):
            return await self._await_restart(grant_id)
        try:
            await self._sup.start_child(
                ChildSpec(
                    str(grant_id),
                    self._session_start,
                    args=(grant_id,),
                    restart=Restart.TRANSIENT,
                    shutdown_grace=3.0,
                )
            )
        except BaseExceptionGroup as group:
            # a start that failed inside the session's own nursery: surface the cause
            if group.subgroup(StoreUnavailable) is not None:
                raise StoreUnavailable("the database is unreachable") from group
            if group.subgroup(AuthenticationRequiredError) is not None:
                raise AuthenticationRequiredError("unknown_session", grant_id) from group
            raise
        live = self.registry.lookup(grant_id)
        if live is None:
            raise SessionRestarting(grant_id)
        log.info("session_hydrated", grant_id=str(grant_id), user_id=row["user_id"])
        return live

    async def _await_restart(self, grant_id: uuid.UUID) -> UserSession:
        """The session's actor is between incarnations (restarting with backoff): wait a little."""
        with trio.move_on_after(self.policy.restart_wait):
            while True:
                live = self.registry.lookup(grant_id)
                if live is not None:
                    return live
                await trio.sleep(0.02)
        raise SessionRestarting(grant_id)

    async def _session_start(
        self,
        grant_id: uuid.UUID,
        *,
        task_status: trio.TaskStatus[UserSession] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Each incarnation re-reads the grant, so a restarted session rehydrates; its tier is
        the user's (every grant of a user has one tier)."""
        row = await self.store.fetchrow(
            "SELECT g.grant_id, g.user_id, g.client_id, g.scopes, g.expires_at, g.status, u.tier "
            "FROM grants g JOIN users u USING (user_id) WHERE g.grant_id = $1",
            grant_id,
        )
        if row is None or row["status"] not in ("active", "refreshing"):
            raise Shutdown(row["status"] if row else "unknown_session")
        await UserSession(self, row).run(task_status=task_status)

    # -- transport sessions ----------------------------------------------------------------------------

    async def create_transport_session(
        self,
        session: UserSession,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
        max_sessions: int | None = None,
    ) -> str:
        """Store a new transport session of the session's user, or raise SessionLimitReached
        when the user already holds ``max_sessions`` live ones (nothing is stored then).

        The insert goes through the group commit like every other write, conditional on the
        user's live rows: ``steward_session_slot`` (migration 0009) counts them in the inserting
        transaction, stopping at the limit, and refuses the statement at it; the store reports
        that to this write alone. Statements of one batch see each other, so the limit is exact
        on one node; two nodes committing the same user's sessions within the same few
        milliseconds can each pass one (docs/scaling.md). A refusal makes the store commit the
        rest of its batch entry by entry; ``initialize_per_minute`` bounds how often one user can
        cause that."""
        session_id = secrets.token_urlsafe(24)
        user_id = session.context.user_id
        row = (
            session_id,
            session.grant_id,
            user_id,
            session.context.client_id,
            protocol_version,
            client_info,
            capabilities,
        )
        if max_sessions is None:
            op = Op(
                "INSERT INTO transport_sessions (session_id, grant_id, user_id, client_id, protocol_version, client_info, capabilities) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                row,
            )
        else:
            op = Op(
                "INSERT INTO transport_sessions (session_id, grant_id, user_id, client_id, protocol_version, client_info, capabilities) "
                "SELECT $1, $2, $3, $4, $5, $6::jsonb, $7::jsonb WHERE steward_session_slot($3, $8) "
                "ON CONFLICT DO NOTHING",
                (*row, max_sessions),
            )
        try:
            # durable before the answer (docs/store.md, "What is durable before the answer")
            await self.store.write(op)
        except WriteRejected as exc:
            if max_sessions is None or getattr(exc.__cause__, "sqlstate", None) != SESSION_LIMIT:
                raise
            raise SessionLimitReached(max_sessions) from None
        self._remember_transport(
            TransportSession(
                session_id,
                session.grant_id,
                user_id,
                session.context.client_id,
                protocol_version,
                client_info,
                capabilities,
                None,
            )
        )
        return session_id

    def _remember_transport(self, ts: TransportSession) -> None:
        self._ts_cache[ts.session_id] = ts
        self._ts_touched[ts.session_id] = trio.current_time()
        if len(self._ts_cache) > 50_000:
            oldest = next(iter(self._ts_cache))
            self._ts_cache.pop(oldest)
            self._ts_touched.pop(oldest, None)

    def _forget_transport(self, session_id: str) -> None:
        self._ts_cache.pop(session_id, None)
        self._ts_touched.pop(session_id, None)

    async def transport_session(
        self, principal: Principal, session_id: str
    ) -> TransportSession | None:
        """The transport session, or None when it does not exist, ended, or belongs to another
        principal (MCP-R20: answered exactly as if it did not exist)."""
        ts = self._ts_cache.get(session_id)
        now = trio.current_time()
        if (
            ts is not None
            and now - self._ts_touched.get(session_id, now) > self.policy.transport_idle
        ):
            # unused here for longer than the idle end: the janitor may have ended it
            self._forget_transport(session_id)
            ts = None
        if ts is None:
            row = await self._ts_lookup.get(session_id)
            if row is None:
                return None
            ts = TransportSession(
                row["session_id"],
                row["grant_id"],
                row["user_id"],
                row["client_id"],
                row["protocol_version"],
                row["client_info"],
                row["capabilities"],
                row["log_level"],
            )
            self._remember_transport(ts)
        # bound to the principal (user and client, MCP-R19), not to a grant: after the user
        # authorized again the same client keeps its transport session under the new grant
        if ts.user_id != principal.user_id or ts.client_id != principal.client_id:
            return None
        if now - self._ts_touched.get(session_id, -math.inf) >= self.policy.touch_interval:
            self._ts_touched[session_id] = now
            self.store.write_nowait(
                Op(
                    "UPDATE transport_sessions SET last_seen_at = now() WHERE session_id = $1 AND ended_at IS NULL",
                    (session_id,),
                )
            )
        if ts.grant_id != principal.grant_id:
            ts = attrs.evolve(ts, grant_id=principal.grant_id)
            self._ts_cache[session_id] = ts
            self.store.write_nowait(
                Op(
                    "UPDATE transport_sessions SET grant_id = $2 WHERE session_id = $1",
                    (session_id, principal.grant_id),
                )
            )
        return ts

    async def _read_transports(self, session_ids: list[str]) -> dict[str, dict[str, Any]]:
        rows = await self.store.fetch(
            "SELECT * FROM transport_sessions WHERE session_id = ANY($1::text[]) AND ended_at IS NULL",
            session_ids,
        )
        return {row["session_id"]: row for row in rows}

    async def end_transport_session(self, principal: Principal, session_id: str) -> bool:
        if await self.transport_session(principal, session_id) is None:
            return False
        self._forget_transport(session_id)
        # durable before the answer, in one statement (one round trip, no BEGIN/COMMIT): a
        # deleted session never answers again, even after a crash (docs/store.md)
        await self.store.write(
            Op(
                "WITH ended AS (UPDATE transport_sessions SET ended_at = now() "
                "WHERE session_id = $1 AND ended_at IS NULL RETURNING session_id) "
                "UPDATE connections SET closed_at = now(), close_reason = 'session_deleted' "
                "WHERE session_id = $1 AND closed_at IS NULL",
                (session_id,),
            )
        )
        session = self.registry.lookup(principal.grant_id)
        if session is not None:
            for conn in session.connections():
                if conn.session_id == session_id:
                    # the client ended it: its streams end quietly, as a completed response (an
                    # error event would reach a client that is closing and log an error there)
                    conn.finish(CloseReason.SESSION_DELETED)
        return True

    # -- invalidation ----------------------------------------------------------------------------------

    async def invalidate(
        self,
        grant_id: uuid.UUID,
        *,
        reason: GrantStatus,
        message: str | None = None,
        also: Sequence[Op] = (),
    ) -> None:
        """End a grant on every node (``end_grants_ops``, with ``also``, in one transaction): the
        streams of the grant end with their error event here (if it is live here) and on every
        other node (the notifier), and every node's verified-token cache forgets the grant's
        tokens."""
        message = message or f"the session was {reason}"
        session = self.registry.lookup(grant_id)
        if session is not None:
            await session.invalidate(reason, message, also=also)
            return
        self.forget(grant_id, "")
        await self.store.write(
            *end_grants_ops([grant_id], status=reason, message=message, origin=self.node_id),
            *also,
        )
        self.grants_ended()
        # a request that verified a token or hydrated the session before the commit: forgotten
        # and ended again after it (the notifier does not bring a node its own events)
        self.forget(grant_id, "")
        late = self.registry.lookup(grant_id)
        if late is not None:
            await late.end_locally(reason, message)

    def publish(
        self,
        kind: ClusterEvent,
        *,
        user_id: str | None = None,
        grant_id: uuid.UUID | None = None,
        payload: dict[str, Any] | None = None,
    ) -> list[Op]:
        """Ops that tell the other nodes (the notifier delivers them), to commit with the change."""
        return cluster_event_ops(
            kind, origin=self.node_id, user_id=user_id, grant_id=grant_id, payload=payload
        )

    def forget_user(self, user_id: str) -> None:
        for session in self.live():
            if session.context.user_id == user_id:
                self.forget(session.grant_id, user_id)
        if self._on_forget_user is not None:
            self._on_forget_user(user_id)

    def tier_changed_here(self, user_id: str, tier: str) -> None:
        """The user's tier changed (committed, published to the other nodes): this node's live
        sessions of the user take it up, their streams stay open, and the verified-token cache
        forgets the user's tokens. The notifier calls it for the other nodes' changes."""
        for session in self.live():
            if session.context.user_id == user_id:
                session.context = attrs.evolve(session.context, tier=tier)
        self.forget_user(user_id)
        if self.on_tier_changed is not None:
            self.on_tier_changed(user_id, tier)

    async def set_tier(self, user_id: str, tier: str | None) -> TierChange | None:
        """An operator's tier override of a user, everywhere (``override_tier``): it holds until
        cleared (``tier`` None), whatever the identity provider says; cleared, the provider's
        last value applies. Returns the change, None for an unknown user."""
        change = await override_tier(self.store, user_id, tier, origin=self.node_id)
        if change is not None:
            log.info(
                "auth_event",
                kind="tier_override_set" if tier is not None else "tier_override_cleared",
                user_id=user_id,
                tier=change.after,
            )
            if change.changed:
                self.tier_changed_here(user_id, change.after)
        return change

    async def reread_tier(self, grant_id: uuid.UUID, user_id: str, tokens: UpstreamTokens) -> None:
        """After an upstream refresh: the identity provider's claims again, mapped to a tier and
        applied to every grant of the user on every node. A claim source that fails leaves the
        tier as it is (the next refresh tries again); a claim that the configured default
        ``refuse`` refuses ends the user's grants (sign in again, which is refused too), unless
        an operator's override holds."""
        try:
            claims = await self.auth.upstream_claims(tokens)
            subject = None if claims is None else claims.get("sub")
            if subject is not None and f"{self.auth.upstream.config.issuer}|{subject}" != user_id:
                msg = "the refreshed claims name another subject (OpenID Connect Core §12.2)"
                raise IdTokenInvalid(msg)
        except (UpstreamUnavailable, UpstreamRevoked, IdTokenInvalid, ValueError) as exc:
            self.tier_rereads["failed"] += 1
            log.warning("tier_reread_failed", grant_id=str(grant_id), error=str(exc)[:200])
            return
        if claims is None:
            self.tier_rereads["skipped"] += 1
            return
        tier = self.auth.resolve_tier(claims, user_id=user_id, grant_id=grant_id, at="refresh")
        if tier is None:
            await self._refuse_tier(user_id)
            return

        async def write(conn: Conn) -> TierChange | None:
            return await apply_idp_tier(conn, user_id, tier, origin=self.node_id)

        self.tier_rereads["ok"] += 1
        self.auth.tier_changed(user_id, await self.store.transact(write), source="refresh")

    async def _refuse_tier(self, user_id: str) -> None:
        override = await self.store.fetchval(
            "SELECT tier_override FROM users WHERE user_id = $1", user_id
        )
        if override is not None:
            self.tier_rereads["ok"] += 1
            return
        self.tier_rereads["refused"] += 1
        for grant_id in await live_grants_of(self.store, user_id):
            await self.invalidate(
                grant_id,
                reason=GrantStatus.REAUTH_REQUIRED,
                message="the identity provider no longer gives this account a tier this "
                "service offers; sign in again",
            )

    async def revoke_user(self, user_id: str, *, reason: str = "revoked") -> UserChange:
        """Revoke a user everywhere (``revoke_user``): each of their streams closes with an
        error event. UNKNOWN_USER: no such user, nothing changed.

        This node's streams close before the commit (revocation takes effect here without
        waiting for the database) and the user's live sessions are ended again after it, in
        case the user came back in between, while the grants were still active."""
        await self.end_user_locally(user_id)
        change = await revoke_user(self.store, user_id, reason=reason, origin=self.node_id)
        self.grants_ended()
        await self.end_user_locally(user_id)
        return change

    async def reinstate_user(self, user_id: str, *, reason: str) -> UserChange:
        """Lift a user's revocation (actors/_revocation.py): they may sign in again."""
        return await reinstate_user(self.store, user_id, origin=self.node_id, reason=reason)

    def grants_ended(self) -> None:
        """Grants ended (here, or on another node as the notifier heard): their upstream tokens
        wait for the revoker."""
        if self.on_grants_ended is not None:
            self.on_grants_ended()

    async def end_user_locally(self, user_id: str) -> None:
        """The user was revoked: close this node's streams of theirs and forget their tokens."""
        for session in self.live():
            if session.context.user_id == user_id:
                await session.end_locally(GrantStatus.REVOKED, "access was revoked")
        self.forget_user(user_id)

    # -- upstream refresh, single flight across nodes ------------------------------------------------------

    def token_state(self, row: dict[str, Any]) -> TokenState:
        """The token keeper's view of an ``upstream_tokens`` row read with ``_STATE``."""
        floor_wait = row["floor_wait"]
        return TokenState(
            self.auth.decrypt_upstream(row),
            float(row["lifetime"]),
            time.time() + max(0.0, floor_wait or 0.0),
            int(row["refresh_generation"]),
            int(row["short_lifetimes"]),
        )

    async def refresh_upstream(self, grant_id: uuid.UUID) -> UpstreamTokens:
        """Refresh the grant's upstream tokens if they are due (``refresh_state``); the tokens.

        Raises:
            AuthenticationRequiredError: the refresh failed for good (``invalid_grant``, no refresh
                token): the user must authorize again.
            UpstreamUnavailable: it failed for now (network, timeout, 5xx); a retry may succeed.
        """
        return (await self.refresh_state(grant_id)).tokens

    async def refresh_state(
        self, grant_id: uuid.UUID, *, known_generation: int | None = None
    ) -> TokenState:
        """Refresh the grant's upstream tokens; with the same grant live on several nodes, only the
        node holding the lease calls the IdP and the others read its result.

        ``known_generation`` is the ``refresh_generation`` the caller holds: once the row has
        another, a node refreshed meanwhile and its result is returned. Tokens not yet within
        their lead of expiry are returned as they are. No refresh starts before the grant's floor
        (``refresh_not_before``, the database's clock): a caller that finds it ahead waits for
        it.

        Raises:
            AuthenticationRequiredError: the refresh failed for good (``invalid_grant``, no refresh
                token): the user must authorize again.
            UpstreamUnavailable: it failed for now (network, timeout, 5xx); a retry may succeed.
        """
        try:
            return await self._refresh_state(grant_id, known_generation)
        except UpstreamRevoked as exc:
            raise AuthenticationRequiredError("reauth_required", grant_id) from exc

    async def _refresh_state(self, grant_id: uuid.UUID, known: int | None) -> TokenState:
        policy = self.policy
        deadline: float | None = None
        while True:
            row = await self.store.fetchrow(
                "UPDATE upstream_tokens SET refresh_lease_until = now() + make_interval(secs => $2), refresh_lease_owner = $3 "
                "WHERE grant_id = $1 AND (refresh_lease_until IS NULL OR refresh_lease_until < now()) "
                "AND (refresh_not_before IS NULL OR refresh_not_before <= now()) "
                f"AND ($4::bigint IS NULL OR refresh_generation = $4) RETURNING *, {_STATE}",
                grant_id,
                policy.lease,
                self.node_id,
                known,
            )
            if row is not None:
                current = self.token_state(row)
                if not refresh_due(policy, current, time.time()):
                    await self._release(grant_id)
                    return current  # another node refreshed meanwhile
                break
            # another node holds the lease, or refreshed, or the floor is ahead
            latest = await self.store.fetchrow(
                f"SELECT *, {_STATE} FROM upstream_tokens WHERE grant_id = $1", grant_id
            )
            if latest is None:
                raise UpstreamRevoked("the grant has no upstream tokens")
            state = self.token_state(latest)
            if known is None:
                known = state.generation
            elif state.generation != known:
                return state  # another node refreshed meanwhile
            if not refresh_due(policy, state, time.time()):
                return state
            now = trio.current_time()
            floor_wait = max(0.0, state.floor_until - time.time())
            if deadline is None:
                deadline = now + policy.lease * 2 + floor_wait
            elif now > deadline:
                raise UpstreamUnavailable("another node's refresh did not finish in time")
            await trio.sleep(max(0.05, min(floor_wait, deadline - now)) + random.random() * 0.05)
        if current.tokens.refresh_token is None:
            await self._release(grant_id)
            raise UpstreamRevoked("no upstream refresh token")
        try:
            fresh = await self.upstream.refresh(current.tokens.refresh_token)
        except UpstreamRevoked:
            self.refreshes["revoked"] += 1
            await self._release(grant_id)
            raise
        except BaseException:
            self.refreshes["failed"] += 1
            # a failed attempt holds the floor too: the next one, on any node, waits for it
            await self._release(grant_id, floor=policy.refresh_floor)
            raise
        received = time.time()
        lifetime = fresh.expires_at - received
        short = lifetime - refresh_lead(policy, lifetime) < policy.refresh_floor
        streak = current.short_lifetimes + 1 if short else 0
        gap = refresh_gap(policy, streak)
        self.refreshes["ok"] += 1
        user_id: str = row["user_id"]
        if short:
            self.refreshes["short_lifetime"] += 1
            log.warning(
                "upstream_token_short_lifetime",
                grant_id=str(grant_id),
                lifetime=round(lifetime, 3),
                in_a_row=streak,
                next_refresh_after=gap,
            )
        key_id, access_ct, refresh_ct = self.auth.encrypt_upstream(grant_id, fresh)
        await self.store.write(
            Op(
                "UPDATE upstream_tokens SET key_id = $2, access_ciphertext = $3, refresh_ciphertext = COALESCE($4, refresh_ciphertext), "
                "access_expires_at = $5, access_issued_at = $6, short_lifetimes = $7, "
                "refresh_not_before = now() + make_interval(secs => $8), "
                "refresh_generation = refresh_generation + 1, refresh_lease_until = NULL, refresh_lease_owner = NULL, updated_at = now() "
                "WHERE grant_id = $1",
                (
                    grant_id,
                    key_id,
                    access_ct,
                    refresh_ct,
                    _timestamp(fresh.expires_at),
                    _timestamp(received),
                    streak,
                    gap,
                ),
            )
        )
        self.auth.audit("upstream_refresh", grant_id=grant_id)
        await self._reread_tier_safely(grant_id, user_id, fresh)
        return TokenState(fresh, lifetime, received + gap, current.generation + 1, streak)

    async def _reread_tier_safely(
        self, grant_id: uuid.UUID, user_id: str, tokens: UpstreamTokens
    ) -> None:
        """The tier re-read never fails the refresh it follows: the tokens are stored already."""
        try:
            await self.reread_tier(grant_id, user_id, tokens)
        except (StoreUnavailable, WriteRejected) as exc:
            self.tier_rereads["failed"] += 1
            log.warning("tier_reread_failed", grant_id=str(grant_id), error=str(exc)[:200])

    async def _release(self, grant_id: uuid.UUID, *, floor: float | None = None) -> None:
        """Give the lease back; with ``floor``, no refresh of the grant starts for that long."""
        if floor is None:
            op = Op(
                "UPDATE upstream_tokens SET refresh_lease_until = NULL, refresh_lease_owner = NULL WHERE grant_id = $1 AND refresh_lease_owner = $2",
                (grant_id, self.node_id),
            )
        else:
            op = Op(
                "UPDATE upstream_tokens SET refresh_lease_until = NULL, refresh_lease_owner = NULL, "
                "refresh_not_before = now() + make_interval(secs => $3) WHERE grant_id = $1 AND refresh_lease_owner = $2",
                (grant_id, self.node_id, floor),
            )
        await self.store.write(op)


def _timestamp(unix: float) -> datetime.datetime:
    """A unix time as a timestamptz, clamped to what a datetime holds (an IdP's absurd lifetime
    must not fail the write that keeps its rotated refresh token)."""
    return datetime.datetime.fromtimestamp(min(max(unix, 0.0), 253_402_214_400.0), UTC)
