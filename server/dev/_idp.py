"""The development identity provider: a small, real OAuth 2.1 server with demo users.

Steward serves it on its own port when no upstream IdP is configured, so that a first run needs
no configuration. It has one demo user per tier and fault controls under ``/_control/`` (fail or
slow the next refreshes, revoke a user, change a tier or any claim, shorten token lifetimes, answer
a broken ``expires_in`` or no refresh token) that the tests and
the fault harness drive over HTTP. State lives in memory: it is a stand-in, not a product.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import html
import itertools
import json
import math
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import attrs
import structlog
import trio

from server.http import (
    PAGE_HEAD,
    AddressLimiter,
    BodyTooLarge,
    InvalidInput,
    Receive,
    Scope,
    Send,
    form,
    header,
    lifespan,
    query,
    read_body,
    redirect,
    send_html,
    send_json,
    send_public_file,
)

__all__ = ["DEMO_USERS", "DevIdP"]

log = structlog.get_logger("dev_idp")

DEMO_USERS = {
    "alice": {"email": "alice@example.com", "tier": "free"},
    "bob": {"email": "bob@example.com", "tier": "pro"},
    "carol": {"email": "carol@example.com", "tier": "enterprise"},
}
_MAX_BODY = 64 * 1024
_MAX_GRANTS = 100_000
_MAX_USERS = 100_000
_LISTED = 100  # users the sign-in page lists
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_REDIRECT_URI = re.compile(r"https?://[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+")
_MAX_SLOW = 3600.0  # seconds a "slow" refresh fault may last
_MAX_FAULTS = 10_000  # refresh faults queued at once
_MAX_CLAIMS = 100  # claims set through the controls, per user


@attrs.define
class _Code:
    user: str
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    expires: float


@attrs.define
class _Grant:
    user: str
    client_id: str
    scope: str
    refresh: str
    access: set[str] = attrs.field(factory=set)


def pkce_s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class DevIdP:
    """The development IdP as an ASGI application."""

    def __init__(
        self,
        issuer: str = "http://127.0.0.1",
        *,
        control_secret: str | None = None,
        access_ttl: float = 3600.0,
        limiter: AddressLimiter | None = None,
    ) -> None:
        self.issuer = issuer
        self.control_secret = control_secret or secrets.token_urlsafe(16)
        self.access_ttl = access_ttl
        self.users = {name: dict(info) for name, info in DEMO_USERS.items()}
        self.revoked_users: set[str] = set()
        # user -> claims that replace (or, set to None, remove) the userinfo's own
        self.claims: dict[str, dict[str, Any]] = {}
        self._codes: dict[str, _Code] = {}
        self._grants: dict[str, _Grant] = {}  # by refresh token
        self._access: dict[str, tuple[str, float]] = {}  # access token -> (user, expires)
        self.calls: collections.Counter[str] = collections.Counter()
        self._refresh_faults: collections.deque[str] = (
            collections.deque()
        )  # modes for the next refreshes
        self.slow_seconds = 30.0
        self._revoke_faults = 0  # the next this many /revoke calls answer 503
        # what /revoke received, newest last: the token's kind as this IdP knew it, its user
        self.revocations: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        # how the token endpoint answers, by user (None: everyone else); set by the controls
        # token_ttl (a lifetime) and token_answers (a broken expires_in, no refresh token)
        self.user_ttl: dict[str, float] = {}
        self.expires_in: dict[str | None, float | None] = {}  # None: the field left out
        self.no_refresh_token: set[str | None] = set()
        # rate limits per client address on the sign-in page (server/http/_limits.py); None: none
        self.limiter = limiter

    # -- the fault controls, in process (the same as POST /control/<action>) ----------------------

    def fail_refreshes(self, mode: str, count: int = 1) -> None:
        """The next ``count`` refresh grants fail as ``mode``: 5xx, invalid_grant or slow (hang
        ``slow_seconds``).

        Raises:
            ValueError: an unknown mode or a count out of range.
        """
        self._apply_control("fail_refresh", {"mode": mode, "count": count})

    @property
    def refresh_faults_left(self) -> int:
        """How many of the refresh faults asked for are still to come."""
        return len(self._refresh_faults)

    def issued(self, access_token: str) -> bool:
        """Whether this IdP issued ``access_token`` and still honours it."""
        entry = self._access.get(access_token)
        return entry is not None and entry[1] > time.time()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        self.calls[path] += 1
        try:
            body = await read_body(receive, _MAX_BODY) if method == "POST" else b""
        except BodyTooLarge:
            await _error(send, 413, "invalid_request", f"the body exceeds {_MAX_BODY} bytes")
            return
        route = {
            ("GET", "/.well-known/oauth-authorization-server"): self._metadata,
            ("GET", "/.well-known/openid-configuration"): self._metadata,
            ("GET", "/authorize"): self._authorize,
            ("POST", "/token"): self._token,
            ("GET", "/userinfo"): self._userinfo,
            ("POST", "/revoke"): self._revoke,
        }.get((method, path))
        if (
            route == self._authorize
            and self.limiter is not None
            and not await self.limiter.check("sign_in", scope, send)
        ):
            return
        try:
            if route is not None:
                await route(scope, body, send)
            elif path.startswith("/_control/") and method in ("GET", "POST"):
                await self._control(scope, path.removeprefix("/_control/"), body, send)
            elif not await send_public_file(send, method, path):
                await _error(send, 404, "not_found", f"no endpoint {method} {path}")
        except InvalidInput as exc:  # a NUL character in the query string or form
            await _error(send, 400, "invalid_request", str(exc))

    # -- OAuth -------------------------------------------------------------------------------------

    async def _metadata(self, scope: Scope, body: bytes, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "userinfo_endpoint": f"{self.issuer}/userinfo",
                "revocation_endpoint": f"{self.issuer}/revoke",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
            },
        )

    async def _authorize(self, scope: Scope, body: bytes, send: Send) -> None:
        q = query(scope)
        missing = [
            k for k in ("client_id", "redirect_uri", "code_challenge", "state") if not q.get(k)
        ]
        if missing or q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            await _error(
                send,
                400,
                "invalid_request",
                f"missing or bad: {missing or 'response_type/code_challenge_method'}",
            )
            return
        if not _REDIRECT_URI.fullmatch(q["redirect_uri"]):  # never a Location from a CR or LF
            await _error(
                send, 400, "invalid_request", "redirect_uri must be an http(s) URI (RFC 3986)"
            )
            return
        user = q.get("login_hint")
        if (
            user is not None
            and user not in self.users
            and _NAME.fullmatch(user)
            and len(self.users) < _MAX_USERS
        ):
            # any other well-formed name signs in as a new free-tier user (benchmarks need many)
            self.users[user] = {"email": f"{user}@example.com", "tier": "free"}
        if user not in self.users:
            await send_html(send, 200, self._sign_in_page(q))
            return
        if user in self.revoked_users:
            await redirect(send, q["redirect_uri"], {"error": "access_denied", "state": q["state"]})
            return
        code = secrets.token_urlsafe(24)
        if len(self._codes) > _MAX_GRANTS:
            self._codes.clear()
        self._codes[code] = _Code(
            user,
            q["client_id"],
            q["redirect_uri"],
            q["code_challenge"],
            q.get("scope", ""),
            time.time() + 120,
        )
        await redirect(
            send, q["redirect_uri"], {"code": code, "state": q["state"], "iss": self.issuer}
        )

    def _sign_in_page(self, q: dict[str, str]) -> str:
        """The page that lists the users to sign in as (the first ``_LISTED``)."""
        e = html.escape
        choices = "".join(
            f'<li><a class="choice" href="/authorize?{e(urlencode({**q, "login_hint": name}))}">'
            f'<strong>{e(name)}</strong> <span class="badge tier">{e(str(info["tier"]))}</span> '
            f'<span class="hint">{e(str(info["email"]))}</span></a></li>'
            for name, info in itertools.islice(self.users.items(), _LISTED)
        )
        more = len(self.users) - _LISTED
        rest = (
            f'<p class="hint">… and {more} more: sign in as any of them with login_hint.</p>'
            if more > 0
            else ""
        )
        return f"""<!doctype html><html lang="en"><head>{PAGE_HEAD}<title>Sign in</title></head>
