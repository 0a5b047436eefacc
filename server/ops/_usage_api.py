"""Usage in the admin API: the ``/admin/api/usage…`` routes (docs/operating.md, "Usage"). Every
figure comes from the one query layer, ``actors.UsageQuery``; ``steward usage``
(server/cli/_usage.py) reads the same.

GET /admin/api/usage?since=1h&until=now&user=&tier=&tool=&method=&top=10&step=
    calls and errors per step and tier, the totals, the top tools, the top users and the users
    closest to their quota
GET /admin/api/usage/user?user=…&since=24h
    one user's usage: totals, tools, series and quota standing
GET /admin/api/usage/billing?since=…&until=…&period=month|day
    tool calls per user, per period and per tool
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

from actors import (
    AmbiguousUser,
    Period,
    TierLimit,
    UnknownUser,
    UsageFilter,
    UsageQuery,
    parse_when,
    resolve_user,
    user_names,
)

__all__ = ["BadUsageRequest", "UsageApi"]

TOP = 10  # rows of each top list unless asked
# an MCP method name, as a usage request may be narrowed to
METHOD = re.compile(r"^[A-Za-z]+(/[A-Za-z]+){0,3}$")
MAX_TOP = 100


class BadUsageRequest(ValueError):
    """A usage request's parameter is wrong (the message states the rule and the value)."""


def _top(q: Mapping[str, str]) -> int:
    text = q.get("top", str(TOP))
    if not text.isdigit() or not 1 <= int(text) <= MAX_TOP:
        msg = f"top is a whole number from 1 to {MAX_TOP}, got {text[:32]!r}"
        raise BadUsageRequest(msg)
    return int(text)


def _window(
    q: Mapping[str, str], default_since: str = "1h"
) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    try:
        since = parse_when(q.get("since") or default_since, now)
        until = parse_when(q.get("until") or "now", now)
    except ValueError as exc:
        raise BadUsageRequest(str(exc)) from None
    if until <= since:
        msg = f"until ({until.isoformat()}) must come after since ({since.isoformat()})"
        raise BadUsageRequest(msg)
    return since, until


class UsageApi:
    """The admin API's usage routes over ``query`` and the tiers' ``limits``."""

    def __init__(self, query: UsageQuery, limits: Mapping[str, TierLimit]) -> None:
        self.query = query
        self.limits = dict(limits)

    async def route(self, route: str, q: Mapping[str, str]) -> tuple[int, Any]:
        try:
            if route == "usage":
                return 200, await self.overview(q)
            if route == "usage/user":
                return await self.user(q)
            if route == "usage/billing":
                return 200, await self.billing(q)
        except (BadUsageRequest, ValueError) as exc:
            return 400, {"error": "invalid_request", "error_description": str(exc)}
        return 404, {"error": "not_found", "error_description": f"no usage endpoint {route}"}

    def _filter(self, q: Mapping[str, str], user: str | None = None) -> UsageFilter:
        tier = q.get("tier") or None
        if tier is not None and tier not in self.limits:
            msg = f"tier must be one of {', '.join(self.limits)}, got {tier[:64]!r}"
            raise BadUsageRequest(msg)
        method = q.get("method") or None
        if method is not None and (len(method) > 64 or not METHOD.match(method)):
            msg = f"method is an MCP method name such as tools/call, got {method[:64]!r}"
            raise BadUsageRequest(msg)
        return UsageFilter(user=user, tier=tier, tool=q.get("tool") or None, method=method)

    async def _user_id(self, given: str) -> str:
        try:
            return await resolve_user(self.query.store, given)
        except (UnknownUser, AmbiguousUser) as exc:
            raise LookupError(str(exc)) from None

    async def overview(self, q: Mapping[str, str]) -> dict[str, Any]:
        since, until = _window(q)
        top = _top(q)
        user = q.get("user") or None
        if user is not None:
            try:
                user = await self._user_id(user)
            except LookupError as exc:
                raise BadUsageRequest(str(exc)) from None
        where = self._filter(q, user)
        step = q.get("step") or None
        if step is not None and not step.isdigit():
            msg = f"step is whole seconds, got {step[:32]!r}"
            raise BadUsageRequest(msg)
        series = await self.query.series(
            since, until, step=int(step) if step else None, where=where
        )
        totals = await self.query.totals(since, until, where=where)
        tools = await self.query.totals(
            since,
            until,
            by=("name",),
            where=UsageFilter(
                user=where.user, tier=where.tier, tool=where.tool, method="tools/call"
            ),
            limit=top,
        )
        users = await self.query.totals(since, until, by=("user_id",), where=where, limit=top)
        limits = {t: v for t, v in self.limits.items() if where.tier in (None, t)}
        near = await self.query.quota_standing(limits, user=where.user, limit=top)
        names = await user_names(
            self.query.store, [u["user_id"] for u in users] + [n["user_id"] for n in near]
        )
        for row in (*users, *near):
            row["user_name"] = names.get(row["user_id"], row["user_id"])
        return {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "tiers": list(self.limits),
            "series": series,
            "totals": totals[0] if totals else {"calls": 0, "errors": 0, "error_rate": 0.0},
            "tools": [{"tool": t.pop("name"), **t} for t in tools],
            "users": users,
            "near_quota": near,
        }

    async def user(self, q: Mapping[str, str]) -> tuple[int, Any]:
        given = q.get("user", "")
        if not given:
            raise BadUsageRequest("user is required (an id, or a user's name or email address)")
        try:
            user_id = await self._user_id(given)
        except LookupError as exc:
            return 404, {"error": "not_found", "error_description": str(exc)}
        since, until = _window(q, "24h")
        where = UsageFilter(user=user_id)
        totals = await self.query.totals(since, until, where=where)
        tools = await self.query.totals(
            since, until, by=("method", "name"), where=where, limit=MAX_TOP
        )
        names = await user_names(self.query.store, [user_id])
        return 200, {
            "user_id": user_id,
            "user_name": names.get(user_id, user_id),
            "tier": await self.query.user_tier(user_id),
            "since": since.isoformat(),
            "until": until.isoformat(),
            "totals": totals[0] if totals else {"calls": 0, "errors": 0, "error_rate": 0.0},
            "tools": tools,
            "series": await self.query.series(since, until, where=where),
            "quota": await self.query.quota_standing(self.limits, user=user_id),
        }

    async def billing(self, q: Mapping[str, str]) -> dict[str, Any]:
        since, until = _window(q, "30d")
        period_text = q.get("period", "month")
        try:
            period = Period(period_text)
        except ValueError:
            msg = f"period is day or month, got {period_text[:32]!r}"
            raise BadUsageRequest(msg) from None
        rows = await self.query.billing(since, until, period=period, where=self._filter(q))
        return {"since": since.isoformat(), "until": until.isoformat(), "rows": rows}
