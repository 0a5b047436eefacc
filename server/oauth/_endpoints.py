"""OAuth 2.1 at the edge: the resource server check and the authorization-server facade endpoints.

The flow (MCP-R21..R31): client → ``/authorize`` (validated) → the upstream IdP (Steward's own
PKCE and state) → ``/callback`` (the user is known) → the consent page, per user and client,
unless remembered → ``/consent`` → the client's redirect URI with a one-time code and ``iss`` →
``/token``.
"""

from __future__ import annotations

import collections
import html
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import structlog

from actors import (
    AuthService,
    ConsentNeeded,
    OAuthError,
    Principal,
    StoreUnavailable,
    UpstreamNotReady,
    UpstreamRevoked,
    UpstreamUnavailable,
    UserRevokedError,
    hash_token,
)
from server.http import (
    PAGE_HEAD,
    BodyTooLarge,
    Headers,
    Receive,
    Scope,
    Send,
    form,
    header,
    parse_storable_json,
    query,
    read_body,
    redirect,
    send_html,
    send_json,
    unavailable,
)
from server.oauth._client_metadata import GENERIC_ERROR, MetadataFetcher, MetadataFetchFailed

__all__ = ["AuthError", "OAuthEndpoints", "ResourceServer"]

log = structlog.get_logger("oauth")

CSRF_COOKIE = "__Host-steward_csrf"
_FORM_LIMIT = 64 * 1024


Route = Callable[[Scope, bytes, Send], Awaitable[None]]


class AuthError(Exception):
    """An HTTP authentication failure, to send as is."""

    def __init__(self, status: int, body: dict[str, Any], headers: Headers | None = None) -> None:
        super().__init__(f"{status} {body.get('error')}")
        self.status = status
        self.body = body
        self.headers = headers or []


@attrs.define
class _CacheEntry:
    principal: Principal
    until: float


class DevPrincipal:
    """``dev_no_auth``'s principal, for the resource server built before the development user is
    signed in (server/dev/_sign_in.py): empty until ``signed_in``, then every MCP request runs as
    it, token or not."""

    def __init__(self) -> None:
        self._principal: Principal | None = None

    @property
    def principal(self) -> Principal | None:
        return self._principal

    def signed_in(self, principal: Principal) -> Principal:
        """The development user signed in: requests run as ``principal`` from now on."""
        self._principal = principal
        return principal


