"""Steward's domain actors: the store, sessions, token keepers, notifier, janitor."""

from __future__ import annotations

from actors._migrations import (
    Migration,
    MigrationError,
    applied_migrations,
    load_migrations,
    migrate,
    pending_migrations,
)
from actors._redirect_uris import (
    REDIRECT_URI_LIMIT,
    redirect_uri_matches,
    redirect_uri_problem,
    valid_redirect_uri,
)
from actors._revocation import (
    RevokerPolicy,
    UpstreamRevoker,
    UserChange,
    grant_end_ops,
    reinstate_user,
    revoke_user_ops,
)
from actors._store import (
    Conn,
    Op,
    QueueFull,
    Store,
    StorePolicy,
    StoreStatistics,
    StoreUnavailable,
    WriteQueue,
    WriteRejected,
    store_child_spec,
)
from actors._store_retention import (
    RETENTION_RULES,
    RetentionPolicy,
    RetentionRule,
    retention_sweep,
)
from actors._tiers import (
    REFUSE,
    TierChange,
    TierMapping,
    TierResolution,
    apply_idp_tier,
    set_tier_override,
)
from actors._upstream import (
    ID_TOKEN_ALGORITHMS,
    IdTokenInvalid,
    ProviderMetadata,
    UpstreamClient,
    UpstreamConfig,
    UpstreamNotReady,
    UpstreamUnavailable,
)
from actors._user_names import AmbiguousUser, UnknownUser, resolve_user, user_names

__all__ = [
    "ID_TOKEN_ALGORITHMS",
    "REDIRECT_URI_LIMIT",
    "REFUSE",
    "RETENTION_RULES",
    "AmbiguousUser",
    "Conn",
    "IdTokenInvalid",
    "Migration",
    "MigrationError",
    "Op",
    "ProviderMetadata",
    "QueueFull",
    "RetentionPolicy",
    "RetentionRule",
    "RevokerPolicy",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "StoreUnavailable",
    "TierChange",
    "TierMapping",
    "TierResolution",
    "UnknownUser",
    "UpstreamClient",
    "UpstreamConfig",
    "UpstreamNotReady",
    "UpstreamRevoker",
    "UpstreamUnavailable",
    "UserChange",
    "WriteQueue",
    "WriteRejected",
    "applied_migrations",
    "apply_idp_tier",
    "grant_end_ops",
    "load_migrations",
    "migrate",
    "pending_migrations",
    "redirect_uri_matches",
    "redirect_uri_problem",
    "reinstate_user",
    "resolve_user",
    "retention_sweep",
    "revoke_user_ops",
    "set_tier_override",
    "store_child_spec",
    "user_names",
    "valid_redirect_uri",
]
