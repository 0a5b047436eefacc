"""The statuses and outcomes that rows and actors speak of, as enums.

Each is a ``StrEnum`` whose values are the text the database stores (``grants.status``,
``connections.close_reason``) or the text logs and audit details carry: a member compares equal
to its value, so rows read back compare with members, and members are written as they are.
"""

from __future__ import annotations

import enum

__all__ = [
    "LIVE_STATUSES",
    "AuthEvent",
    "CloseReason",
    "ConnectionKind",
    "GrantStatus",
    "RefreshOutcome",
    "TierClaimFallback",
    "TierClaimUnmapped",
    "TierRereadOutcome",
    "UpstreamRefreshFailure",
    "UpstreamRefreshOutcome",
]


class GrantStatus(enum.StrEnum):
    """``grants.status``: a user session (grant) is live while active or refreshing."""

    ACTIVE = "active"
    REFRESHING = "refreshing"
    REAUTH_REQUIRED = "reauth_required"  # the upstream refresh failed for good: sign in again
    REVOKED = "revoked"  # a user revoked, a token revoked, a reused code or refresh token
    EXPIRED = "expired"  # the session's lifetime ended
    ENDED = "ended"  # an operator ended the session

    @property
    def live(self) -> bool:
        return self in LIVE_STATUSES


LIVE_STATUSES = frozenset({GrantStatus.ACTIVE, GrantStatus.REFRESHING})


class ConnectionKind(enum.StrEnum):
    """``connections.kind``: what a stream (one connection actor) carries."""

    GET = "get"  # the GET stream of a 2025 transport session
    POST = "post"  # the reply stream of one POST (a request): not long-lived
    LEGACY_SSE = "legacy_sse"  # the ``/sse`` stream of a legacy (2024-11-05) session
    LISTEN = "listen"  # a 2026-07-28 ``subscriptions/listen`` stream

    @property
    def long_lived(self) -> bool:
        """Held open until its client or its grant ends it; counted in ``max_streams``."""
        return self is not ConnectionKind.POST


class CloseReason(enum.StrEnum):
    """``connections.close_reason``: why a stream closed. A grant that ends closes its streams
    with its new status as the reason."""

    REVOKED = "revoked"
    ENDED = "ended"
    EXPIRED = "expired"
    REAUTH_REQUIRED = "reauth_required"
    COMPLETE = "complete"  # the stream's work is done (a POST's answer sent)
    CLIENT_DISCONNECTED = "client_disconnected"
    SESSION_DELETED = "session_deleted"  # the client ended its MCP session (DELETE)
    RESUMED = "resumed"  # the client resumed the stream elsewhere (Last-Event-ID)
    RECONNECT = "reconnect"  # the stream asked its client to reconnect
    TOKEN_EXPIRED = "token_expired"  # the access token that opened it expired: reconnect
    SLOW_CLIENT = "slow_client"  # its buffer filled: the client does not read
    CONNECTION_STOPPED = "connection_stopped"  # the stream's actor stopped
    DATABASE_UNREACHABLE = "database_unreachable"
    NODE_RESTARTED = "node_restarted"  # closed by the node's next incarnation
    NODE_DEAD = "node_dead"  # closed by the janitor: its node stopped beating
    STALE = "stale"  # closed by the janitor: no heartbeat


class RefreshOutcome(enum.StrEnum):
    """What looking up a presented refresh token found (``AuthService.refresh``)."""

    OK = "ok"
    UNKNOWN = "unknown"
    REUSE = "reuse"  # a rotated-away refresh token presented again
    WRONG_CLIENT = "wrong_client"
    USER_REVOKED = "user_revoked"
    INACTIVE = "inactive"  # the grant is no longer live
    EXPIRED = "expired"
    INVALID_SCOPE = "invalid_scope"  # wider scopes than the grant's


class UpstreamRefreshOutcome(enum.StrEnum):
    """What a refresh of a grant's upstream tokens came to, as counted on ``/metrics``
    (``steward_upstream_refreshes_total{outcome}``)."""

    OK = "ok"
    FAILED = "failed"  # for now (network, timeout, 5xx): a retry may succeed
    REVOKED = "revoked"  # for good (``invalid_grant``): the user signs in again
    SHORT_LIFETIME = "short_lifetime"  # an OK whose lifetime was under the refresh floor


class UpstreamRefreshFailure(enum.StrEnum):
    """Why a session's token keeper gave up on a refresh (the ``outcome`` of the audited
    ``upstream_refresh_failed`` event)."""

    INVALID_GRANT = "invalid_grant"  # the identity provider refused the refresh token
    UNAVAILABLE = "unavailable"  # it did not answer; the keeper retries with backoff
    NO_REFRESH_TOKEN = "no_refresh_token"  # none was issued and the access token expired


class TierRereadOutcome(enum.StrEnum):
    """What reading the identity provider's claims again after an upstream refresh did to the
    user's tier (``steward_tier_rereads_total{outcome}``)."""

    OK = "ok"  # the tier was applied (changed or not), or an operator's override holds
    FAILED = "failed"  # the claims could not be had or were refused: the tier stays
    SKIPPED = "skipped"  # the provider gives no claims after a refresh
    REFUSED = "refused"  # the claims map to no tier and the default refuses: grants end


class AuthEvent(enum.StrEnum):
    """``auth_events.kind``: what an authentication event records. A grant that ends is audited
    with its new ``GrantStatus`` as the kind."""

    CLIENT_REGISTERED = "client_registered"
    UPSTREAM_SIGN_IN = "upstream_sign_in"  # the identity provider signed the user in
    SIGN_IN = "sign_in"  # the authorization completed: a grant and a code
    SIGN_IN_REFUSED = "sign_in_refused"  # a revoked user, no tier, a refused id_token
    CONSENT_GRANTED = "consent_granted"
    CONSENT_DENIED = "consent_denied"
    TOKEN_ISSUED = "token_issued"  # a code exchanged
    TOKEN_REFRESH = "token_refresh"  # a refresh token rotated
    TOKEN_REVOKED = "token_revoked"  # by its client (RFC 7009)
    CODE_REUSE_DETECTED = "code_reuse_detected"
    REFRESH_REUSE_DETECTED = "refresh_reuse_detected"
    UPSTREAM_REFRESH = "upstream_refresh"
    UPSTREAM_REFRESH_FAILED = "upstream_refresh_failed"  # outcome: UpstreamRefreshFailure
    UPSTREAM_REVOKED = "upstream_revoked"  # an ended grant's tokens revoked at the IdP
    UPSTREAM_TOKENS_DELETED = "upstream_tokens_deleted"  # ... or given up on and deleted
    TIER_CHANGED = "tier_changed"
    TIER_OVERRIDE_SET = "tier_override_set"
    TIER_OVERRIDE_CLEARED = "tier_override_cleared"
    USER_REVOKED = "revoked"  # an operator revoked the user
    USER_REINSTATED = "reinstated"


class TierClaimUnmapped(enum.StrEnum):
    """Why the identity provider's tier claim mapped to no configured tier."""

    MISSING = "missing"  # the claim is absent (or holds no usable value)
    UNKNOWN = "unknown"  # its values name no configured tier


class TierClaimFallback(enum.StrEnum):
    """What followed an unmapped tier claim (``steward_tier_claim_unmapped{outcome}``)."""

    DEFAULT = "default"  # the configured default tier
    REFUSED = "refused"  # the default is ``refuse``: the sign-in is refused, grants end
