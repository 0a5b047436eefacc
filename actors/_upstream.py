"""The client of the upstream identity provider (httpx): code exchange, refresh, userinfo, revoke.

Steward never passes a client's token upstream (MCP-R24): upstream calls use upstream tokens.
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import structlog

__all__ = [
    "UpstreamClient",
    "UpstreamConfig",
    "UpstreamRevoked",
    "UpstreamTokens",
    "UpstreamUnavailable",
]

log = structlog.get_logger("upstream")


class UpstreamRevoked(Exception):
    """The IdP refused the grant (invalid_grant): the user must authorize again."""


class UpstreamUnavailable(Exception):
    """The IdP could not be reached, timed out or failed (5xx): retry later with backoff."""


@attrs.frozen
class UpstreamConfig:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    client_id: str
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    tier_claim: str = "tier"
    request_timeout: float = 10.0


@attrs.frozen
class UpstreamTokens:
    access_token: str = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(repr=False)
    expires_at: float  # unix seconds


DEFAULT_EXPIRES_IN = 3600.0  # an answer without expires_in (RFC 6749 makes it optional)
MAX_EXPIRES_IN = 366 * 86400.0


def _expires_in(value: object) -> float:
    """A token response's ``expires_in`` in seconds: absent, the default; bounded to a year
    either way (0 and negative are kept: the token keeper's floor holds against them).

    Raises:
        ValueError: it is not a finite number.
    """
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"expires_in must be a number, got {type(value).__name__}"
        raise ValueError(msg)
    seconds = float(value)
    if not math.isfinite(seconds):
        msg = "expires_in must be a finite number"
        raise ValueError(msg)
    return min(max(seconds, -MAX_EXPIRES_IN), MAX_EXPIRES_IN)


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, *, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._http = http or httpx.AsyncClient(timeout=config.request_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    def authorize_url(
        self, *, state: str, code_challenge: str, redirect_uri: str, login_hint: str | None = None
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "scope": " ".join(self.config.scopes),
        }
        if login_hint:
            params["login_hint"] = login_hint
        return f"{self.config.authorization_endpoint}?{urlencode(params)}"

    async def _token_request(self, data: dict[str, str]) -> UpstreamTokens:
        data = {**data, "client_id": self.config.client_id}
        if self.config.client_secret:
            data["client_secret"] = self.config.client_secret
        try:
            response = await self._http.post(self.config.token_endpoint, data=data)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise UpstreamUnavailable(f"token endpoint answered {response.status_code}")
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise UpstreamUnavailable(
                f"token endpoint answered {response.status_code} without JSON"
            ) from exc
        if response.status_code != 200:
            error = body.get("error", "unknown")
            if error in ("invalid_grant", "unauthorized_client", "invalid_client", "access_denied"):
                raise UpstreamRevoked(f"upstream refused the grant: {error}")
            raise UpstreamUnavailable(f"token endpoint answered {response.status_code}: {error}")
        try:
            return UpstreamTokens(
                access_token=str(body["access_token"]),
                refresh_token=body.get("refresh_token") or data.get("refresh_token"),
                expires_at=time.time() + _expires_in(body.get("expires_in")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamUnavailable("token endpoint answered a malformed token response") from exc

    async def exchange_code(
        self, *, code: str, code_verifier: str, redirect_uri: str
    ) -> UpstreamTokens:
        return await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": code_verifier,
                "redirect_uri": redirect_uri,
            }
        )

    async def refresh(self, refresh_token: str) -> UpstreamTokens:
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        if self.config.userinfo_endpoint is None:
            return {}
        try:
            response = await self._http.get(
                self.config.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"userinfo unreachable: {type(exc).__name__}") from exc
        if response.status_code == 401:
            raise UpstreamRevoked("upstream refused the access token")
        if response.status_code != 200:
            raise UpstreamUnavailable(f"userinfo answered {response.status_code}")
        info: dict[str, Any] = response.json()
        return info

    async def revoke(self, token: str) -> None:
        if self.config.revocation_endpoint is None:
            return
        try:
            await self._http.post(
                self.config.revocation_endpoint,
                data={"token": token, "client_id": self.config.client_id},
            )
        except httpx.HTTPError as exc:
            log.warning("upstream_revoke_failed", error=type(exc).__name__)
