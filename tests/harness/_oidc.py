"""A standard OpenID Connect provider for the tests, served by a real Hypercorn on 127.0.0.1.

It knows nothing of Steward: it speaks OpenID Connect discovery and RFC 8414 metadata, a JWK
Set with rotatable RSA keys (joserfc signs its id_tokens), the authorization code flow with PKCE
S256 (the user is ``login_hint``, signed in at once), the refresh-token grant with rotation,
userinfo (can be switched off) and RFC 7009 revocation, with client_secret_basic or
client_secret_post. Tests set users' claims, token lifetimes, and faults::

    async with oidc_provider(userinfo=False, access_ttl=300) as idp:
        idp.set_user("dora", email="dora@example.com", tier="pro")
        async with running_node(dsn, upstream=idp.upstream_settings()) as node:
            tokens = await sign_in(http, node, "dora")   # tests/harness/_steward.py
        idp.tamper("wrong_aud")     # the next id_token is issued wrong
        idp.rotate_key()            # a new signing key, the old one still published
        idp.available = False       # every endpoint answers 503
        idp.calls["refresh"]        # requests seen, by endpoint
        idp.set_lifetime(30, user="dora")      # her next access tokens live 30 s
        idp.answer_expires_in(0, user="dora")  # and the token endpoint says 0 (or -30, or None:
                                               # the field left out; "lifetime": the truth again)
        idp.fail_revoke(2)          # the next two /revoke calls answer 503
        idp.calls["refresh:dora"]   # refreshes granted to dora's grants
        idp.revocations             # what /revoke received, newest last
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode

import attrs
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.harness._asgi_server import hypercorn_on_a_free_port

__all__ = ["TAMPER_MODES", "OidcProvider", "oidc_provider"]

TAMPER_MODES = (
    "bad_signature",  # signed by a key the JWK Set does not hold, under a published kid
    "unknown_kid",  # signed by a key of an unpublished kid
    "wrong_aud",
    "wrong_iss",
    "wrong_nonce",
    "no_nonce",
    "expired",
    "alg_none",
)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@attrs.define
class _Code:
    user: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    scope: str
    expires: float


@attrs.define
class _Refresh:
    user: str
    scope: str
    expires: float


@attrs.define(eq=False)
class OidcProvider:
    """The provider as an ASGI app; ``issuer`` is set once it listens."""

    client_id: str = "steward"
    client_secret: str | None = "test-client-secret"
    path: str = ""  # the issuer's path (e.g. "/realms/test")
    access_ttl: float = 3600.0
    refresh_ttl: float = 86400.0
    id_token_ttl: float = 300.0
    userinfo: bool = True  # serve and advertise the userinfo endpoint
    refresh_tokens: bool = True  # issue refresh tokens (and advertise the grant)
    revocation: bool = True  # serve and advertise the RFC 7009 revocation endpoint
    openid_configuration: bool = True  # serve /.well-known/openid-configuration
    oauth_metadata: bool = True  # serve RFC 8414 metadata
    advertised_issuer: str | None = None  # a metadata document naming another issuer
    available: bool = True  # False: every endpoint answers 503
    issuer: str = ""
    users: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    keys: list[RSAKey] = attrs.field(factory=list)
    calls: collections.Counter[str] = attrs.field(factory=collections.Counter)
    revoked: set[str] = attrs.field(factory=set)
    user_ttl: dict[str, float] = attrs.field(factory=dict)  # access lifetimes by user
    # what the token endpoint says as expires_in, by user or (key None) for everyone, whatever
    # the token's real lifetime; a value None leaves the field out
    expires_in: dict[str | None, float | None] = attrs.field(factory=dict)
    revoke_faults: int = 0  # the next this many /revoke calls answer 503
    # each /revoke that was answered: the token's kind as known here, its user, the hint, the client
    revocations: list[dict[str, str | None]] = attrs.field(factory=list)
    _tamper: collections.deque[str] = attrs.field(factory=collections.deque)
    _codes: dict[str, _Code] = attrs.field(factory=dict)
    _refresh: dict[str, _Refresh] = attrs.field(factory=dict)
    _access: dict[str, tuple[str, float]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            self.rotate_key()

    # -- what tests drive ------------------------------------------------------------------------

    def set_user(self, user: str, /, **claims: Any) -> None:
        """Create or update a user; ``claims`` go into its id_tokens and userinfo."""
        self.users.setdefault(user, {"email": f"{user}@example.com"}).update(claims)

    def rotate_key(self, *, keep_old: bool = True) -> str:
        """A new signing key (returned: its kid); the old ones stay published unless told."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(3)}"
        key = RSAKey.generate_key(
            2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True
        )
        self.keys = [*self.keys, key] if keep_old else [key]
        return kid

    def set_lifetime(self, seconds: float, *, user: str | None = None) -> None:
        """Access tokens issued from now on live ``seconds``, for ``user`` or for everyone."""
        assert seconds > 0, seconds
        if user is None:
            self.access_ttl = seconds
        else:
            self.user_ttl[user] = seconds

    def answer_expires_in(
        self, value: float | Literal["lifetime"] | None, *, user: str | None = None
    ) -> None:
        """What token answers say as ``expires_in`` from now on, for ``user`` or for everyone:
        a number (0 and negative ones too) whatever the real lifetime, None to leave it out,
        "lifetime" to say the truth again."""
        if value == "lifetime":
            self.expires_in.pop(user, None)
        else:
            self.expires_in[user] = value

    def fail_revoke(self, count: int) -> None:
        """The next ``count`` calls to /revoke answer 503 temporarily_unavailable."""
        self.revoke_faults = count

    def tamper(self, mode: str) -> None:
        """Issue the next id_token wrong in this way (one of TAMPER_MODES)."""
        assert mode in TAMPER_MODES, mode
        self._tamper.append(mode)

    def upstream_settings(self, **extra: Any) -> dict[str, Any]:
        """Steward's ``[upstream]`` for this provider: the issuer and the client alone."""
        settings: dict[str, Any] = {"issuer": self.issuer, "client_id": self.client_id}
        if self.client_secret:
            settings["client_secret"] = self.client_secret
        return {**settings, **extra}

    def access_token_user(self, token: str) -> str | None:
        """The user of a live access token."""
        entry = self._access.get(token)
        return entry[0] if entry and entry[1] > time.time() and token not in self.revoked else None

    # -- HTTP --------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > 64 * 1024:
                await _json(send, 413, {"error": "invalid_request"})
                return
            if not message.get("more_body"):
                break
        path = scope["path"]
        self.calls[path] += 1
        if not self.available:
            await _json(send, 503, {"error": "temporarily_unavailable"}, [(b"retry-after", b"1")])
            return
        wk_oauth = f"/.well-known/oauth-authorization-server{self.path}"
        handlers = {
            ("GET", "/.well-known/openid-configuration"): self._openid_configuration,
            ("GET", "/jwks"): self._jwks,
            ("GET", "/authorize"): self._authorize,
            ("POST", "/token"): self._token,
            ("GET", "/userinfo"): self._userinfo,
            ("POST", "/revoke"): self._revoke,
        }
        if scope["method"] == "GET" and path == wk_oauth and self.oauth_metadata:
            await _json(send, 200, self.metadata())
            return
        if self.path and not path.startswith(self.path + "/"):
            await _json(send, 404, {"error": "not_found"})
            return
        handler = handlers.get((scope["method"], path.removeprefix(self.path)))
        if handler is None:
            await _json(send, 404, {"error": "not_found"})
            return
        await handler(scope, body, send)

    def metadata(self) -> dict[str, Any]:
        i = self.issuer
        doc: dict[str, Any] = {
            "issuer": self.advertised_issuer or i,
            "authorization_endpoint": f"{i}/authorize",
            "token_endpoint": f"{i}/token",
            "jwks_uri": f"{i}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "grant_types_supported": ["authorization_code"]
            + (["refresh_token"] if self.refresh_tokens else []),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
        }
        if self.userinfo:
            doc["userinfo_endpoint"] = f"{i}/userinfo"
        if self.revocation:
            doc["revocation_endpoint"] = f"{i}/revoke"
        return doc

    async def _openid_configuration(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        if not self.openid_configuration:
            await _json(send, 404, {"error": "not_found"})
            return
        await _json(send, 200, self.metadata())

    async def _jwks(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        await _json(send, 200, {"keys": [k.as_dict(private=False) for k in self.keys]})

    async def _authorize(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        q = dict(parse_qsl(scope["query_string"].decode()))
        if (
            q.get("client_id") != self.client_id
            or q.get("response_type") != "code"
            or q.get("code_challenge_method") != "S256"
            or not q.get("code_challenge")
            or not q.get("redirect_uri")
            or not q.get("state")
        ):
            await _json(send, 400, {"error": "invalid_request"})
            return
        user = q.get("login_hint") or ""
        if user not in self.users:
            self.set_user(user)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            user,
            q["redirect_uri"],
            q["code_challenge"],
            q.get("nonce"),
            q.get("scope", ""),
            time.time() + 60,
        )
        location = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state'], 'iss': self.issuer})}"
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [(b"location", location.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    def _client(self, scope: dict[str, Any], f: dict[str, str]) -> str | None:
        """The authenticated client's id (client_secret_basic or client_secret_post), or None."""
        client_id, secret = f.get("client_id"), f.get("client_secret")
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        if auth.startswith("Basic "):
            raw = base64.b64decode(auth[6:]).decode()
            client_id, _, secret = raw.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        if client_id != self.client_id:
            return None
        if self.client_secret is None:
            return client_id
        if secret is None or not hmac.compare_digest(secret, self.client_secret):
            return None
        return client_id

    async def _token(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        f = dict(parse_qsl(body.decode()))
        if self._client(scope, f) is None:
            await _json(send, 401, {"error": "invalid_client"})
            return
        grant = f.get("grant_type")
        if grant == "authorization_code":
            code = self._codes.pop(f.get("code", ""), None)
            if (
                code is None
                or code.expires < time.time()
                or code.redirect_uri != f.get("redirect_uri")
                or not hmac.compare_digest(_s256(f.get("code_verifier", "")), code.challenge)
            ):
                await _json(send, 400, {"error": "invalid_grant"})
                return
            await _json(send, 200, self._issue(code.user, code.scope, nonce=code.nonce))
        elif grant == "refresh_token":
            self.calls["refresh"] += 1  # every attempt, granted or not
            if not self.refresh_tokens:
                await _json(send, 400, {"error": "unsupported_grant_type"})
                return
            token = f.get("refresh_token", "")
            found = self._refresh.pop(token, None)
            if found is None or found.expires < time.time() or token in self.revoked:
                await _json(send, 400, {"error": "invalid_grant"})
                return
            self.calls[f"refresh:{found.user}"] += 1
            await _json(send, 200, self._issue(found.user, found.scope, nonce=None))
        else:
            await _json(send, 400, {"error": "unsupported_grant_type"})

    def _issue(self, user: str, scope: str, *, nonce: str | None) -> dict[str, Any]:
        now = time.time()
        access = secrets.token_urlsafe(32)
        ttl = self.user_ttl.get(user, self.access_ttl)
        self._access[access] = (user, now + ttl)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": math.ceil(ttl),
            "scope": scope,
        }
        said = user if user in self.expires_in else None
        if said in self.expires_in:
            if self.expires_in[said] is None:
                del answer["expires_in"]
            else:
                answer["expires_in"] = self.expires_in[said]
        if self.refresh_tokens:
            refresh = secrets.token_urlsafe(32)
            self._refresh[refresh] = _Refresh(user, scope, now + self.refresh_ttl)
            answer["refresh_token"] = refresh
        if "openid" in scope.split():
            answer["id_token"] = self.id_token(user, nonce=nonce)
        return answer

    def id_token(self, user: str, *, nonce: str | None) -> str:
        """An id_token for ``user``, as the next tamper mode (if any) says."""
        mode = self._tamper.popleft() if self._tamper else None
        now = int(time.time())
        claims: dict[str, Any] = {
            **self.users.get(user, {}),
            "iss": self.issuer,
            "sub": user,
            "aud": self.client_id,
            "iat": now,
            "exp": now + int(self.id_token_ttl),
            "auth_time": now,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        key = self.keys[-1]
        if mode == "wrong_aud":
            claims["aud"] = "another-client"
        elif mode == "wrong_iss":
            claims["iss"] = "https://idp.invalid"
        elif mode == "wrong_nonce":
            claims["nonce"] = secrets.token_urlsafe(32)
        elif mode == "no_nonce":
            claims.pop("nonce", None)
        elif mode == "expired":
            claims["iat"], claims["exp"] = now - 3600, now - 1800
        elif mode in ("bad_signature", "unknown_kid"):
            kid = key.kid if mode == "bad_signature" else "unpublished"
            key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256"}, private=True)
        elif mode == "alg_none":
            segments = [
                {"alg": "none", "typ": "JWT"},
                claims,
            ]
            return ".".join(_b64(json.dumps(s).encode()) for s in segments) + "."
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    async def _userinfo(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        if not self.userinfo:
            await _json(send, 404, {"error": "not_found"})
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        user = self.access_token_user(auth.removeprefix("Bearer ").strip())
        if user is None:
            await _json(send, 401, {"error": "invalid_token"}, [(b"www-authenticate", b"Bearer")])
            return
        await _json(send, 200, {**self.users.get(user, {}), "sub": user})

    async def _revoke(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        """RFC 7009: the client authenticates; 200 for a known or unknown token alike."""
        if not self.revocation:
            await _json(send, 404, {"error": "not_found"})
            return
        if self.revoke_faults > 0:
            self.revoke_faults -= 1
            await _json(send, 503, {"error": "temporarily_unavailable"}, [(b"retry-after", b"1")])
            return
        f = dict(parse_qsl(body.decode()))
        client_id = self._client(scope, f)
        if client_id is None:
            await _json(send, 401, {"error": "invalid_client"})
            return
        token = f.get("token", "")
        refresh, access = self._refresh.get(token), self._access.get(token)
        kind, user = (
            ("refresh", refresh.user)
            if refresh is not None
            else ("access", access[0])
            if access is not None
            else ("unknown", None)
        )
        if kind != "unknown":
            self.revoked.add(token)
            self.calls["revoked"] += 1
        self.revocations.append(
            {
                "kind": kind,
                "user": user,
                "token_type_hint": f.get("token_type_hint"),
                "client_id": client_id,
            }
        )
        await _json(send, 200, {})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def _json(
    send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": data})


@asynccontextmanager
async def oidc_provider(**options: Any) -> AsyncIterator[OidcProvider]:
    """A provider listening on 127.0.0.1 for the block (options: OidcProvider's fields)."""
    provider = OidcProvider(**options)
    async with hypercorn_on_a_free_port(provider) as port:
        provider.issuer = f"http://127.0.0.1:{port}{provider.path}"
        yield provider
