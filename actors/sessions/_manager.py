"""User sessions as supervised actors, each owning its token keeper and its connection actors.

    sessions (dynamic supervisor, registry by grant id)
    └── session[grant]              transient; rest_for_one over:
        ├── token_keeper            refreshes upstream tokens ahead of expiry (single flight across nodes)
        └── connections             dynamic supervisor
            └── connection[id]      temporary: one SSE stream, bounded outbox, heartbeat, final error event

``SessionManager`` is the registry of this node's live sessions: it hydrates a session from its
grant, ends grants (invalidation) and revokes users. The other roles are parts it builds and
hands out, each in its module: the transport sessions (``TransportSessions``), the user's stream
slots (``StreamSlots``), the single-flight upstream refresh (``UpstreamRefresher``) and tier
changes (``TierChanges``). The methods that only forward to them are kept so that the edge needs
one name (``sessions``). See docs/sessions.md for the lifecycle and what each failure does.
"""

from __future__ import annotations

import collections
import datetime
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import structlog
import trio

from actors._events import ClusterEvent, cluster_event_ops
from actors._grants import end_grants_ops, grant_expired_op, grant_row, session_grant
from actors._nodes import node_started_op
from actors._revocation import UserChange, reinstate_user, revoke_user
from actors._statuses import CloseReason, GrantStatus, TierRereadOutcome, UpstreamRefreshOutcome
from actors._store import Op, Store, StoreUnavailable
from actors._tiers import TierChange
from actors._upstream import UpstreamClient, UpstreamTokens
from actors.auth import AuthService, Principal
from actors.sessions._session import UserSession
from actors.sessions._slots import StreamSlots
from actors.sessions._streams import Connection, node_connections_closed_op
from actors.sessions._tier_changes import TierChanges
from actors.sessions._tokens import TokenState, UpstreamRefresher
from actors.sessions._transport import TransportSessions
from actors.sessions._values import (
    AuthenticationRequiredError,
    SessionPolicy,
    SessionRestarting,
    TransportSession,
)
from runtime import (
    ChildSpec,
    DynamicSupervisor,
    Registry,
    Restart,
    Shutdown,
    SupervisorHandle,
)

__all__ = ["SessionManager"]

log = structlog.get_logger("sessions")
UTC = datetime.UTC


