"""Upstream tokens: the token keeper of each session, and the single-flight refresh of a grant's
tokens across nodes (its ``upstream_tokens`` statements are here). See docs/sessions.md, "When
the token keeper refreshes"."""

from __future__ import annotations

import collections
import datetime
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import structlog
import trio

from actors._statuses import AuthEvent, GrantStatus, UpstreamRefreshFailure, UpstreamRefreshOutcome
from actors._store import Op, Store, StoreUnavailable
from actors._upstream import UpstreamClient, UpstreamRevoked, UpstreamTokens, UpstreamUnavailable
from actors.sessions._values import AuthenticationRequiredError, SessionPolicy
from runtime import Shutdown, fault_point

__all__ = [
    "NO_REFRESH_TOKEN",
    "Audit",
    "TokenKeeper",
    "TokenState",
    "TokenVault",
    "UpstreamRefresher",
    "refresh_due",
    "refresh_gap",
    "refresh_lead",
]

log = structlog.get_logger("sessions")
UTC = datetime.UTC

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
    when that is later, and refreshes through ``UpstreamRefresher.refresh_state`` (single flight
    across nodes). Without a refresh token it sleeps until the token expires and then asks for
    re-authorization (``end_grant``)."""

    def __init__(
        self,
        grant_id: uuid.UUID,
        user_id: str,
        *,
        refresher: UpstreamRefresher,
        audit: Audit,
        end_grant: Callable[[GrantStatus, str], Awaitable[None]],
    ) -> None:
        self.grant_id = grant_id
        self.user_id = user_id
        self._refresher = refresher
        self._audit = audit
        self._end_grant = end_grant
        self.tokens: UpstreamTokens | None = None
        self.state: TokenState | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[TokenKeeper] = trio.TASK_STATUS_IGNORED
    ) -> None:
        store = self._refresher.store
        try:
            await self._load()
        except StoreUnavailable:
            # restarted during an outage: ready now (the session keeps serving what it can),
            # the tokens are read once the store is back (docs/runtime.md)
            task_status.started(self)
            await store.wait_connected()
            await self._load()
        else:
            task_status.started(self)
        if self.state is None:
            await trio.sleep_forever()
        policy = self._refresher.policy
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
            await store.wait_connected()  # the refresh's lease lives in the database
            await fault_point("token_keeper.refresh")
            try:
                self.state = await self._refresher.refresh_state(
                    self.grant_id, known_generation=state.generation
                )
                self.tokens = self.state.tokens
            except AuthenticationRequiredError as exc:
                log.info("upstream_refresh_revoked", grant_id=str(self.grant_id))
                self._failed(UpstreamRefreshFailure.INVALID_GRANT)
                await self._end_grant(
                    GrantStatus.REAUTH_REQUIRED,
                    "the identity provider revoked the grant; sign in again",
                )
                raise Shutdown("revoked") from exc
            except UpstreamUnavailable:
                self._failed(UpstreamRefreshFailure.UNAVAILABLE)
                raise

    def _failed(self, outcome: UpstreamRefreshFailure) -> None:
        self._audit(
            AuthEvent.UPSTREAM_REFRESH_FAILED,
            user_id=self.user_id,
            grant_id=self.grant_id,
            outcome=outcome,
        )

    async def _expire_without_refresh_token(self, state: TokenState) -> None:
        """The IdP issued no refresh token: the session serves until the access token expires,
        then the grant needs re-authorization, saying why."""
        await trio.sleep(max(0.0, state.tokens.expires_at - time.time()))
        log.info("upstream_token_expired_without_refresh", grant_id=str(self.grant_id))
        self._failed(UpstreamRefreshFailure.NO_REFRESH_TOKEN)
        await self._end_grant(GrantStatus.REAUTH_REQUIRED, NO_REFRESH_TOKEN)
        raise Shutdown("reauth_required")

    async def _load(self) -> None:
        self.state = await self._refresher.load(self.grant_id)
        if self.state is not None:
            self.tokens = self.state.tokens


class TokenVault(Protocol):
    """Encrypts and decrypts a grant's upstream tokens (the key ring's AES-GCM)."""

    def encrypt_upstream(
        self, grant_id: uuid.UUID, tokens: UpstreamTokens
    ) -> tuple[str, bytes, bytes | None]: ...

    def decrypt_upstream(self, row: dict[str, Any]) -> UpstreamTokens: ...


class Audit(Protocol):
    """Records an authentication event (``auth_events`` and the log); never a secret."""

    def __call__(
        self,
        kind: AuthEvent | GrantStatus,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        grant_id: uuid.UUID | None = None,
        **detail: Any,
    ) -> None: ...


class UpstreamRefresher:
    """The refresh of a grant's upstream tokens, single flight across nodes: the node that takes
    the grant's lease in ``upstream_tokens`` calls the identity provider, the others read its
    result. ``on_refreshed`` runs after each stored refresh (the tier re-read); it must not
    raise."""

    def __init__(
        self,
        store: Store,
        vault: TokenVault,
        upstream: UpstreamClient,
        *,
        node_id: str,
        policy: SessionPolicy,
        audit: Audit,
        on_refreshed: Callable[[uuid.UUID, str, UpstreamTokens], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self._vault = vault
        self._upstream = upstream
        self._node_id = node_id
        self._audit = audit
        self._on_refreshed = on_refreshed
        self.refreshes: collections.Counter[UpstreamRefreshOutcome] = collections.Counter()

    async def load(self, grant_id: uuid.UUID) -> TokenState | None:
        """The grant's tokens as stored, None if it has none."""
        row = await self.store.fetchrow(
            f"SELECT *, {_STATE} FROM upstream_tokens WHERE grant_id = $1", grant_id
        )
        return None if row is None else self.token_state(row)

    def token_state(self, row: dict[str, Any]) -> TokenState:
        """The token keeper's view of an ``upstream_tokens`` row read with ``_STATE``."""
        floor_wait = row["floor_wait"]
        return TokenState(
            self._vault.decrypt_upstream(row),
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
                self._node_id,
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
            fresh = await self._upstream.refresh(current.tokens.refresh_token)
        except UpstreamRevoked:
            self.refreshes[UpstreamRefreshOutcome.REVOKED] += 1
            await self._release(grant_id)
            raise
        except BaseException:
            self.refreshes[UpstreamRefreshOutcome.FAILED] += 1
            # a failed attempt holds the floor too: the next one, on any node, waits for it
            await self._release(grant_id, floor=policy.refresh_floor)
            raise
        received = time.time()
        lifetime = fresh.expires_at - received
        short = lifetime - refresh_lead(policy, lifetime) < policy.refresh_floor
        streak = current.short_lifetimes + 1 if short else 0
        gap = refresh_gap(policy, streak)
        self.refreshes[UpstreamRefreshOutcome.OK] += 1
        user_id: str = row["user_id"]
        if short:
            self.refreshes[UpstreamRefreshOutcome.SHORT_LIFETIME] += 1
            log.warning(
                "upstream_token_short_lifetime",
                grant_id=str(grant_id),
                lifetime=round(lifetime, 3),
                in_a_row=streak,
                next_refresh_after=gap,
            )
        key_id, access_ct, refresh_ct = self._vault.encrypt_upstream(grant_id, fresh)
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
        self._audit(AuthEvent.UPSTREAM_REFRESH, grant_id=grant_id)
        if self._on_refreshed is not None:
            await self._on_refreshed(grant_id, user_id, fresh)
        return TokenState(fresh, lifetime, received + gap, current.generation + 1, streak)

    async def _release(self, grant_id: uuid.UUID, *, floor: float | None = None) -> None:
        """Give the lease back; with ``floor``, no refresh of the grant starts for that long."""
        if floor is None:
            op = Op(
                "UPDATE upstream_tokens SET refresh_lease_until = NULL, refresh_lease_owner = NULL WHERE grant_id = $1 AND refresh_lease_owner = $2",
                (grant_id, self._node_id),
            )
        else:
            op = Op(
                "UPDATE upstream_tokens SET refresh_lease_until = NULL, refresh_lease_owner = NULL, "
                "refresh_not_before = now() + make_interval(secs => $3) WHERE grant_id = $1 AND refresh_lease_owner = $2",
                (grant_id, self._node_id, floor),
            )
        await self.store.write(op)


def _timestamp(unix: float) -> datetime.datetime:
    """A unix time as a timestamptz, clamped to what a datetime holds (an IdP's absurd lifetime
    must not fail the write that keeps its rotated refresh token)."""
    return datetime.datetime.fromtimestamp(min(max(unix, 0.0), 253_402_214_400.0), UTC)
