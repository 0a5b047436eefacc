"""``steward usage``: usage by user, tier and tool over a window, as a table, JSON or CSV, and
the billing export (``--billing``: tool calls per user, per period and per tool). It reads the
database through the same query layer as the admin API and view (actors.UsageQuery).

    steward usage                                  the last 24 hours by user and tool
    steward usage --by tier --since 7d --csv
    steward usage --user bob --tool search --json
    steward usage --billing --since 2026-11-01 --until 2026-12-01 --csv
    steward usage --quota                          each user's tool calls against their quota
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
from typing import Any

from actors import Period, Store, UsageFilter, parse_when
from server.config import ConfigError, Settings

__all__ = ["add_usage_command", "run_usage"]

GROUPS = {
    "user": ("user_id",),
    "tier": ("tier",),
    "tool": ("method", "name"),
    "method": ("method",),
}


def add_usage_command(sub: Any) -> argparse.ArgumentParser:
    usage: argparse.ArgumentParser = sub.add_parser(
        "usage",
        help="usage by user, tier and tool over a window (a table, --json or --csv), the "
        "billing export (--billing) or quota consumption (--quota)",
    )
    usage.set_defaults(action="report")
    usage.add_argument(
        "--by",
        default="user,tool",
        help="group by any of user, tier, tool, method, comma-separated",
    )
    usage.add_argument(
        "--user",
        help="only this user (an id, or a user's name or email address; default: every user)",
    )
    usage.add_argument("--tier", help="only requests made in this tier (default: every tier)")
    usage.add_argument("--tool", help="only tools/call of this tool (default: every tool)")
    usage.add_argument(
        "--since",
        default="24h",
        help="the window's start: 90m, 24h, 7d before now, or an ISO 8601 date or time (UTC)",
    )
    usage.add_argument("--until", default="now", help="the window's end (the same forms)")
    usage.add_argument("--limit", type=int, default=100, help="at most this many rows")
    usage.add_argument("--csv", action="store_true", help="CSV with a header row")
    kind = usage.add_mutually_exclusive_group()
    kind.add_argument(
        "--billing",
        action="store_true",
        help="tool calls per user, per --period and per tool (from the hourly rollups)",
    )
    kind.add_argument(
        "--quota",
        action="store_true",
        help="each user's tool calls in the current quota window against their tier's quota",
    )
    usage.add_argument(
        "--period", default="month", choices=[p.value for p in Period], help="billing period"
    )
    return usage


def _window(args: argparse.Namespace) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    try:
        since, until = parse_when(args.since, now), parse_when(args.until, now)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if until <= since:
        msg = f"--until ({until.isoformat()}) must come after --since ({since.isoformat()})"
        raise ConfigError(msg)
    return since, until


def _group(text: str) -> tuple[str, ...]:
    keys: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in GROUPS:
            msg = f"--by takes {', '.join(GROUPS)} (comma-separated), got {part!r}"
            raise ConfigError(msg)
        keys += [k for k in GROUPS[part] if k not in keys]
    return tuple(keys)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "no usage in this window"
    shown = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(s[i]) for s in shown)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(s, widths, strict=True)).rstrip() for s in shown]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if value < 1 else f"{value:.1f}"
    return str(value)


# a spreadsheet reads a cell that begins with one of these as a formula: names come from users
# and the identity provider ("=HYPERLINK(...)" as a display name), so such a cell is quoted
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV with a header row; a text cell a spreadsheet would run as a formula is quoted."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue().rstrip("\n")


async def run_usage(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    # the node's own reading of the tiers and of the usage settings
    from server._node import tier_limit, usage_query

    if args.tier is not None and args.tier not in settings.tier_names():
        msg = f"--tier must be one of {', '.join(settings.tier_names())}, got {args.tier!r}"
        raise ConfigError(msg)
    if args.csv and args.json:
        msg = "give --json or --csv, not both"
        raise ConfigError(msg)
    if not 1 <= args.limit <= 1000:
        msg = f"--limit is 1 to 1000, got {args.limit}"
        raise ConfigError(msg)
    query = usage_query(store, settings)
    where = UsageFilter(user=args.user, tier=args.tier, tool=args.tool)
    payload: dict[str, Any]
    if args.quota:
        limits = {t.name: tier_limit(t) for t in settings.tiers if args.tier in (None, t.name)}
        rows = await query.quota_standing(limits, user=args.user, limit=args.limit)
        columns = ["user_id", "tier", "quota", "used", "fraction", "resets_at"]
        payload = {"quota": rows}
    else:
        since, until = _window(args)
        if args.billing:
            rows = await query.billing(since, until, period=Period(args.period), where=where)
            columns = ["user_id", "period", "tier", "tool", "calls", "errors"]
        else:
            by = _group(args.by)
            rows = await query.totals(since, until, by=by, where=where, limit=args.limit)
            columns = [*by, "calls", "errors", "error_rate", "p50_ms", "p99_ms"]
        payload = {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "resolution": str(query.resolution(since)) if not args.billing else "hour",
            "rows": rows,
        }
    if args.json:
        print(json.dumps(payload, default=str, indent=2))
    elif args.csv:
        print(_csv(rows, columns))
    else:
        print(_table(rows, columns))
