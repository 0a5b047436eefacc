"""The identity provider's claims, read into a tier: at sign-in, after each upstream refresh, and
the audited change that follows."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from actors._statuses import AuthEvent, TierClaimFallback, TierClaimUnmapped
from actors._tiers import TierChange, TierMapping
from actors._upstream import IdTokenInvalid, UpstreamClient, UpstreamTokens
from actors.auth._audit_log import AuthAudit

__all__ = ["TierClaimReader"]

log = structlog.get_logger("auth")


class TierClaimReader:
    """Maps the identity provider's claims to a configured tier (``mapping``); a value that maps
    to nothing is counted in ``tier_unmapped`` by (missing | unknown, default | refused)."""

    def __init__(
        self,
        upstream: UpstreamClient,
        mapping: TierMapping,
        *,
        audit: AuthAudit,
        on_tier_changed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.mapping = mapping
        self._audit = audit
        # a user's tier changed here: this node's sessions take it up (the other nodes through
        # the tier_changed event committed with the change)
        self._on_tier_changed = on_tier_changed
        self.tier_unmapped: collections.Counter[tuple[TierClaimUnmapped, TierClaimFallback]] = (
            collections.Counter()
        )

    async def upstream_claims(self, tokens: UpstreamTokens) -> dict[str, Any] | None:
        """The identity provider's claims about the user behind freshly refreshed ``tokens``:
        the id_token's, when the refresh returned one (validated as at sign-in, without a
        nonce), with userinfo's answer on top when the provider has a userinfo endpoint; None
        when it gives neither.

        Raises:
            UpstreamUnavailable, UpstreamRevoked: as ``UpstreamClient.userinfo``.
            ValueError: the id_token is refused (``IdTokenInvalid``), or userinfo names
                another subject.
        """
        claims: dict[str, Any] = {}
        if tokens.id_token is not None:
            claims = await self.upstream.validate_id_token(tokens.id_token)
        if self.upstream.metadata.userinfo_endpoint is not None:
            info = await self.upstream.userinfo(tokens.access_token)
            if not isinstance(info, dict):
                info = {}
            if claims and str(info.get("sub") or "") != claims["sub"]:
                msg = "userinfo names another subject than the refreshed id_token"
                raise IdTokenInvalid(msg)
            claims = {**claims, **info}
        return claims or None

    def resolve_tier(
        self,
        claims: Mapping[str, Any],
        *,
        user_id: str,
        at: str,
        grant_id: uuid.UUID | None = None,
    ) -> str | None:
        """The configured tier the claims map to, the default, or None (refused). A value that
        maps to nothing is logged (``tier_claim_unmapped``: the claim path, at most a few cut
        values, never a token) and counted."""
        mapping = self.mapping
        found = mapping.resolve(claims)
        if found.unmapped is not None:
            outcome = TierClaimFallback.REFUSED if found.tier is None else TierClaimFallback.DEFAULT
            self.tier_unmapped[(found.unmapped, outcome)] += 1
            log.warning(
                "tier_claim_unmapped",
                user_id=user_id,
                grant_id=str(grant_id) if grant_id else None,
                at=at,
                claim=mapping.claim,
                reason=found.unmapped,
                values=list(found.values),
                outcome=outcome,
                tier=found.tier,
            )
        return found.tier

    def tier_changed(self, user_id: str, change: TierChange | None, *, source: str) -> None:
        """After a committed tier write: this node's sessions take the new tier up; audited."""
        if change is None or not change.changed:
            return
        self._audit(
            AuthEvent.TIER_CHANGED,
            user_id=user_id,
            before=change.before,
            after=change.after,
            source=source,
        )
        if self._on_tier_changed is not None:
            self._on_tier_changed(user_id, change.after)