class ResourceServer:
    """Checks the bearer token of every MCP request (MCP-R18, R23, R25).

    Verified tokens are cached (bounded, least recently used out first) for at most ``cache_ttl``
    seconds and never past their expiry, so a database outage does not turn into 401s. While the
    database is unreachable an entry older than ``cache_ttl`` still answers, up to the token's
    own expiry (no revocation can be learnt then; the notifier's catch-up purges what was
    revoked once the store is back): verified tokens keep working through an outage of any
    length (docs/failure-model.md).
    """

    def __init__(
        self,
        auth: AuthService,
        *,
        cache_size: int = 10_000,
        cache_ttl: float = 60.0,
        endpoint_resources: dict[str, str] | None = None,
        dev: DevPrincipal | None = None,
    ) -> None:
        self.auth = auth
        self.resource = auth.policy.resource
        self.metadata_url = metadata_url(self.resource)
        # request path -> the resource identifier its challenges name (the deprecated transport's
        # /sse and /messages name /sse, so that a client that starts there finds metadata whose
        # resource is its own URL); any other path names the canonical resource
        self.endpoint_metadata = {
            path: metadata_url(resource) for path, resource in (endpoint_resources or {}).items()
        }
        self.scopes = auth.policy.default_scopes
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self._cache: collections.OrderedDict[bytes, _CacheEntry] = collections.OrderedDict()
        # bumped by every forget: a verification that raced with one is answered, not cached
        self._forgets = 0
        # dev_no_auth: every request runs as its principal once signed in, token or not
        self._dev = dev

    def metadata_url_for(self, path: str | None) -> str:
        """The protected resource metadata URL that a challenge on ``path`` names."""
        return self.endpoint_metadata.get(path or "", self.metadata_url)

    def challenge(
        self,
        error: str | None = None,
        description: str | None = None,
        *,
        status: int = 401,
        path: str | None = None,
    ) -> AuthError:
        parts = [
            f'resource_metadata="{self.metadata_url_for(path)}"',
            f'scope="{" ".join(self.scopes)}"',
        ]
        if error:
            parts.insert(0, f'error="{error}"')
        if description:
            parts.append(f'error_description="{description}"')
        body = {
            "error": error or "invalid_token",
            "error_description": description or "a bearer token is required",
        }
        return AuthError(
            status, body, [(b"www-authenticate", ("Bearer " + ", ".join(parts)).encode())]
        )

    def insufficient_scope(
        self,
        missing: set[str] | frozenset[str],
        have: frozenset[str] = frozenset(),
        *,
        path: str | None = None,
    ) -> AuthError:
        """403 for OAuth scopes the token lacks: the description names only ``missing``; the
        challenge's ``scope`` lists what the token holds and what it lacks (MCP-R25: a client
        that steps up keeps what it was granted)."""
        scopes = " ".join(sorted(set(have) | set(missing)))
        value = (
            f'Bearer error="insufficient_scope", scope="{scopes}", '
            f'resource_metadata="{self.metadata_url_for(path)}"'
        )
        body = {
            "error": "insufficient_scope",
            "error_description": f"this needs the scopes: {' '.join(sorted(missing))}",
        }
        return AuthError(403, body, [(b"www-authenticate", value.encode())])

    async def authenticate(self, scope: Scope) -> Principal:
        """The principal of this request, or AuthError (401, 400, or 503 during an outage)."""
        if self._dev is not None and (dev := self._dev.principal) is not None:
            return dev
        if b"access_token=" in scope.get("query_string", b""):
            raise AuthError(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "access tokens in query strings are refused; use the Authorization header",
                },
            )
        path = scope.get("path")
        auth = header(scope, b"authorization")
        if auth is None:
            raise self.challenge(path=path)
        kind, _, token = auth.partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise self.challenge("invalid_request", "use the Bearer scheme", path=path)
        key = hash_token(token)
        now = time.time()
        entry = self._cache.get(key)
        if entry is not None:
            if entry.until > now:
                self._cache.move_to_end(key)
                return entry.principal
            if entry.principal.expires_at <= now:
                del self._cache[key]
                entry = None
        forgets = self._forgets
        try:
            principal = await self.auth.verify_access(token)
        except StoreUnavailable:
            if entry is not None:  # verified before the outage, not expired: still served
                self._cache.move_to_end(key)
                return entry.principal
            raise AuthError(503, *unavailable()) from None
        if principal is None:
            self._cache.pop(key, None)
            raise self.challenge(
                "invalid_token",
                "the token is invalid, expired, revoked or for another resource",
                path=path,
            )
        if forgets != self._forgets:
            return principal  # read before a revocation this node just heard of: not kept
        self._cache[key] = _CacheEntry(principal, min(now + self.cache_ttl, principal.expires_at))
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return principal

    def forget_grant(self, grant_id: uuid.UUID) -> None:
        self._forgets += 1
        for key in [k for k, e in self._cache.items() if e.principal.grant_id == grant_id]:
            del self._cache[key]

    def forget_user(self, user_id: str) -> None:
        self._forgets += 1
        for key in [k for k, e in self._cache.items() if e.principal.user_id == user_id]:
            del self._cache[key]

    def forget_token(self, token: str) -> None:
        self._forgets += 1
        self._cache.pop(hash_token(token), None)


def _user_name(user_id: str) -> str:
    """The part of a user id (``<issuer>|<subject>``) a person reads: the subject."""
    return user_id.partition("|")[2] or user_id


