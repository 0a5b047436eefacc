"""Revoking and reinstating users, one implementation for every caller (the session manager,
the admin API and ``steward`` operator commands), and the upstream revoker.

Ending a grant is actors/_grants.py's; revoking a user ends every live grant of theirs the same
way, in the transaction that marks them revoked. The revoker (one per node, a supervised child)
then revokes the marked upstream tokens at the identity provider (RFC 7009: the refresh token
first, then the access token) and deletes their ciphertext. It never holds up the revocation
itself: the grant is ended locally first, the IdP call is bounded, retried with backoff, and
waits out a database or IdP outage; past ``give_up_after`` (or ``max_attempts``) the
ciphertext is deleted unrevoked and the event is audited (docs/sessions.md, "Ending a grant
upstream").
"""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Any

import attrs
import structlog
import trio
from cryptography.exceptions import InvalidTag

from actors._audit import audit_op
from actors._events import ClusterEvent, cluster_event_ops
from actors._grants import user_end_ops
from actors._statuses import AuthEvent, GrantStatus
from actors._store import Conn, Op, Store, StoreUnavailable, run_ops
from actors._upstream import RevokeOutcome, UpstreamClient
from actors.auth import AuthService
from runtime import Backoff, ChildSpec

__all__ = [
    "OPERATOR_REINSTATED",
    "OPERATOR_REVOKED",
    "RevokerPolicy",
    "UpstreamRevoker",
    "UserChange",
    "reinstate_user",
    "revoke_user",
    "revoke_user_ops",
]

log = structlog.get_logger("revocation")

OPERATOR_REVOKED = "revoked by an operator"  # the reason of an operator's revocation
OPERATOR_REINSTATED = "reinstated by an operator"


def revoke_user_ops(user_id: str, *, reason: str, origin: str) -> list[Op]:
    """Revoke a user: marked revoked (sign-in refused until reinstated), every live grant ended
    with status ``revoked``, audited, and every node told (``revoke_user``). The users row is
    updated first: a sign-in completing at the same time (``AuthService._complete``, which
    reads it FOR SHARE) either sees the revocation or has its grant ended here."""
    return [
        Op("UPDATE users SET revoked_at = now() WHERE user_id = $1", (user_id,)),
        *user_end_ops(user_id, status=GrantStatus.REVOKED, message=reason),
        audit_op(
            AuthEvent.USER_REVOKED, node_id=origin, user_id=user_id, detail={"reason": reason}
        ),
        *cluster_event_ops(ClusterEvent.REVOKE_USER, origin=origin, user_id=user_id),
    ]


