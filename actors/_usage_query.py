"""Usage as an operator reads it: the one query layer over the usage rollups (docs/operating.md,
"Usage"). The admin API, ``steward usage`` and the admin view's Usage page all call these.

A window within the minute rollups' retention is read from ``usage_rollups`` (exact to the
minute); an older one from ``usage_hourly`` (its ends rounded out to whole hours, UTC). p50 and
p99 come from the fixed latency buckets (actors/_usage_stats.py), interpolated within a bucket
as Prometheus's histogram_quantile does.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from actors._store import Store
from actors._usage import QUOTA_PERIODS, TierLimit
from actors._usage_stats import BUCKET_COLUMNS, LATENCY_BOUNDS_MS

__all__ = [
    "Period",
    "Resolution",
    "UsageFilter",
    "UsageQuery",
    "latency_quantile",
    "parse_when",
]

UTC = datetime.UTC
MAX_TOP = 1000  # rows of a top-N list at most
MAX_POINTS = 2000  # points of a series at most (per tier)
MAX_BILLING_ROWS = 1_000_000
_RELATIVE = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}


class Resolution(enum.StrEnum):
    """The rollup table a window is read from."""

    MINUTE = "minute"
    HOUR = "hour"


class Period(enum.StrEnum):
    """A billing period (UTC)."""

    DAY = "day"
    MONTH = "month"


def parse_when(text: str, now: datetime.datetime) -> datetime.datetime:
    """``"90m"``, ``"24h"``, ``"7d"`` (that long before ``now``), ``"now"``, or an ISO 8601 date or
    time (UTC unless it says otherwise).

    Raises:
        ValueError: none of these (the message states the forms).
    """
    text = text.strip()
    if text == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - datetime.timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        msg = (
            f"a time is 90m, 24h, 7d (before now), now, or an ISO 8601 date or time such as "
            f"2026-01-31 or 2026-01-31T12:00:00Z; got {text[:64]!r}"
        )
        raise ValueError(msg) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def latency_quantile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q < 1) in ms of the durations counted in ``buckets``; None for no
    durations. Linear within a bucket; in the last, open bucket it is the largest bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            low = 0.0 if i == 0 else LATENCY_BOUNDS_MS[i - 1]
            high = LATENCY_BOUNDS_MS[i]
            return round(low + (high - low) * (rank - seen) / count, 3)
        seen += count
    return LATENCY_BOUNDS_MS[-1]


@attrs.frozen
class UsageFilter:
    """Which rollup rows count: a user id, a tier, a tool name (tools/call rows only), a method."""

    user: str | None = None
    tier: str | None = None
    tool: str | None = None
    method: str | None = None

    def where(self, args: list[Any]) -> str:
        """SQL conditions (``AND …``) with their values appended to ``args``."""
        out = ""
        for column, value in (
            ("user_id", self.user),
            ("tier", self.tier),
            ("name", self.tool),
            ("method", "tools/call" if self.tool is not None else self.method),
        ):
            if value is not None:
                args.append(value)
                out += f" AND r.{column} = ${len(args)}"
        return out


_SUMS = (
    "sum(r.calls)::bigint AS calls, sum(r.errors)::bigint AS errors, "
    "sum(r.duration_ms) AS duration_ms, "
    + ", ".join(f"sum(r.{b})::bigint AS {b}" for b in BUCKET_COLUMNS)
)


def _stats(row: Mapping[str, Any]) -> dict[str, Any]:
    calls = int(row["calls"] or 0)
    errors = int(row["errors"] or 0)
    buckets = [int(row[b] or 0) for b in BUCKET_COLUMNS]
    return {
        "calls": calls,
        "errors": errors,
        "error_rate": round(errors / calls, 4) if calls else 0.0,
        "mean_ms": round(float(row["duration_ms"] or 0.0) / calls, 3) if calls else None,
        "p50_ms": latency_quantile(buckets, 0.5),
        "p99_ms": latency_quantile(buckets, 0.99),
    }


@attrs.frozen
class UsageQuery:
    """Reads the usage rollups of ``store``. ``minute_retention`` is how long minute rollups are
    kept (the janitor's rule): a window starting before it is read from the hourly rollups."""

    store: Store
    minute_retention: datetime.timedelta = datetime.timedelta(hours=48)

    def resolution(
        self, since: datetime.datetime, now: datetime.datetime | None = None
    ) -> Resolution:
        now = now or datetime.datetime.now(UTC)
        # a minute's margin: the sweep may run at any time in the minute
        edge = now - self.minute_retention + datetime.timedelta(minutes=1)
        return Resolution.MINUTE if since >= edge else Resolution.HOUR

    def _source(
        self, since: datetime.datetime, until: datetime.datetime
    ) -> tuple[str, str, datetime.datetime, datetime.datetime, Resolution]:
        """(table, time column, since, until, resolution): hourly windows rounded out to hours."""
        if until <= since:
            msg = f"the window's end ({until.isoformat()}) must come after its start ({since.isoformat()})"
            raise ValueError(msg)
        resolution = self.resolution(since)
        if resolution is Resolution.MINUTE:
            return "usage_rollups", "minute", since, until, resolution
        start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        end = until.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if end < until:
            end += datetime.timedelta(hours=1)
        return "usage_hourly", "hour", start, end, resolution

    async def totals(
        self,
        since: datetime.datetime,
        until: datetime.datetime,
        *,
        by: Sequence[str] = (),
        where: UsageFilter | None = None,
        order: str = "calls",
        limit: int = MAX_TOP,
    ) -> list[dict[str, Any]]:
        """Calls, errors, error rate, mean, p50 and p99 over the window, grouped by any of
        ``user_id``, ``tier``, ``method``, ``name``; ordered by ``calls`` or ``errors`` (most
        first); at most ``limit`` rows (MAX_TOP)."""
        unknown = set(by) - {"user_id", "tier", "method", "name"}
        if unknown:
            msg = f"usage is grouped by user_id, tier, method or name, not {sorted(unknown)}"
            raise ValueError(msg)
        orders = {"calls": "calls DESC", "errors": "errors DESC"}
        if order not in orders:
            msg = f"usage is ordered by {', '.join(orders)}, not {order[:32]!r}"
            raise ValueError(msg)
        table, column, start, end, _ = self._source(since, until)
        args: list[Any] = [start, end]
        conditions = (where or UsageFilter()).where(args)
        keys = ", ".join(f"r.{k}" for k in by)
        group = f" GROUP BY {keys}" if by else ""
        args.append(max(1, min(limit, MAX_TOP)))
        rows = await self.store.fetch(
            f"SELECT {keys + ', ' if by else ''}{_SUMS} FROM {table} r "
            f"WHERE r.{column} >= $1 AND r.{column} < $2{conditions}{group} "
            f"ORDER BY {orders[order]}{', ' + keys if by else ''} LIMIT ${len(args)}",
            *args,
        )
        return [{**{k: r[k] for k in by}, **_stats(r)} for r in rows if r["calls"]]

    async def series(
        self,
        since: datetime.datetime,
        until: datetime.datetime,
        *,
        step: int | None = None,
        where: UsageFilter | None = None,
    ) -> dict[str, Any]:
        """Calls and errors per ``step`` seconds (a minute or more; by default the window split in
        at most 120 steps of whole minutes or hours) and per tier: ``{"step", "start", "points":
        [{"t", "tier", "calls", "errors"}]}``, ``t`` the start of the step (UTC)."""
        table, column, start, end, resolution = self._source(since, until)
        unit = 60 if resolution is Resolution.MINUTE else 3600
        span = (end - start).total_seconds()
        if step is None:
            step = unit * max(1, math.ceil(span / unit / 120))
        if step < unit or step % unit:
            msg = f"a series step over this window is a multiple of {unit} s, got {step}"
            raise ValueError(msg)
        if span / step > MAX_POINTS:
            msg = f"a series has at most {MAX_POINTS} steps: {span:.0f} s in steps of {step} s has more"
            raise ValueError(msg)
        origin = datetime.datetime.fromtimestamp(math.floor(start.timestamp() / step) * step, UTC)
        args: list[Any] = [start, end, origin, float(step)]
        conditions = (where or UsageFilter()).where(args)
        rows = await self.store.fetch(
            f"SELECT $3::timestamptz + make_interval(secs => floor(extract(epoch FROM r.{column} - $3) / $4) * $4) AS t, "
            f"r.tier, sum(r.calls)::bigint AS calls, sum(r.errors)::bigint AS errors "
            f"FROM {table} r WHERE r.{column} >= $1 AND r.{column} < $2{conditions} "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            *args,
        )
        return {
            "resolution": str(resolution),
            "step": step,
            "start": origin.isoformat(),
            "end": end.isoformat(),
            "points": [
                {
                    "t": r["t"].astimezone(UTC).isoformat(),
                    "tier": r["tier"],
                    "calls": int(r["calls"]),
                    "errors": int(r["errors"]),
                }
                for r in rows
            ],
        }

    async def quota_standing(
        self,
        limits: Mapping[str, TierLimit],
        *,
        user: str | None = None,
        limit: int = MAX_TOP,
        now: datetime.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Each user's tool calls in their tier's current quota window against the quota, the
        closest to it first: ``{"user_id", "tier", "quota", "used", "fraction", "resets_at"}``.
        The tier is the user's own (users.tier) and the count is what the quota counts (every
        node's committed calls). Tiers without a quota, or with one per second (counted in a
        node's memory only), are left out."""
        now = now or datetime.datetime.now(UTC)
        out: list[dict[str, Any]] = []
        for tier, tier_limit in limits.items():
            quota = tier_limit.tool_calls
            if quota is None or quota.period < QUOTA_PERIODS["minute"]:
                continue
            window = math.floor(now.timestamp() / quota.period) * quota.period
            start = datetime.datetime.fromtimestamp(window, UTC)
            args: list[Any] = [tier, start, start + datetime.timedelta(seconds=quota.period)]
            only = ""
            if user is not None:
                args.append(user)
                only = f" AND u.user_id = ${len(args)}"
            args.append(max(1, min(limit, MAX_TOP)))
            rows = await self.store.fetch(
                "SELECT u.user_id, sum(r.calls)::bigint AS used FROM users u "
                "JOIN usage_rollups r ON r.user_id = u.user_id AND r.method = 'tools/call' "
                f"AND r.minute >= $2 AND r.minute < $3 WHERE u.tier = $1{only} "
                f"GROUP BY u.user_id ORDER BY used DESC, u.user_id LIMIT ${len(args)}",
                *args,
            )
            resets = start + datetime.timedelta(seconds=quota.period)
            out.extend(
                {
                    "user_id": r["user_id"],
                    "tier": tier,
                    "quota": str(quota),
                    "used": int(r["used"]),
                    "fraction": round(int(r["used"]) / quota.calls, 4),
                    "resets_at": resets.isoformat(),
                }
                for r in rows
            )
        out.sort(key=lambda r: (-r["fraction"], r["user_id"]))
        return out[: max(1, min(limit, MAX_TOP))]

    async def billing(
        self,
        since: datetime.datetime,
        until: datetime.datetime,
        *,
        period: Period = Period.MONTH,
        where: UsageFilter | None = None,
    ) -> list[dict[str, Any]]:
        """Tool calls per user, per period (UTC day or month) and per tool, from the hourly
        rollups (kept for the usage retention): ``{"user_id", "period", "tier", "tool", "calls",
        "errors"}``, by user, period and tool. ``tier`` is the tier the calls were made in."""
        where = attrs.evolve(where or UsageFilter(), method="tools/call")
        start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        end = until.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if end < until:
            end += datetime.timedelta(hours=1)
        if end <= start:
            msg = f"the window's end ({until.isoformat()}) must come after its start ({since.isoformat()})"
            raise ValueError(msg)
        args: list[Any] = [start, end, str(Period(period))]
        conditions = where.where(args)
        args.append(MAX_BILLING_ROWS)
        rows = await self.store.fetch(
            "SELECT r.user_id, date_trunc($3, r.hour AT TIME ZONE 'UTC') AS period, r.tier, "
            "r.name AS tool, sum(r.calls)::bigint AS calls, sum(r.errors)::bigint AS errors "
            f"FROM usage_hourly r WHERE r.hour >= $1 AND r.hour < $2{conditions} "
            f"GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 4, 3 LIMIT ${len(args)}",
            *args,
        )
        return [
            {
                "user_id": r["user_id"],
                "period": r["period"].date().isoformat()
                if period is Period.DAY
                else r["period"].strftime("%Y-%m"),
                "tier": r["tier"],
                "tool": r["tool"],
                "calls": int(r["calls"]),
                "errors": int(r["errors"]),
            }
            for r in rows
        ]

    async def user_tier(self, user_id: str) -> str | None:
        """The user's tier now (users.tier), None for no such user."""
        tier: str | None = await self.store.fetchval(
            "SELECT tier FROM users WHERE user_id = $1", user_id
        )
        return tier