class OAuthEndpoints:
    """The authorization-server facade and the metadata documents, as one ASGI application."""

    def __init__(
        self,
        auth: AuthService,
        resource_server: ResourceServer,
        *,
        base_url: str,
        metadata: MetadataFetcher | None = None,
    ) -> None:
        self.auth = auth
        self.rs = resource_server
        self.base_url = base_url.rstrip("/")
        self.callback_uri = f"{self.base_url}/callback"
        self.metadata = metadata or MetadataFetcher()
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/.well-known/oauth-protected-resource"): self._resource_metadata,
            # RFC 9728 §3.1: each identifier of the resource has its own document, naming it
            **{
                ("GET", urlsplit(metadata_url(r)).path): self._resource_metadata
                for r in auth.resources
            },
            ("GET", "/.well-known/oauth-authorization-server"): self._server_metadata,
            ("GET", "/.well-known/openid-configuration"): self._server_metadata,
            ("GET", "/authorize"): self._authorize,
            ("GET", "/callback"): self._callback,
            ("POST", "/consent"): self._consent,
            ("POST", "/token"): self._token,
            ("POST", "/revoke"): self._revoke,
            ("POST", "/register"): self._register,
        }
        self.paths = frozenset(path for _, path in self._routes)

    def handles(self, path: str) -> bool:
        return path in self.paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get((scope["method"], scope["path"]))
        if route is None:
            allowed = sorted(m for m, path in self._routes if path == scope["path"])
            refusal = {
                "error": "method_not_allowed",
                "error_description": f"{scope['path']} accepts {' and '.join(allowed)} only",
            }
            await send_json(send, 405, refusal, [(b"allow", ", ".join(allowed).encode())])
            return
        try:
            body = await read_body(receive, _FORM_LIMIT) if scope["method"] == "POST" else b""
            await route(scope, body, send)
        except UserRevokedError as exc:
            await self._refused_page(scope, send, exc)
        except BodyTooLarge:
            await send_json(
                send,
                413,
                {
                    "error": "invalid_request",
                    "error_description": f"the body exceeds {_FORM_LIMIT} bytes",
                },
            )
        except OAuthError as exc:
            await send_json(send, exc.status, exc.body())
        except StoreUnavailable:
            await send_json(send, 503, *unavailable())
        except UpstreamNotReady as exc:
            await send_json(send, 503, *unavailable(str(exc)))
        except UpstreamUnavailable as exc:
            log.warning("upstream_unavailable", error=str(exc))
            await send_json(
                send,
                502,
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the identity provider is unreachable",
                },
                [(b"retry-after", b"5")],
            )
        except UpstreamRevoked:
            await send_json(
                send,
                400,
                {
                    "error": "access_denied",
                    "error_description": "the identity provider refused the sign-in",
                },
            )

    # -- metadata --------------------------------------------------------------------------------

    async def _resource_metadata(self, scope: Scope, body: bytes, send: Send) -> None:
        # the document at /.well-known/oauth-protected-resource/sse names /sse (RFC 9728 §3.3:
        # the resource the client built the URL from); the root one, the canonical resource
        resource = self.auth.policy.resource
        for candidate in self.auth.resources:
            if urlsplit(metadata_url(candidate)).path == scope["path"]:
                resource = candidate
        await send_json(
            send,
            200,
            {
                "resource": resource,
                "authorization_servers": [self.base_url],
                "scopes_supported": list(self.auth.policy.scopes_supported),
                "bearer_methods_supported": ["header"],
                "resource_name": "Steward MCP server",
            },
        )

    async def _server_metadata(self, scope: Scope, body: bytes, send: Send) -> None:
        b = self.base_url
        await send_json(
            send,
            200,
            {
                "issuer": b,
                "authorization_endpoint": f"{b}/authorize",
                "token_endpoint": f"{b}/token",
                "registration_endpoint": f"{b}/register",
                "revocation_endpoint": f"{b}/revoke",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "revocation_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": list(self.auth.policy.scopes_supported),
                "authorization_response_iss_parameter_supported": True,
                "client_id_metadata_document_supported": True,
            },
        )

    # -- the flow ------------------------------------------------------------------------------------

    async def _authorize(self, scope: Scope, body: bytes, send: Send) -> None:
        params = query(scope)
        client_id = params.get("client_id", "")
        if client_id.startswith(("https://", "http://")):
            await self._ensure_metadata_client(client_id)
        location = await self.auth.begin(params, callback_uri=self.callback_uri)
        await redirect(send, location)

    async def _ensure_metadata_client(self, client_id: str) -> None:
        """Client ID metadata documents: the client id is a URL serving the client's metadata,
        fetched under server/oauth/_client_metadata.py's rules. Every failure has the same text."""
        try:
            self.metadata.check_url(client_id)
        except MetadataFetchFailed as exc:
            log.info("client_metadata_refused", reason=exc.reason)
            raise OAuthError("invalid_client", GENERIC_ERROR) from None
        known = await self.auth.client(client_id)
        if (
            known is not None
            and known["source"] == "metadata_document"
            and known["fetched_at"] is not None
            and time.time() - known["fetched_at"].timestamp() < 3600
        ):
            return
        try:
            doc = await self.metadata.fetch(client_id)
            if doc.get("client_id") != client_id:
                raise MetadataFetchFailed("the document's client_id is not its URL")
        except MetadataFetchFailed as exc:
            log.info(
                "client_metadata_refused", host=urlsplit(client_id).hostname, reason=exc.reason
            )
            raise OAuthError("invalid_client", GENERIC_ERROR) from None
        await self.auth.register_client(doc, source="metadata_document", client_id=client_id)

    async def _callback(self, scope: Scope, body: bytes, send: Send) -> None:
        params = query(scope)
        if "error" in params:
            raise OAuthError("access_denied", f"the identity provider answered {params['error']}")
        outcome = await self.auth.callback(
            state=params.get("state", ""),
            code=params.get("code", ""),
            callback_uri=self.callback_uri,
        )
        if isinstance(outcome, str):
            await redirect(send, outcome)
            return
        await self._consent_page(send, outcome)

    async def _refused_page(self, scope: Scope, send: Send, exc: UserRevokedError) -> None:
        """A revoked user's sign-in ends here: a browser gets a page that says so, with the way
        back to the application (which then gets ``error=access_denied``); any other caller the
        OAuth error as JSON."""
        if "text/html" not in (header(scope, b"accept") or ""):
            await send_json(send, exc.status, exc.body())
            return
        e = html.escape
        page = f"""<!doctype html><html lang="en"><head>{PAGE_HEAD}<title>Access revoked</title></head>
<body class="page"><header><h1>Steward</h1></header><main><section>
<h2>Access revoked</h2>
<p>The account <strong title="{e(exc.user_id)}">{e(_user_name(exc.user_id))}</strong> is not
allowed to sign in to this MCP server: its operator revoked its access. Signing in again does not
help; ask the operator to reinstate the account.</p>
<p class="hint">Account id <code>{e(exc.user_id)}</code></p>
<p class="buttons"><a id="return" class="button" href="{e(exc.client_redirect)}">Return to the application</a></p>
<p class="hint">The application is told that access was denied.</p>
</section></main></body></html>"""
        await send_html(send, exc.status, page, [(b"cache-control", b"no-store")])

    async def _consent_page(self, send: Send, c: ConsentNeeded) -> None:
        e = html.escape
        scopes = "".join(f"<li><code>{e(s)}</code></li>" for s in c.scopes)
        page = f"""<!doctype html><html lang="en"><head>{PAGE_HEAD}<title>Allow access?</title></head>
<body class="page"><header><h1>Steward</h1></header><main><section>
<h2>Allow {e(c.client_name)}?</h2>
<p>The application <strong>{e(c.client_name)}</strong> asks to act for
<strong title="{e(c.user_id)}">{e(_user_name(c.user_id))}</strong> on this MCP server with these
scopes:</p><ul class="scopes">{scopes}</ul>
<p class="hint">Client id <code>{e(c.client_id)}</code>. After you answer you will be sent to
<code>{e(c.redirect_uri)}</code>.</p>
<form method="post" action="/consent">
<input type="hidden" name="request" value="{e(c.request_token)}">
<input type="hidden" name="csrf" value="{e(c.csrf_token)}">
<p class="buttons"><button class="primary" name="decision" value="allow">Allow</button>
<button name="decision" value="deny">Deny</button></p>
</form></section></main></body></html>"""
        cookie = (
            f"{CSRF_COOKIE}={c.csrf_token}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"
        )
        await send_html(send, 200, page, [(b"set-cookie", cookie.encode())])

    async def _consent(self, scope: Scope, body: bytes, send: Send) -> None:
        f = form(body)
        cookie = _cookie(header(scope, b"cookie") or "", CSRF_COOKIE)
        if not cookie or cookie != f.get("csrf"):
            raise OAuthError("invalid_request", "the consent form's CSRF check failed", status=403)
        origin = header(scope, b"origin")
        if origin is not None and origin.rstrip("/") != self.base_url:
            raise OAuthError(
                "invalid_request", "the consent form was posted from another origin", status=403
            )
        location = await self.auth.consent(
            request_token=f.get("request", ""),
            csrf_token=cookie,
            approve=f.get("decision") == "allow",
        )
        clear = f"{CSRF_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
        await redirect(send, location, headers=[(b"set-cookie", clear.encode())])

    async def _token(self, scope: Scope, body: bytes, send: Send) -> None:
        f = form(body)
        grant_type = f.get("grant_type")
        if grant_type == "authorization_code":
            tokens = await self.auth.exchange_code(f)
        elif grant_type == "refresh_token":
            tokens = await self.auth.refresh(f)
        else:
            raise OAuthError(
                "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
            )
        await send_json(send, 200, tokens.body(), [(b"pragma", b"no-cache")])

    async def _revoke(self, scope: Scope, body: bytes, send: Send) -> None:
        f = form(body)
        token = f.get("token", "")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        client_id = f.get("client_id", "")
        if not client_id:
            # RFC 7009 §2.1: the server verifies the token was issued to the requesting client;
            # a public client does not authenticate, it names itself
            raise OAuthError(
                "invalid_client",
                "client_id is required: a public client names itself when it revokes a token",
                status=401,
            )
        revoked = await self.auth.revoke_token(token, client_id=client_id)
        self.rs.forget_token(token)
        if revoked is not None:
            self.rs.forget_grant(revoked[1])
        await send_json(send, 200, {})

    async def _register(self, scope: Scope, body: bytes, send: Send) -> None:
        try:
            metadata = parse_storable_json(body)
        except ValueError as exc:
            if str(exc).startswith("the JSON holds"):  # NaN, Infinity, a NUL, a lone surrogate
                raise OAuthError("invalid_client_metadata", str(exc)) from None
            raise OAuthError("invalid_client_metadata", "the body must be a JSON object") from None
        if not isinstance(metadata, dict):
            raise OAuthError("invalid_client_metadata", "the body must be a JSON object")
        await send_json(send, 201, await self.auth.register_client(metadata))


def metadata_url(resource: str) -> str:
    """The protected resource metadata URL of ``resource`` (RFC 9728 §3.1: the well-known path
    inserted between the host and the resource's path)."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"


def _cookie(raw: str, name: str) -> str | None:
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
