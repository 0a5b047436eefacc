"""The admin JSON API under ``/admin/api/``, protected by the admin token from the configuration.

GET  /admin/api/tree                      the live supervision trees of this node
GET  /admin/api/sessions?user=…           grants (user sessions) with tier, scopes, status, streams
GET  /admin/api/events?limit=…            recent authentication events
POST /admin/api/users/revoke   {user_id}  revoke a user on every node
POST /admin/api/users/set-tier {user_id, tier}
POST /admin/api/sessions/end   {grant_id} end one user session on every node
"""

from __future__ import annotations

import hmac
import json
import uuid
from typing import TYPE_CHECKING, Any

from actors import StoreUnavailable
from runtime import tree
from server._http import BodyTooLarge, Receive, Scope, Send, header, query, read_body, send_json

if TYPE_CHECKING:
    from server._node import Node

__all__ = ["AdminApi"]

PREFIX = "/admin/api/"


class AdminApi:
    def __init__(self, node: Node, token: str) -> None:
        self.node = node
        self.token = token

    def handles(self, path: str) -> bool:
        return path.startswith(PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = header(scope, b"authorization") or ""
        if not auth.startswith("Bearer ") or not hmac.compare_digest(auth[7:].strip(), self.token):
            await send_json(
                send,
                401,
                {"error": "unauthorized", "error_description": "the admin token is required"},
                [(b"www-authenticate", b'Bearer realm="steward-admin"')],
            )
            return
        route = scope["path"][len(PREFIX) :]
        try:
            body: dict[str, Any] = {}
            if scope["method"] == "POST":
                raw = await read_body(receive, 64 * 1024)
                loaded = json.loads(raw or b"{}")
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
            status, payload = 503, {"error": "temporarily_unavailable"}
        await send_json(send, status, payload)

    async def _route(
        self, method: str, route: str, q: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        node = self.node
        if method == "GET" and route == "tree":
            return 200, {"node_id": node.info.node_id, "trees": [t.to_dict() for t in tree()]}
        if method == "GET" and route == "sessions":
            live = {s.grant_id: len(s.connections()) for s in node.sessions.live()}
            rows = await node.store.fetch(
                "SELECT g.grant_id, g.user_id, g.client_id, g.tier, g.scopes, g.status, g.created_at, g.last_seen_at, "
                "(SELECT count(*) FROM connections c WHERE c.grant_id = g.grant_id AND c.closed_at IS NULL) AS open_streams "
                "FROM grants g WHERE ($1 = '' OR g.user_id ILIKE '%' || $1 || '%') ORDER BY g.last_seen_at DESC LIMIT 200",
                q.get("user", ""),
            )
            return 200, {
                "sessions": [_jsonable({**r, "live_here": r["grant_id"] in live}) for r in rows]
            }
        if method == "GET" and route == "events":
            limit = max(1, min(500, int(q.get("limit", "50"))))
            rows = await node.store.fetch(
                "SELECT occurred_at, kind, user_id, client_id, grant_id, node_id, detail FROM auth_events ORDER BY occurred_at DESC LIMIT $1",
                limit,
            )
            return 200, {"events": [_jsonable(r) for r in rows]}
        if method == "POST" and route == "users/revoke":
            await node.sessions.revoke_user(
                str(body["user_id"]), reason=str(body.get("reason", "revoked by an operator"))
            )
            return 200, {"revoked": body["user_id"]}
        if method == "POST" and route == "users/set-tier":
            tier = str(body["tier"])
            if tier not in node.settings.tier_names():
                return 400, {
                    "error": "invalid_request",
                    "error_description": f"tier must be one of {', '.join(node.settings.tier_names())}",
                }
            await node.sessions.set_tier(str(body["user_id"]), tier)
            return 200, {"user_id": body["user_id"], "tier": tier}
        if method == "POST" and route == "sessions/end":
            await node.sessions.invalidate(
                uuid.UUID(str(body["grant_id"])),
                reason="ended",
                message="an operator ended this session",
            )
            return 200, {"ended": body["grant_id"]}
        return 404, {
            "error": "not_found",
            "error_description": f"no admin endpoint {method} {route}",
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(row, default=str))
    return out