<body class="page"><header><h1>Steward</h1><span>development identity provider</span></header>
<main><section>
<h2>Development sign-in</h2>
<p>Choose a demo user:</p>
<ul class="choices">{choices}</ul>{rest}
<p class="hint">For development only: this identity provider signs anyone in as any user.</p>
</section></main></body></html>"""

    async def _token(self, scope: Scope, body: bytes, send: Send) -> None:
        f = form(body)
        grant_type = f.get("grant_type")
        if grant_type == "authorization_code":
            code = self._codes.pop(f.get("code", ""), None)
            if (
                code is None
                or code.expires < time.time()
                or code.redirect_uri != f.get("redirect_uri")
                or code.client_id != f.get("client_id")
                or not hmac.compare_digest(pkce_s256(f.get("code_verifier", "")), code.challenge)
            ):
                await _error(
                    send, 400, "invalid_grant", "unknown code, or a PKCE or client mismatch"
                )
                return
            grant = _Grant(code.user, code.client_id, code.scope, secrets.token_urlsafe(32))
            self._grants[grant.refresh] = grant
            await send_json(send, 200, self._issue(grant))
        elif grant_type == "refresh_token":
            self.calls["refresh"] += 1
            if self._refresh_faults:
                mode = self._refresh_faults.popleft()
                log.info("dev_idp_refresh_fault", mode=mode)
                if mode == "5xx":
                    await _error(send, 503, "temporarily_unavailable", "a refresh fault (5xx)")
                    return
                if mode == "slow":
                    await trio.sleep(self.slow_seconds)
                if mode == "invalid_grant":
                    await _error(send, 400, "invalid_grant", "a refresh fault (invalid_grant)")
                    return
            found = self._grants.pop(f.get("refresh_token", ""), None)
            if found is None or found.user in self.revoked_users:
                await _error(send, 400, "invalid_grant", "unknown or revoked refresh token")
                return
            self.calls[f"refresh:{found.user}"] += 1  # one key per user (at most _MAX_USERS)
            found.refresh = secrets.token_urlsafe(32)
            self._grants[found.refresh] = found
            await send_json(send, 200, self._issue(found))
        else:
            await _error(send, 400, "unsupported_grant_type", "authorization_code or refresh_token")

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access = secrets.token_urlsafe(32)
        ttl = self.user_ttl.get(grant.user, self.access_ttl)
        self._access[access] = (grant.user, time.time() + ttl)
        if len(self._access) > _MAX_GRANTS:
            now = time.time()
            self._access = {k: v for k, v in self._access.items() if v[1] > now}
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": math.ceil(ttl),
            "refresh_token": grant.refresh,
            "scope": grant.scope,
        }
        said = grant.user if grant.user in self.expires_in else None
        if said in self.expires_in:
            expires_in = self.expires_in[said]
            if expires_in is None:
                del answer["expires_in"]
            else:
                answer["expires_in"] = expires_in
        if grant.user in self.no_refresh_token or None in self.no_refresh_token:
            del answer["refresh_token"]
        return answer

    async def _userinfo(self, scope: Scope, body: bytes, send: Send) -> None:
        auth = header(scope, b"authorization") or ""
        entry = self._access.get(auth.removeprefix("Bearer ").strip())
        if entry is None or entry[1] < time.time() or entry[0] in self.revoked_users:
            await send_json(
                send,
                401,
                {"error": "invalid_token", "error_description": "unknown or expired access token"},
                [(b"www-authenticate", b'Bearer error="invalid_token"')],
            )
            return
        user = entry[0]
        info: dict[str, Any] = {
            "sub": user,
            "email": self.users[user]["email"],
            "tier": self.users[user]["tier"],
        }
        for name, value in self.claims.get(user, {}).items():
            if value is None:
                info.pop(name, None)
            else:
                info[name] = value
        await send_json(send, 200, info)

    async def _revoke(self, scope: Scope, body: bytes, send: Send) -> None:
        """RFC 7009: 200 for a known or unknown token alike; a refresh token's grant goes."""
        if self._revoke_faults > 0:
            self._revoke_faults -= 1
            await _error(send, 503, "temporarily_unavailable", "a revocation fault (5xx)")
            return
        f = form(body)
        token = f.get("token", "")
        grant = self._grants.pop(token, None)
        access = self._access.pop(token, None)
        kind, user = (
            ("refresh", grant.user)
            if grant is not None
            else ("access", access[0])
            if access is not None
            else ("unknown", None)
        )
        self.revocations.append(
            {
                "kind": kind,
                "user": user,
                "token_type_hint": f.get("token_type_hint"),
                "client_id": f.get("client_id"),
            }
        )
        await send_json(send, 200, {})

    # -- fault controls ------------------------------------------------------------------------------

    async def _control(self, scope: Scope, action: str, body: bytes, send: Send) -> None:
        sent = header(scope, b"x-control-secret") or ""
        if not hmac.compare_digest(sent.encode(), self.control_secret.encode()):
            await _error(send, 403, "forbidden", "the X-Control-Secret header is wrong or missing")
            return
        try:
            args = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            await _error(send, 400, "invalid_json", "the body must be a JSON object")
            return
        if not isinstance(args, dict):
            await _error(send, 400, "invalid_json", "the body must be a JSON object")
            return
        try:
            known = self._apply_control(action, args)
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"{action} needs {exc}" if isinstance(exc, KeyError) else str(exc)
            await _error(send, 400, "invalid_request", f"bad arguments to {action}: {detail}"[:300])
            return
        if not known:
            await _error(send, 404, "not_found", f"unknown control {action!r}"[:300])
            return
        await send_json(
            send,
            200,
            {
                "calls": dict(self.calls),
                "pending_refresh_faults": list(self._refresh_faults),
                "pending_revoke_faults": self._revoke_faults,
                "revocations": list(self.revocations),
            },
        )

    def _apply_control(self, action: str, args: dict[str, Any]) -> bool:
        """Apply one fault control; False for an unknown one.

        Raises:
            KeyError, TypeError, ValueError: an argument is missing or malformed.
        """
        if action == "fail_refresh":
            mode = args.get("mode", "5xx")
            if mode not in ("5xx", "invalid_grant", "slow"):
                msg = "mode must be 5xx, invalid_grant or slow"
                raise ValueError(msg)
            seconds = float(args.get("seconds", self.slow_seconds))
            count = int(args.get("count", 1))
            if not (0 <= seconds <= _MAX_SLOW and 0 <= count <= _MAX_FAULTS):
                msg = f"seconds must be 0 to {_MAX_SLOW} and count 0 to {_MAX_FAULTS}"
                raise ValueError(msg)
            self.slow_seconds = seconds
            self._refresh_faults.extend([mode] * count)
        elif action == "fail_revoke":
            count = int(args.get("count", 1))
            if not 0 <= count <= _MAX_FAULTS:
                msg = f"count must be 0 to {_MAX_FAULTS}"
                raise ValueError(msg)
            self._revoke_faults = count
        elif action == "revoke_user":
            user = _user_name(args["user"])
            self.revoked_users.add(user)
            for refresh, grant in list(self._grants.items()):
                if grant.user == user:
                    del self._grants[refresh]
        elif action == "set_tier":
            user = _user_name(args["user"])
            if user not in self.users:
                msg = f"no user {user!r}"
                raise ValueError(msg)
            self.users[user]["tier"] = str(args["tier"])
        elif action == "set_claims":
            # {"user": "alice", "claims": {"tier": null, "realm_access": {"roles": ["pro"]}}}:
            # each claim replaces the userinfo's own; null removes it; "sub" is the user's
            user = _user_name(args["user"])
            claims = args["claims"]
            if user not in self.users:
                msg = f"no user {user!r}"
                raise ValueError(msg)
            if not isinstance(claims, dict) or "sub" in claims:
                msg = "claims must be a JSON object without sub"
                raise ValueError(msg)
            merged = {**self.claims.get(user, {}), **claims}
            if len(merged) > _MAX_CLAIMS:
                msg = f"a user holds at most {_MAX_CLAIMS} claims of the controls"
                raise ValueError(msg)
            self.claims[user] = merged
        elif action == "token_ttl":
            seconds = float(args["seconds"])
            if not 0 < seconds <= 366 * 86400:
                msg = "seconds must be above 0 and at most a year"
                raise ValueError(msg)
            if "user" in args:
                self.user_ttl[_user_name(args["user"])] = seconds
                if len(self.user_ttl) > _MAX_USERS:
                    self.user_ttl.clear()
            else:
                self.access_ttl = seconds
        elif action == "token_answers":
            self._token_answers(args)
        elif action == "reset":
            self._refresh_faults.clear()
            self._revoke_faults = 0
            self.revocations.clear()
            self.revoked_users.clear()
            self.calls.clear()
            self.user_ttl.clear()
            self.expires_in.clear()
            self.no_refresh_token.clear()
        elif action != "stats":
            return False
        return True

    def _token_answers(self, args: dict[str, Any]) -> None:
        """How the token endpoint answers a user (``user``) or everyone: ``expires_in`` a number
        of seconds from minus to plus a year, whatever the token's real lifetime (0 and negative
        included), or null to leave the field out, or "lifetime" to say the lifetime again;
        ``refresh_token`` false to issue none.

        Raises:
            TypeError, ValueError: an argument is malformed.
        """
        who = _user_name(args["user"]) if "user" in args else None
        if who is not None and who not in self.users:
            msg = f"no user {who!r}"
            raise ValueError(msg)
        if "expires_in" in args:
            value = args["expires_in"]
            if value == "lifetime":
                self.expires_in.pop(who, None)
            elif value is None:
                self.expires_in[who] = None
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    msg = 'expires_in must be a number, null or "lifetime"'
                    raise TypeError(msg)
                if not -366 * 86400 <= value <= 366 * 86400:
                    msg = "expires_in must be from minus to plus a year"
                    raise ValueError(msg)
                self.expires_in[who] = value
        if "refresh_token" in args:
            if not isinstance(args["refresh_token"], bool):
                msg = "refresh_token must be true or false"
                raise TypeError(msg)
            if args["refresh_token"]:
                self.no_refresh_token.discard(who)
            else:
                self.no_refresh_token.add(who)


def _user_name(value: object) -> str:
    if not isinstance(value, str):
        msg = "user must be a string"
        raise TypeError(msg)
    return value


async def _error(send: Send, status: int, error: str, description: str) -> None:
    await send_json(send, status, {"error": error, "error_description": description})
