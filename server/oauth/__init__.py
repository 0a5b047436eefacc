"""OAuth 2.1 endpoints: the authorization server Steward is to MCP clients, the resource server
that checks bearer tokens, and client ID metadata documents."""

from __future__ import annotations

from server.oauth._client_metadata import MetadataFetcher
from server.oauth._endpoints import AuthError, DevPrincipal, OAuthEndpoints, ResourceServer

__all__ = ["AuthError", "DevPrincipal", "MetadataFetcher", "OAuthEndpoints", "ResourceServer"]
