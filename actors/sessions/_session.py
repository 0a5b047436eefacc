"""The user-session actor: one grant (a user through one client), its token keeper and its
connection actors, under its own supervisor (rest_for_one, the connections first)."""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import structlog
import trio

from actors._grants import end_grants_ops, grant_touched_op
from actors._statuses import CloseReason, ConnectionKind, GrantStatus
from actors._store import Op, Store
from actors._upstream import UpstreamUnavailable
from actors.sessions._slots import StreamSlots
from actors.sessions._streams import Connection
from actors.sessions._tokens import Audit, TokenKeeper, UpstreamRefresher
from actors.sessions._values import (
    AuthenticationRequiredError,
    SessionPolicy,
    UserContext,
    final_event,
)
from runtime import (
    ChildSpec,
    DynamicSupervisor,
    ExitKind,
    Registry,
    Restart,
    Strategy,
    Supervisor,
    SupervisorHandle,
    fault_point,
)

__all__ = ["SessionLifecycle", "UserSession"]

log = structlog.get_logger("sessions")


class SessionLifecycle(Protocol):
    """What a session actor needs of the sessions it belongs to (``SessionManager``)."""

    @property
    def registry(self) -> Registry[uuid.UUID, UserSession]: ...

    @property
    def policy(self) -> SessionPolicy:
        """The sessions' policy as it is now (read at each use: a change reaches live sessions'
        next streams and timers)."""

    def forget(self, grant_id: uuid.UUID, user_id: str) -> None:
        """Every verified-token cache of this node forgets the grant's tokens."""

    def grants_ended(self) -> None:
        """Grants ended: their upstream tokens wait for the revoker."""

    def stop_soon(self, session: UserSession) -> None:
        """Stop the session's actor (from outside it)."""


class UserSession:
    """The face of one user-session actor (one grant: a user through one client)."""

    def __init__(
        self,
        row: dict[str, Any],
        *,
        store: Store,
        node_id: str,
        slots: StreamSlots,
        refresher: UpstreamRefresher,
        audit: Audit,
        lifecycle: SessionLifecycle,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._slots = slots
        self._refresher = refresher
        self._audit = audit
        self._lifecycle = lifecycle
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
        if now - self._last_touch >= self._lifecycle.policy.touch_interval:
            self._last_touch = now
            self._store.write_nowait(grant_touched_op(self.grant_id), key=("touch", self.grant_id))

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
            store=self._store,
            node_id=self._node_id,
            policy=self._lifecycle.policy,
            reconnect_at=reconnect_at,
            on_release=self._slots.give_back,
        )
        if max_streams is not None and kind.long_lived:
            await self._slots.take(self.context.user_id, max_streams)
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
                await self._store.write(*also)
            return
        self.invalid_reason = status
        self._lifecycle.forget(self.grant_id, self.context.user_id)
        try:
            await self._store.write(
                *end_grants_ops(
                    [self.grant_id], status=status, message=message, origin=self._node_id
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
        self._lifecycle.grants_ended()
        self._lifecycle.forget(self.grant_id, self.context.user_id)  # verified meanwhile
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
            self._lifecycle.stop_soon(self)

    async def end_locally(self, status: GrantStatus, message: str) -> None:
        """Another node (or the janitor) already changed the rows: close this node's streams with
        an error event and stop the actor."""
        if self.invalid_reason is not None:
            return
        self.invalid_reason = status
        self._lifecycle.forget(self.grant_id, self.context.user_id)
        self.close_streams(CloseReason(status), message)
        if self._sup is not None:
            self._lifecycle.stop_soon(self)
        await trio.lowlevel.checkpoint()

    def close_streams(self, reason: CloseReason, message: str) -> None:
        final = final_event("error", {"error": reason, "message": message})
        for conn in self.connections():
            conn.end_with(final, reason)

    async def run(
        self, *, task_status: trio.TaskStatus[UserSession] = trio.TASK_STATUS_IGNORED
    ) -> None:
        keeper = TokenKeeper(
            self.grant_id,
            self.context.user_id,
            refresher=self._refresher,
            audit=self._audit,
            end_grant=self.invalidate,
        )
        # rest_for_one with the connections first: a crashing token keeper restarts alone and the
        # streams stay (docs/sessions.md); a crashing connections supervisor takes the keeper
        # with it, which only re-reads the tokens
        children = [
            ChildSpec(
                "connections",
                DynamicSupervisor(
                    "connections",
                    max_children=self._lifecycle.policy.max_connections,
                    intensity=1000,
                    period=1.0,
                ).run,
            ),
            ChildSpec(
                "token_keeper",
                keeper.run,
                restart=Restart.TRANSIENT,
                backoff=self._lifecycle.policy.keeper_backoff,
                shutdown_grace=1.0,
            ),
        ]
        sup = Supervisor(
            f"session:{self.grant_id}",
            children,
            strategy=Strategy.REST_FOR_ONE,
            intensity=self._lifecycle.policy.session_intensity,
            period=self._lifecycle.policy.session_period,
        )
        async with trio.open_nursery() as nursery:
            handle: SupervisorHandle = await nursery.start(sup.run)
            self._sup = handle
            self._keeper = keeper
            connections = handle.child("connections")
            assert isinstance(connections, SupervisorHandle)
            self._connections = connections
            with self._lifecycle.registry.register(self.grant_id, self):
                task_status.started(self)
                nursery.start_soon(self._idle_watch, handle)
                nursery.start_soon(self._tick)
                exit = await handle.wait_exited()
                nursery.cancel_scope.cancel()
        if self.invalid_reason is not None or exit.kind is not ExitKind.ERROR:
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
        idle = self._lifecycle.policy.idle_timeout
        while True:
            await trio.sleep(idle / 4)
            await fault_point("session.tick")
            if not self.connections() and trio.current_time() - self.last_active > idle:
                log.info("session_idle_stop", grant_id=str(self.grant_id))
                await handle.stop("idle")
                return
