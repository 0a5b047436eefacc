"""The authorization server: registered clients, the authorization flow, Steward's tokens, the
upstream token vault and the authentication audit.

The package's public names are here; the rest of ``actors`` imports them from this module, and the
edge imports them from ``actors``. See docs/security.md.
"""

from __future__ import annotations

from actors.auth._service import (
    AuthPolicy,
    AuthService,
    ConsentNeeded,
    GrantInvalidator,
    IssuedTokens,
    OAuthError,
    Principal,
    UserRevokedError,
    s256,
)

__all__ = [
    "AuthPolicy",
    "AuthService",
    "ConsentNeeded",
    "GrantInvalidator",
    "IssuedTokens",
    "OAuthError",
    "Principal",
    "UserRevokedError",
    "s256",
]