class SessionManager:
    """The face of the ``sessions`` dynamic supervisor: the registry of this node's live
    sessions (hydration, invalidation, a user's revocation, tier changes taken up). Its parts
    (``slots``, ``transports``, ``refresher``, ``tiers``) carry the other roles; the methods at
    the end only forward to them, so that the edge holds one name."""

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
        on_grants_ended: Callable[[], None] | None = None,
        on_tier_changed: Callable[[str, str], object] | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.upstream = upstream
        self.node_id = node_id
        self._policy = policy = policy or SessionPolicy()
        self.registry: Registry[uuid.UUID, UserSession] = Registry("sessions")
        # a user's tier changed on this node or another: the MCP edge tells the user's streams
        # here (what the user may list changed with it: list_changed)
        self._on_tier_changed = on_tier_changed
        self._sup: SupervisorHandle | None = None
        self._hydrating: dict[uuid.UUID, trio.Event] = {}
        self._on_forget = on_forget
        self._on_forget_user = on_forget_user
        self._nursery: trio.Nursery | None = None
        self._on_grants_ended = on_grants_ended  # wakes the upstream revoker
        # the parts, each one role
        self.slots = StreamSlots(
            store,
            node_id=node_id,
            count_wait=policy.stream_count_wait,
            nodes_recheck=policy.nodes_recheck,
        )
        self.transports = TransportSessions(
            store,
            touch_interval=policy.touch_interval,
            idle=policy.transport_idle,
            streams_of=self._streams_of,
        )
        self.tiers = TierChanges(
            store,
            auth,
            issuer=upstream.config.issuer,
            node_id=node_id,
            end_grant=self._reauthorize,
            on_changed=self.tier_changed_here,
        )
        self.refresher = UpstreamRefresher(
            store,
            auth,
            upstream,
            node_id=node_id,
            policy=policy,
            audit=auth.audit,
            on_refreshed=self.tiers.reread_safely,  # the tier re-read after each refresh
        )

    @property
    def policy(self) -> SessionPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: SessionPolicy) -> None:
        """A new policy reaches the parts and the live sessions' next streams and timers."""
        self._policy = policy
        self.refresher.policy = policy
        self.slots.count_wait = policy.stream_count_wait
        self.slots.nodes_recheck = policy.nodes_recheck
        self.transports.touch_interval = policy.touch_interval
        self.transports.idle = policy.transport_idle

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
            node_connections_closed_op(self.node_id, CloseReason.NODE_RESTARTED),
            node_started_op(self.node_id),
        )
        log.info("node_take_over", node_id=self.node_id)

    @property
    def supervisor(self) -> SupervisorHandle | None:
        """The ``sessions`` dynamic supervisor (``runtime.tree()`` draws the sessions under it)."""
        return self._sup

    def forget(self, grant_id: uuid.UUID, user_id: str) -> None:
        if self._on_forget is not None:
            self._on_forget(grant_id, user_id)

    def stop_soon(self, session: UserSession) -> None:
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
        row = await grant_row(self.store, principal.grant_id)
        if (
            row is None
            or row["user_id"] != principal.user_id
            or row["client_id"] != principal.client_id
        ):
            raise AuthenticationRequiredError("unknown_session", principal.grant_id)
        if not GrantStatus(row["status"]).live:
            raise AuthenticationRequiredError(row["status"], principal.grant_id)
        if row["expires_at"] <= datetime.datetime.now(UTC):
            await self.store.write(grant_expired_op(row["grant_id"]))
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
        row = await session_grant(self.store, grant_id)
        if row is None or not GrantStatus(row["status"]).live:
            raise Shutdown(row["status"] if row else "unknown_session")
        session = UserSession(
            row,
            store=self.store,
            node_id=self.node_id,
            slots=self.slots,
            refresher=self.refresher,
            audit=self.auth.audit,
            lifecycle=self,
        )
        await session.run(task_status=task_status)

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
        if self._on_tier_changed is not None:
            self._on_tier_changed(user_id, tier)

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
        if self._on_grants_ended is not None:
            self._on_grants_ended()

    async def end_user_locally(self, user_id: str) -> None:
        """The user was revoked: close this node's streams of theirs and forget their tokens."""
        for session in self.live():
            if session.context.user_id == user_id:
                await session.end_locally(GrantStatus.REVOKED, "access was revoked")
        self.forget_user(user_id)

    def _streams_of(self, grant_id: uuid.UUID) -> list[Connection]:
        session = self.registry.lookup(grant_id)
        return [] if session is None else session.connections()

    async def _reauthorize(self, grant_id: uuid.UUID, message: str) -> None:
        await self.invalidate(grant_id, reason=GrantStatus.REAUTH_REQUIRED, message=message)

    # -- what the parts do, under the one name the edge holds ------------------------------------------

    async def create_transport_session(
        self,
        session: UserSession,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
        max_sessions: int | None = None,
    ) -> str:
        """``TransportSessions.create`` for the session's user and grant."""
        return await self.transports.create(
            session.context,
            protocol_version=protocol_version,
            client_info=client_info,
            capabilities=capabilities,
            max_sessions=max_sessions,
        )

    async def transport_session(
        self, principal: Principal, session_id: str
    ) -> TransportSession | None:
        """``TransportSessions.lookup``."""
        return await self.transports.lookup(principal, session_id)

    async def end_transport_session(self, principal: Principal, session_id: str) -> bool:
        """``TransportSessions.end``."""
        return await self.transports.end(principal, session_id)

    async def take_stream_slot(self, user_id: str, limit: int) -> None:
        """``StreamSlots.take``."""
        await self.slots.take(user_id, limit)

    def stream_closed(self, user_id: str) -> None:
        """``StreamSlots.give_back``."""
        self.slots.give_back(user_id)

    @property
    def open_streams(self) -> collections.Counter[str]:
        """Each user's long-lived streams on this node."""
        return self.slots.open_streams

    async def set_tier(self, user_id: str, tier: str | None) -> TierChange | None:
        """``TierChanges.set_tier``."""
        return await self.tiers.set_tier(user_id, tier)

    async def reread_tier(self, grant_id: uuid.UUID, user_id: str, tokens: UpstreamTokens) -> None:
        """``TierChanges.reread``."""
        await self.tiers.reread(grant_id, user_id, tokens)

    @property
    def tier_rereads(self) -> collections.Counter[TierRereadOutcome]:
        return self.tiers.rereads

    @property
    def refreshes(self) -> collections.Counter[UpstreamRefreshOutcome]:
        return self.refresher.refreshes

    def token_state(self, row: dict[str, Any]) -> TokenState:
        return self.refresher.token_state(row)

    async def refresh_upstream(self, grant_id: uuid.UUID) -> UpstreamTokens:
        """``UpstreamRefresher.refresh_upstream``."""
        return await self.refresher.refresh_upstream(grant_id)

    async def refresh_state(
        self, grant_id: uuid.UUID, *, known_generation: int | None = None
    ) -> TokenState:
        """``UpstreamRefresher.refresh_state``."""
        return await self.refresher.refresh_state(grant_id, known_generation=known_generation)
