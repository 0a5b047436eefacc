"""Registered OAuth clients (``oauth_clients``): dynamic registration (RFC 7591), client ID
metadata documents and configured clients, all stored the same way."""

from __future__ import annotations

import secrets
from typing import Any

from actors._redirect_uris import redirect_uri_problem
from actors._statuses import AuthEvent
from actors._store import Op, Store
from actors.auth._audit_log import AuthAudit
from actors.auth._values import OAuthError, now

__all__ = ["ClientRegistry"]


class ClientRegistry:
    """The clients that may ask for authorization."""

    def __init__(self, store: Store, *, audit: AuthAudit) -> None:
        self._store = store
        self._audit = audit

    async def register_client(
        self, metadata: dict[str, Any], *, source: str = "dynamic", client_id: str | None = None
    ) -> dict[str, Any]:
        """Dynamic client registration (RFC 7591): validates and stores a public client."""
        uris = metadata.get("redirect_uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise OAuthError(
                "invalid_redirect_uri", "redirect_uris must be a non-empty list of URIs"
            )
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem is not None:
                raise OAuthError("invalid_redirect_uri", f"{problem}: {uri[:200]!r}")
        method = metadata.get("token_endpoint_auth_method", "none")
        if method != "none":
            raise OAuthError(
                "invalid_client_metadata",
                "only public clients (token_endpoint_auth_method none) may register",
            )
        grant_types = metadata.get("grant_types", ["authorization_code", "refresh_token"])
        if not (
            isinstance(grant_types, list)
            and all(isinstance(g, str) for g in grant_types)
            and set(grant_types) <= {"authorization_code", "refresh_token"}
        ):
            raise OAuthError(
                "invalid_client_metadata",
                "grant_types may hold authorization_code and refresh_token only",
            )
        name = metadata.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise OAuthError(
                "invalid_client_metadata", "client_name must be a string of at most 200 characters"
            )
        scope = metadata.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise OAuthError("invalid_client_metadata", "scope must be a string")
        client_id = client_id or f"stw-{secrets.token_urlsafe(16)}"
        await self._store.write(
            Op(
                "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, grant_types, token_endpoint_auth_method, scope, source, metadata, fetched_at) "
                "VALUES ($1, $2, $3, $4, 'none', $5, $6, $7, CASE WHEN $6 = 'metadata_document' THEN now() END) "
                "ON CONFLICT (client_id) DO UPDATE SET client_name = EXCLUDED.client_name, redirect_uris = EXCLUDED.redirect_uris, "
                "scope = EXCLUDED.scope, metadata = EXCLUDED.metadata, fetched_at = EXCLUDED.fetched_at",
                (
                    client_id,
                    name,
                    uris,
                    grant_types,
                    scope,
                    source,
                    {k: v for k, v in metadata.items() if k != "client_secret"},
                ),
            )
        )
        self._audit(AuthEvent.CLIENT_REGISTERED, client_id=client_id, source=source)
        return {
            "client_id": client_id,
            "client_id_issued_at": int(now().timestamp()),
            "redirect_uris": uris,
            "grant_types": grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **({"client_name": name} if name else {}),
            **({"scope": scope} if scope else {}),
        }

    async def client(self, client_id: str) -> dict[str, Any] | None:
        return await self._store.fetchrow(
            "SELECT client_id, client_name, redirect_uris, scope, source, fetched_at FROM oauth_clients WHERE client_id = $1",
            client_id,
        )
