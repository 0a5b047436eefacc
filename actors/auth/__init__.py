"""The authorization server: registered clients, the authorization flow, Steward's tokens, the
upstream token vault and the authentication audit.

``AuthService`` is the one name the edge and the sessions hold; its parts, one role each, are
``ClientRegistry``, ``AuthorizationFlow``, ``TokenService``, ``UpstreamVault``,
``TierClaimReader`` and ``AuthAudit``. The package's public names are here; the rest of
``actors`` imports them from this module, and the edge imports them from ``actors``. See
docs/security.md.
"""

from __future__ import annotations

from actors.auth._audit_log import AuthAudit
from actors.auth._clients import ClientRegistry
from actors.auth._flow import AuthorizationFlow
from actors.auth._service import AuthService
from actors.auth._sessions_port import GrantSessions, SessionsPort
from actors.auth._tier_claims import TierClaimReader
from actors.auth._tokens import TokenService
from actors.auth._values import (
    AuthPolicy,
    ConsentNeeded,
    GrantInvalidator,
    IssuedTokens,
    OAuthError,
    Principal,
    UserRevokedError,
    s256,
)
from actors.auth._vault import UpstreamVault

__all__ = [
    "AuthAudit",
    "AuthPolicy",
    "AuthService",
    "AuthorizationFlow",
    "ClientRegistry",
    "ConsentNeeded",
    "GrantInvalidator",
    "GrantSessions",
    "IssuedTokens",
    "OAuthError",
    "Principal",
    "SessionsPort",
    "TierClaimReader",
    "TokenService",
    "UpstreamVault",
    "UserRevokedError",
    "s256",
]