class UserChange(enum.Enum):
    """What an operator's action on a user found."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"  # already so (reinstating a user who is not revoked)
    UNKNOWN_USER = "unknown_user"


async def revoke_user(store: Store, user_id: str, *, reason: str, origin: str) -> UserChange:
    """Revoke a user (``revoke_user_ops``) if they exist; CHANGED or UNKNOWN_USER.

    Raises:
        StoreUnavailable: the database cannot be reached; nothing changed.
    """

    async def revoke(conn: Conn) -> UserChange:
        if (
            await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            is None
        ):
            return UserChange.UNKNOWN_USER
        await run_ops(conn, revoke_user_ops(user_id, reason=reason, origin=origin))
        return UserChange.CHANGED

    change = await store.transact(revoke)
    if change is UserChange.CHANGED:
        log.info(
            "auth_event", kind=AuthEvent.USER_REVOKED, user_id=user_id, reason=reason, origin=origin
        )
    return change


async def reinstate_user(store: Store, user_id: str, *, origin: str, reason: str) -> UserChange:
    """Lift a user's revocation: they may sign in again and get new grants. Grants ended by the
    revocation stay ended (their tokens were revoked, upstream too). Audited as ``reinstated``.

    Raises:
        StoreUnavailable: the database cannot be reached; nothing changed.
    """

    async def reinstate(conn: Conn) -> UserChange:
        row = await conn.fetchrow(
            "SELECT revoked_at FROM users WHERE user_id = $1 FOR UPDATE", user_id
        )
        if row is None:
            return UserChange.UNKNOWN_USER
        if row["revoked_at"] is None:
            return UserChange.UNCHANGED
        await conn.execute(
            "UPDATE users SET revoked_at = NULL, updated_at = now() WHERE user_id = $1", user_id
        )
        audit = audit_op(
            AuthEvent.USER_REINSTATED,
            node_id=origin,
            user_id=user_id,
            detail={"reason": reason, "revoked_at": row["revoked_at"].isoformat()},
        )
        await run_ops(conn, [audit])
        return UserChange.CHANGED

    change = await store.transact(reinstate)
    if change is UserChange.CHANGED:
        log.info(
            "auth_event",
            kind=AuthEvent.USER_REINSTATED,
            user_id=user_id,
            reason=reason,
            origin=origin,
        )
    return change


# -- the upstream revoker --------------------------------------------------------------------------


@attrs.frozen
class RevokerPolicy:
    batch: int = 20  # rows claimed at once
    concurrency: int = 4  # IdP calls in flight at once
    poll: float = 10.0  # seconds between looks for rows marked elsewhere (another node, the CLI)
    # the n-th failed attempt waits backoff.delay(n) before the next (any node may take it)
    backoff: Backoff = Backoff(min=2.0, max=300.0, jitter=0.2)  # noqa: RUF009
    call_timeout: float = 15.0  # one attempt (both tokens) at most
    # the ciphertext is deleted unrevoked after this many attempts, or this long after the
    # grant ended, whichever comes first (the IdP never answered; audited)
    max_attempts: int = 12
    give_up_after: float = 3600.0


class RevokeResult(enum.Enum):
    REVOKED = "revoked"  # the IdP revoked both tokens (or knew neither); ciphertext deleted
    NOT_OFFERED = "not_offered"  # no revocation endpoint: ciphertext deleted
    REFUSED = "refused"  # the IdP refused for good: ciphertext deleted
    UNDECRYPTABLE = "undecryptable"  # the ciphertext does not decrypt (corrupt): deleted
    ABANDONED = "abandoned"  # the IdP never answered in time: ciphertext deleted unrevoked
    RETRY = "retry"  # the IdP is away: kept for the next attempt
    CHANGED = "changed"  # refreshed meanwhile: taken again at once with the new tokens


class UpstreamRevoker:
    """Revokes the upstream tokens of ended grants and deletes their ciphertext (the owner of
    ``upstream_tokens`` rows once their grant ended)."""

    def __init__(
        self,
        store: Store,
        auth: AuthService,
        upstream: UpstreamClient,
        *,
        node_id: str,
        policy: RevokerPolicy | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.upstream = upstream
        self.node_id = node_id
        self.policy = policy or RevokerPolicy()
        self._wake = trio.Event()
        self.outcomes: dict[RevokeResult, int] = dict.fromkeys(RevokeResult, 0)

    def child_spec(self) -> ChildSpec:
        return ChildSpec(
            "revoker", self.run, backoff=Backoff(min=1.0, max=30.0), shutdown_grace=2.0
        )

    def wake(self) -> None:
        """Grants ended (here or, as the notifier heard, elsewhere): look for marked rows now."""
        self._wake.set()

    async def run(
        self, *, task_status: trio.TaskStatus[UpstreamRevoker] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(self)
        while True:
            await self.store.wait_connected()  # an outage is waited out, not crashed on
            self._wake = trio.Event()
            wait = self.policy.poll
            try:
                while await self.pass_once():
                    pass
                due = await self.store.fetchval(
                    "SELECT extract(epoch FROM min(revoke_next_at) - now()) FROM upstream_tokens "
                    "WHERE revoke_requested_at IS NOT NULL"
                )
                if due is not None:  # a retry due before the next poll
                    wait = min(wait, max(0.0, float(due)))
            except StoreUnavailable:
                log.warning("upstream_revoke_deferred", reason="database unreachable")
            with trio.move_on_after(wait):
                await self._wake.wait()

    async def pass_once(self) -> int:
        """Claim the rows due now (a batch) and handle each; returns how many were claimed."""
        p = self.policy
        rows = await self.store.fetch(
            "UPDATE upstream_tokens u SET revoke_attempts = u.revoke_attempts + 1, "
            "revoke_next_at = now() + make_interval(secs => $2 * power(2, least(u.revoke_attempts, 30))) "
            "WHERE u.grant_id IN (SELECT grant_id FROM upstream_tokens WHERE revoke_requested_at IS NOT NULL "
            "AND revoke_next_at <= now() ORDER BY revoke_next_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
            "RETURNING u.*, extract(epoch FROM now() - u.revoke_requested_at) AS waited",
            p.batch,
            p.backoff.min,
        )
        if not rows:
            return 0
        limiter = trio.CapacityLimiter(p.concurrency)
        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(self._handle, row, limiter)
        return len(rows)

    async def _handle(self, row: dict[str, Any], limiter: trio.CapacityLimiter) -> None:
        try:
            await self._handle_one(row, limiter)
        except StoreUnavailable:  # the row stays claimed: retried once its next attempt is due
            log.warning("upstream_revoke_deferred", reason="database unreachable")

    async def _handle_one(self, row: dict[str, Any], limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            result = await self._revoke(row)
        self.outcomes[result] += 1
        grant_id: uuid.UUID = row["grant_id"]
        if result is RevokeResult.RETRY:
            # the claim set the next attempt's time; spread it (the SQL doubled the minimum)
            delay = self.policy.backoff.delay(int(row["revoke_attempts"]) - 1)
            await self.store.write(
                Op(
                    "UPDATE upstream_tokens SET revoke_next_at = now() + make_interval(secs => $2) "
                    "WHERE grant_id = $1",
                    (grant_id, delay),
                )
            )
            log.info(
                "upstream_revoke_retry",
                grant_id=str(grant_id),
                attempts=row["revoke_attempts"],
                next_in=round(delay, 1),
            )
            return
        deleted = await self.store.fetchval(
            "WITH gone AS (DELETE FROM upstream_tokens WHERE grant_id = $1 AND refresh_generation = $2 "
            "RETURNING 1) SELECT count(*) FROM gone",
            grant_id,
            row["refresh_generation"],
        )
        if not deleted:
            # a refresh finished after the grant ended, with tokens the calls did not name
            self.outcomes[RevokeResult.CHANGED] += 1
            await self.store.write(
                Op(
                    "UPDATE upstream_tokens SET revoke_next_at = now() WHERE grant_id = $1",
                    (grant_id,),
                )
            )
            self.wake()
            return
        self.auth.audit(
            AuthEvent.UPSTREAM_REVOKED
            if result is RevokeResult.REVOKED
            else AuthEvent.UPSTREAM_TOKENS_DELETED,
            user_id=row["user_id"],
            grant_id=grant_id,
            outcome=result.value,
            attempts=row["revoke_attempts"],
        )

    async def _revoke(self, row: dict[str, Any]) -> RevokeResult:
        p = self.policy
        u = self.upstream
        if u.metadata.revocation_endpoint is None and not (
            u.config.discovery and u.discovered is None
        ):
            # neither configured nor discovered; while discovery is pending, revoke() says
            # UNAVAILABLE and the row is retried
            return RevokeResult.NOT_OFFERED
        if int(row["revoke_attempts"]) > p.max_attempts or float(row["waited"]) > p.give_up_after:
            log.warning(
                "upstream_revoke_abandoned",
                grant_id=str(row["grant_id"]),
                attempts=int(row["revoke_attempts"]) - 1,
            )
            return RevokeResult.ABANDONED
        try:
            tokens = self.auth.decrypt_upstream(row)
        except KeyError:  # a key this node has not loaded (yet): another node, or a later try
            log.warning("upstream_revoke_key_missing", grant_id=str(row["grant_id"]))
            return RevokeResult.RETRY
        except (InvalidTag, UnicodeDecodeError) as exc:  # a corrupt row: nothing to send for it
            log.warning(
                "upstream_revoke_undecryptable",
                grant_id=str(row["grant_id"]),
                error=type(exc).__name__,
            )
            return RevokeResult.UNDECRYPTABLE
        calls: list[tuple[str, str]] = []
        if tokens.refresh_token:  # first: with it revoked, no new access token can be minted
            calls.append((tokens.refresh_token, "refresh_token"))
        if tokens.expires_at > datetime.datetime.now(datetime.UTC).timestamp():
            calls.append((tokens.access_token, "access_token"))
        result = RevokeResult.REVOKED
        with trio.move_on_after(p.call_timeout):
            for token, hint in calls:
                outcome = await self.upstream.revoke(token, hint=hint)
                if outcome is RevokeOutcome.UNAVAILABLE:
                    return RevokeResult.RETRY
                if outcome is RevokeOutcome.REFUSED:
                    result = RevokeResult.REFUSED
            return result
        log.warning("upstream_revoke_timeout", grant_id=str(row["grant_id"]))
        return RevokeResult.RETRY
