"""The authorization server's values: its policy, the principal of a verified token, issued
tokens, the consent to ask for, and the errors it answers with."""

from __future__ import annotations

import base64
import datetime
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlencode

import attrs

from actors._statuses import GrantStatus
from actors._store import Op
from actors._tiers import TierMapping

__all__ = [
    "AuthPolicy",
    "ConsentNeeded",
    "GrantInvalidator",
    "IssuedTokens",
    "OAuthError",
    "Principal",
    "UserRevokedError",
    "s256",
]

UTC = datetime.UTC


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def in_(seconds: float) -> datetime.datetime:
    return now() + datetime.timedelta(seconds=seconds)


class OAuthError(Exception):
    """An OAuth error response: ``error`` code, a description, an HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class UserRevokedError(OAuthError):
    """An operator revoked the user signing in (``steward users revoke``): the sign-in ends at
    the callback or the consent. ``client_redirect`` sends the browser back to the client with
    the OAuth error (RFC 6749 §4.1.2.1: the redirect URI was verified at /authorize)."""

    def __init__(self, user_id: str, client_redirect: str) -> None:
        super().__init__("access_denied", "this user's access was revoked", status=403)
        self.user_id = user_id
        self.client_redirect = client_redirect


@attrs.frozen
class Principal:
    """Who is calling, from a verified Steward access token."""

    user_id: str
    client_id: str
    grant_id: uuid.UUID
    issuer: str
    subject: str
    scopes: frozenset[str]
    tier: str
    resource: str
    expires_at: float


@attrs.frozen
class IssuedTokens:
    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    expires_in: int
    scope: str

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
        }


@attrs.frozen
class ConsentNeeded:
    """The callback found no remembered consent: show the consent page."""

    request_token: str = attrs.field(repr=False)
    csrf_token: str = attrs.field(repr=False)
    client_id: str
    client_name: str
    redirect_uri: str
    scopes: tuple[str, ...]
    user_id: str


class GrantInvalidator(Protocol):
    """The one invalidation of a grant (``SessionManager.invalidate``, docs/sessions.md): the
    grant's status and open connection rows change and a cluster event is published, with
    ``also`` in the same transaction; every node's streams of the grant end with their error
    event and every node's verified-token cache forgets the grant's tokens."""

    async def __call__(
        self,
        grant_id: uuid.UUID,
        *,
        reason: GrantStatus,
        message: str | None = None,
        also: Sequence[Op] = (),
    ) -> None: ...


@attrs.frozen
class AuthPolicy:
    issuer: str  # Steward's base URL (the authorization server facade)
    resource: str  # this server's resource URL: the audience of its tokens
    # other identifiers of the same protected resource (the deprecated transport's ``/sse``): a
    # client may ask for any of them and a token for one is valid on every MCP endpoint of this
    # server (docs/security.md, "One resource, two identifiers")
    resource_aliases: tuple[str, ...] = ()
    access_ttl: float = 3600.0
    refresh_ttl: float = 30 * 86400.0
    code_ttl: float = 60.0
    request_ttl: float = 600.0
    session_ttl: float = 30 * 86400.0
    scopes_supported: tuple[str, ...] = ("mcp:tools", "mcp:resources", "mcp:prompts")
    default_scopes: tuple[str, ...] = ("mcp:tools", "mcp:resources", "mcp:prompts")
    # the identity provider's claim to a configured tier (docs/security.md, "Tiers")
    tier_mapping: TierMapping = attrs.field(
        factory=lambda: TierMapping(("free", "pro", "enterprise"))
    )

    @property
    def resources(self) -> tuple[str, ...]:
        """Every identifier of this server's protected resource, the canonical one first."""
        return (self.resource, *self.resource_aliases)

    def canonical_resource(self, resource: str) -> str | None:
        """``resource`` as this server names it (one of ``resources``; a trailing slash aside),
        or None when it names another resource."""
        for mine in self.resources:
            if resource.rstrip("/") == mine.rstrip("/"):
                return mine
        return None


def s256(verifier: str) -> str:
    return (
        # a verifier is ASCII (RFC 7636); anything else is hashed as it is, never a 500
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("utf-8", "surrogatepass")).digest())
        .rstrip(b"=")
        .decode()
    )


def with_params(uri: str, params: dict[str, str]) -> str:
    """``uri`` with ``params`` added; an empty ``state`` (the client sent none) is left out."""
    if params.get("state") == "":
        params = {k: v for k, v in params.items() if k != "state"}
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode(params)}"
