"""Tier changes of a user's sessions: an operator's override, and the identity provider's claims
read again after each upstream refresh. Both commit the change with the event that tells the other
nodes; this node's live sessions take it up through ``on_changed``."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from actors._grants import live_grants_of
from actors._statuses import AuthEvent, TierRereadOutcome
from actors._store import Conn, Store, StoreUnavailable, WriteRejected
from actors._tiers import TierChange, apply_idp_tier, override_tier, tier_override_of
from actors._upstream import IdTokenInvalid, UpstreamRevoked, UpstreamTokens, UpstreamUnavailable

__all__ = ["TierChanges", "TierClaims"]

log = structlog.get_logger("sessions")


class TierClaims(Protocol):
    """The authorization server's reading of the identity provider's claims into a tier."""

    async def upstream_claims(self, tokens: UpstreamTokens) -> dict[str, Any] | None: ...

    def resolve_tier(
        self,
        claims: Mapping[str, Any],
        *,
        user_id: str,
        at: str,
        grant_id: uuid.UUID | None = None,
    ) -> str | None: ...

    def tier_changed(self, user_id: str, change: TierChange | None, *, source: str) -> None: ...


class TierChanges:
    """Changes a user's tier everywhere: ``set_tier`` (an operator) and ``reread`` (after an
    upstream refresh). ``end_grant`` ends a grant on every node (the claims refused every tier);
    ``on_changed`` gives this node's live sessions the new tier."""

    def __init__(
        self,
        store: Store,
        claims: TierClaims,
        *,
        issuer: str,
        node_id: str,
        end_grant: Callable[[uuid.UUID, str], Awaitable[None]],
        on_changed: Callable[[str, str], None],
    ) -> None:
        self._store = store
        self._claims = claims
        self._issuer = issuer
        self._node_id = node_id
        self._end_grant = end_grant
        self._on_changed = on_changed
        self.rereads: collections.Counter[TierRereadOutcome] = collections.Counter()

    async def set_tier(self, user_id: str, tier: str | None) -> TierChange | None:
        """An operator's tier override of a user, everywhere (``override_tier``): it holds until
        cleared (``tier`` None), whatever the identity provider says; cleared, the provider's
        last value applies. Returns the change, None for an unknown user."""
        change = await override_tier(self._store, user_id, tier, origin=self._node_id)
        if change is not None:
            log.info(
                "auth_event",
                kind=AuthEvent.TIER_OVERRIDE_SET
                if tier is not None
                else AuthEvent.TIER_OVERRIDE_CLEARED,
                user_id=user_id,
                tier=change.after,
            )
            if change.changed:
                self._on_changed(user_id, change.after)
        return change

    async def reread_safely(
        self, grant_id: uuid.UUID, user_id: str, tokens: UpstreamTokens
    ) -> None:
        """``reread``, which never fails the refresh it follows: the tokens are stored already."""
        try:
            await self.reread(grant_id, user_id, tokens)
        except (StoreUnavailable, WriteRejected) as exc:
            self.rereads[TierRereadOutcome.FAILED] += 1
            log.warning("tier_reread_failed", grant_id=str(grant_id), error=str(exc)[:200])

    async def reread(self, grant_id: uuid.UUID, user_id: str, tokens: UpstreamTokens) -> None:
        """After an upstream refresh: the identity provider's claims again, mapped to a tier and
        applied to every grant of the user on every node. A claim source that fails leaves the
        tier as it is (the next refresh tries again); a claim that the configured default
        ``refuse`` refuses ends the user's grants (sign in again, which is refused too), unless
        an operator's override holds."""
        try:
            claims = await self._claims.upstream_claims(tokens)
            subject = None if claims is None else claims.get("sub")
            if subject is not None and f"{self._issuer}|{subject}" != user_id:
                msg = "the refreshed claims name another subject (OpenID Connect Core §12.2)"
                raise IdTokenInvalid(msg)
        except (UpstreamUnavailable, UpstreamRevoked, IdTokenInvalid, ValueError) as exc:
            self.rereads[TierRereadOutcome.FAILED] += 1
            log.warning("tier_reread_failed", grant_id=str(grant_id), error=str(exc)[:200])
            return
        if claims is None:
            self.rereads[TierRereadOutcome.SKIPPED] += 1
            return
        tier = self._claims.resolve_tier(claims, user_id=user_id, grant_id=grant_id, at="refresh")
        if tier is None:
            await self._refuse(user_id)
            return

        async def write(conn: Conn) -> TierChange | None:
            return await apply_idp_tier(conn, user_id, tier, origin=self._node_id)

        self.rereads[TierRereadOutcome.OK] += 1
        self._claims.tier_changed(user_id, await self._store.transact(write), source="refresh")

    async def _refuse(self, user_id: str) -> None:
        if await tier_override_of(self._store, user_id) is not None:
            self.rereads[TierRereadOutcome.OK] += 1
            return
        self.rereads[TierRereadOutcome.REFUSED] += 1
        for grant_id in await live_grants_of(self._store, user_id):
            await self._end_grant(
                grant_id,
                "the identity provider no longer gives this account a tier this service offers; "
                "sign in again",
            )
