"""The admin view at ``/admin`` and the JSON API under ``/admin/api/``, both protected by the admin
token from the configuration.

GET  /admin                               the admin view (a sign-in form without a valid cookie)
POST /admin/login   (form: token)         sets the admin cookie: HttpOnly, SameSite=Strict, 8 hours
POST /admin/logout                        clears it
GET  /admin/static/admin.js|admin.css     the view's script and style (no build step, no CDN)
GET  /admin/api/tree                      the live supervision tree of this node, with the store
GET  /admin/api/sessions?user=…           grants (user sessions) with tier, scopes, status, streams
GET  /admin/api/events?limit=…            recent authentication events
GET  /admin/api/usage[/user|/billing]?…   usage by user, tier, tool and window (server/ops/_usage_api.py)
POST /admin/api/users/revoke   {user_id}  revoke a user on every node
POST /admin/api/users/set-tier {user_id, tier}     an override: it holds until cleared
POST /admin/api/users/clear-tier {user_id}         the identity provider's tier applies again
POST /admin/api/users/reinstate {user_id} lift a user's revocation (they may sign in again)
POST /admin/api/sessions/end   {grant_id} end one user session on every node

The API takes the token as ``Authorization: Bearer`` (scripts) or the admin cookie (the view).
The cookie holds no token: an expiry and its HMAC under the admin token, so every node sharing
the token accepts it. A POST made with the cookie must also carry ``X-CSRF-Token`` (an HMAC of
the cookie, embedded in the page) and, when the browser sends one, a same-origin ``Origin``.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import html
import json
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import structlog

from actors import (
    OPERATOR_ENDED,
    OPERATOR_REINSTATED,
    OPERATOR_REVOKED,
    GrantStatus,
    SessionManager,
    Store,
    StoreUnavailable,
    UserChange,
    list_grants,
    recent_auth_events,
    user_names,
)
from runtime import TreeNode
from server.http import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    form,
    header,
    parse_storable_json,
    query,
    read_body,
    send_json,
    send_response,
    unavailable,
)
from server.ops._usage_api import UsageApi

__all__ = ["AdminApi"]

log = structlog.get_logger("admin")

PREFIX = "/admin/api/"
VIEW = "/admin"
COOKIE = "steward_admin"
COOKIE_TTL = 8 * 3600  # seconds an admin sign-in lasts
SESSIONS_SHOWN = 200  # rows of /admin/api/sessions
# wrong admin tokens (bearer or sign-in form) one client address may present in GUESS_WINDOW
# seconds; past them, a token from that address is refused (429) before it is compared
ADMIN_GUESSES = 10
GUESS_WINDOW = 60.0
GUESS_ADDRESSES = 10_000  # addresses remembered, least recently wrong out
TREE_CHILDREN = 200  # children shown per supervisor in /admin/api/tree (the rest are counted)
STATIC_DIR = Path(__file__).parent.parent / "admin_static"
STATIC_TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}
# nothing inline, nothing from elsewhere: the page's script and style come from this server
VIEW_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" would make form posts send Origin: null
]


def _static(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


class AdminApi:
    """The admin view and API of one node: it reads and changes what ``store`` and ``sessions``
    hold, and shows the supervision trees that ``trees`` returns."""

    def __init__(
        self,
        token: str,
        *,
        node_id: str,
        base_url: str,
        store: Store,
        sessions: SessionManager,
        tier_names: Sequence[str],
        trees: Callable[[], Sequence[TreeNode]],
        usage: UsageApi | None = None,
    ) -> None:
        self.token = token
        self.node_id = node_id
        self.base_url = base_url
        self.store = store
        self.sessions = sessions
        self.tier_names = tuple(tier_names)
        self.trees = trees
        self.usage = usage
        self.secure = base_url.startswith("https://")
        self.static = {name: _static(name) for name in ("admin.js", "admin.css", "usage.js")}
        self.page = _static("admin.html").decode()
        self.login_page = _static("login.html").decode()
        self.guesses = _Guesses()

    def handles(self, path: str) -> bool:
        return path == VIEW or path.startswith(VIEW + "/")

    # -- the cookie and the CSRF token ------------------------------------------------------------

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self.token.encode(), f"{purpose}|{value}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def _new_cookie(self) -> str:
        expires = str(int(time.time()) + COOKIE_TTL)
        return f"{expires}.{self._sign('admin-session', expires)}"

    def _cookie(self, scope: Scope) -> str | None:
        """The request's admin cookie if it is valid and unexpired."""
        for part in (header(scope, b"cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name != COOKIE:
                continue
            expires, _, mac = value.partition(".")
            if (
                expires.isascii()
                and expires.isdigit()
                and int(expires) > time.time()
                and _same_secret(mac, self._sign("admin-session", expires))
            ):
                return value
        return None

    def _csrf(self, cookie: str) -> str:
        return self._sign("admin-csrf", cookie)

    def _same_origin(self, scope: Scope) -> bool:
        """No Origin (not a browser's cross-site request), or this server's own."""
        origin = header(scope, b"origin")
        if origin is None:
            return True
        base = urlsplit(self.base_url)
        own = {f"{base.scheme}://{base.netloc}"}
        host = header(scope, b"host")
        if host:
            own.add(f"{'https' if self.secure else 'http'}://{host}")
        return origin in own

    def _bearer_ok(self, scope: Scope) -> bool:
        auth = header(scope, b"authorization") or ""
        return auth.startswith("Bearer ") and _same_secret(auth[7:].strip(), self.token)

    # -- requests ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path.startswith(PREFIX):
            await self._api(scope, receive, send)
        elif path == VIEW and method == "GET":
            cookie = self._cookie(scope)
            if cookie is None:
                await self._send_login(send, 200, "")
            else:
                await self._send_page(send, cookie)
        elif path == VIEW + "/login" and method == "POST":
            await self._login(scope, receive, send)
        elif path == VIEW + "/logout" and method == "POST":
            await self._logout(scope, send)
        elif path.startswith(VIEW + "/static/") and method == "GET":
            body = self.static.get(path.rsplit("/", 1)[-1])
            if body is None:
                await send_json(
                    send,
                    404,
                    {"error": "not_found", "error_description": f"no admin file {path}"},
                )
            else:
                ctype = STATIC_TYPES[Path(path).suffix]
                await send_response(send, 200, body, ctype)
        else:
            await send_json(
                send,
                404,
                {"error": "not_found", "error_description": f"no admin page {method} {path}"},
            )

    async def _send_page(self, send: Send, cookie: str) -> None:
        page = self.page.replace("{csrf}", html.escape(self._csrf(cookie))).replace(
            "{node_id}", html.escape(self.node_id)
        )
        await send_response(send, 200, page.encode(), b"text/html; charset=utf-8", VIEW_HEADERS)

    async def _send_login(self, send: Send, status: int, error: str) -> None:
        page = self.login_page.replace("{error}", html.escape(error))
        await send_response(send, status, page.encode(), b"text/html; charset=utf-8", VIEW_HEADERS)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._same_origin(scope):
            log.warning("admin_sign_in_refused", reason="cross-origin")
            await self._send_login(send, 403, "Sign-in from another site refused.")
            return
        try:
            fields = form(await read_body(receive, 8 * 1024))
        except BodyTooLarge:
            await self._send_login(send, 413, "The form is too large.")
            return
        address = _peer(scope)
        wait = self.guesses.wait(address)
        if wait:
            log.warning("admin_sign_in_refused", reason="too many wrong tokens")
            await self._send_login(
                send, 429, f"Too many wrong tokens from this address: wait {wait:.0f} s."
            )
            return
        if not _same_secret(fields.get("token", "").strip(), self.token):
            self.guesses.wrong(address)
            log.warning("admin_sign_in_refused", reason="wrong token")
            await self._send_login(send, 401, "That is not the admin token.")
            return
        log.info("admin_signed_in")
        secure = "; Secure" if self.secure else ""
        cookie = (
            f"{COOKIE}={self._new_cookie()}; Path={VIEW}; Max-Age={COOKIE_TTL}; "
            f"HttpOnly; SameSite=Strict{secure}"
        )
        await send_response(
            send,
            303,
            b"",
            b"text/plain",
            [(b"location", VIEW.encode()), (b"set-cookie", cookie.encode())],
        )

    async def _logout(self, scope: Scope, send: Send) -> None:
        cookie = self._cookie(scope)
        if cookie is None or not self._csrf_ok(scope, cookie):
            await send_json(send, 403, {"error": "forbidden", "error_description": "CSRF check"})
            return
        expired = f"{COOKIE}=; Path={VIEW}; Max-Age=0; HttpOnly; SameSite=Strict"
        await send_json(send, 200, {"signed_out": True}, [(b"set-cookie", expired.encode())])

    def _csrf_ok(self, scope: Scope, cookie: str) -> bool:
        sent = header(scope, b"x-csrf-token") or ""
        return self._same_origin(scope) and _same_secret(sent, self._csrf(cookie))

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (header(scope, b"authorization") or "").startswith("Bearer "):
            address = _peer(scope)
            wait = self.guesses.wait(address)
            if wait:  # refused before the token is compared: guessing it is bounded
                await send_json(
                    send,
                    429,
                    {
                        "error": "too_many_requests",
                        "error_description": f"more than {ADMIN_GUESSES} wrong admin tokens "
                        f"from this address in {GUESS_WINDOW:.0f} s",
                    },
                    [(b"retry-after", str(max(1, round(wait))).encode())],
                )
                return
            if not self._bearer_ok(scope):
                self.guesses.wrong(address)
        if not self._bearer_ok(scope):
            cookie = self._cookie(scope)
            if cookie is None:
                await send_json(
                    send,
                    401,
                    {"error": "unauthorized", "error_description": "the admin token is required"},
                    [(b"www-authenticate", b'Bearer realm="steward-admin"')],
                )
                return
            if scope["method"] != "GET" and not self._csrf_ok(scope, cookie):
                await send_json(
                    send,
                    403,
                    {
                        "error": "forbidden",
                        "error_description": "a same-origin X-CSRF-Token is required",
                    },
                )
                return
        route = scope["path"][len(PREFIX) :]
        try:
            body: dict[str, Any] = {}
            if scope["method"] == "POST":
                raw = await read_body(receive, 64 * 1024)
                loaded = parse_storable_json(raw or b"{}")
                if not isinstance(loaded, dict):
                    raise ValueError
                body = loaded
            status, payload = await self._route(scope["method"], route, query(scope), body)
        except (ValueError, KeyError):
            status, payload = (
                400,
                {
                    "error": "invalid_request",
                    "error_description": "a JSON object with the documented fields is required",
                },
            )
        except BodyTooLarge:
            status, payload = (
                413,
                {"error": "invalid_request", "error_description": "body too large"},
            )
        except StoreUnavailable:
            await send_json(send, 503, *unavailable())
            return
        await send_json(send, status, payload)

    async def _route(
        self, method: str, route: str, q: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        if method == "GET" and self.usage is not None and route.startswith("usage"):
            return await self.usage.route(route, q)
        if method == "GET" and route == "tree":
            return 200, {
                "node_id": self.node_id,
                "trees": [_bounded(t.to_dict()) for t in self.trees()],
                "store": attrs.asdict(self.store.statistics()),
            }
        if method == "GET" and route == "sessions":
            live = {s.grant_id: len(s.connections()) for s in self.sessions.live()}
            rows = await list_grants(self.store, user=q.get("user", ""), limit=SESSIONS_SHOWN)
            names = await user_names(self.store, (r["user_id"] for r in rows))
            return 200, {
                "sessions": [
                    _jsonable(
                        {
                            **r,
                            "user_name": names.get(r["user_id"]),
                            "live_here": r["grant_id"] in live,
                        }
                    )
                    for r in rows
                ]
            }
        if method == "GET" and route == "events":
            limit = max(1, min(500, int(q.get("limit", "50"))))
            rows = await recent_auth_events(self.store, limit)
            names = await user_names(self.store, (r["user_id"] for r in rows))
            return 200, {
                "events": [_jsonable({**r, "user_name": names.get(r["user_id"])}) for r in rows]
            }
        if method == "POST" and route == "users/revoke":
            await self.sessions.revoke_user(
                str(body["user_id"]), reason=str(body.get("reason", OPERATOR_REVOKED))
            )
            return 200, {"revoked": body["user_id"]}
        if method == "POST" and route == "users/reinstate":
            user_id = str(body["user_id"])
            reinstated = await self.sessions.reinstate_user(
                user_id, reason=str(body.get("reason", OPERATOR_REINSTATED))
            )
            if reinstated is UserChange.UNKNOWN_USER:
                return 404, {"error": "not_found", "error_description": f"no user {user_id!r}"}
            return 200, {"user_id": user_id, "reinstated": reinstated is UserChange.CHANGED}
        if method == "POST" and route in ("users/set-tier", "users/clear-tier"):
            override = str(body["tier"]) if route == "users/set-tier" else None
            if override is not None and override not in self.tier_names:
                return 400, {
                    "error": "invalid_request",
                    "error_description": f"tier must be one of {', '.join(self.tier_names)}, got {override[:64]!r}",
                }
            change = await self.sessions.set_tier(str(body["user_id"]), override)
            if change is None:
                return 404, {
                    "error": "not_found",
                    "error_description": f"no user {str(body['user_id'])[:200]!r}",
                }
            return 200, {"user_id": body["user_id"], "tier": change.after, "override": override}
        if method == "POST" and route == "sessions/end":
            await self.sessions.invalidate(
                uuid.UUID(str(body["grant_id"])),
                reason=GrantStatus.ENDED,
                message=OPERATOR_ENDED,
            )
            return 200, {"ended": body["grant_id"]}
        return 404, {
            "error": "not_found",
            "error_description": f"no admin endpoint {method} {route}",
        }


class _Guesses:
    """Wrong admin tokens by client address (the TCP peer), in fixed windows; bounded."""

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may present a token again (0: it may now)."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        started, count = entry
        left = GUESS_WINDOW - (time.monotonic() - started)
        if left <= 0:
            del self._seen[address]
            return 0.0
        return left if count >= ADMIN_GUESSES else 0.0

    def wrong(self, address: str) -> None:
        now = time.monotonic()
        started, count = self._seen.pop(address, (now, 0))
        if now - started >= GUESS_WINDOW:
            started, count = now, 0
        self._seen[address] = (started, count + 1)
        while len(self._seen) > GUESS_ADDRESSES:
            self._seen.popitem(last=False)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _same_secret(given: str, expected: str) -> bool:
    """A constant-time comparison that takes any text: ``hmac.compare_digest`` raises TypeError
    for a str holding non-ASCII characters (as a header or form field may)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _bounded(node: dict[str, Any], limit: int = TREE_CHILDREN) -> dict[str, Any]:
    """The tree with at most ``limit`` children per supervisor; ``more`` counts the rest."""
    children = node["children"]
    out = {**node, "children": [_bounded(c, limit) for c in children[:limit]]}
    if len(children) > limit:
        out["more"] = len(children) - limit
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(row, default=str))
    return out
