"""usage-size: how large the usage rollups grow (docs/operating.md, "Usage").

    python -m bench.usage_size [--users 10000] [--days 90] [--hours 2] [--tools 2] [--minutes 10]

A throwaway PostgreSQL (or DATABASE_URL's server) gets Steward's schema, then what ``--users``
users leave behind in the rollups kept by default: ``--days`` of hourly rollups (usage_hourly,
usage_retention_days) where each user is active ``--hours`` hours a day calling ``--tools``
tools in each, and 48 hours of minute rollups (usage_rollups, usage_minute_retention_hours)
where each active hour has ``--minutes`` active minutes. Rows are written through the tables'
primary keys and indexes as a running node writes them (one INSERT per table and day). Prints
JSON: rows, total size with indexes, and bytes per row, per table.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import asyncpg
import trio_asyncio

from actors import LATENCY_BOUNDS_MS, migrate

BUCKET_COLUMNS = tuple(f"b{i}" for i in range(len(LATENCY_BOUNDS_MS) + 1))
USER = "'https://idp.example.com|user-' || lpad(u::text, 8, '0')"  # a typical id's length


def _insert(table: str, column: str, day: int, args: argparse.Namespace, minutes: int) -> str:
    buckets = ", ".join(BUCKET_COLUMNS)
    values = ", ".join("(random() * 3)::int" for _ in BUCKET_COLUMNS)
    return (
        f"INSERT INTO {table} (user_id, {column}, method, name, tier, calls, errors, duration_ms, "
        f"{buckets}) SELECT {USER}, date_trunc('day', now()) - interval '{day} days' "
        f"+ make_interval(hours => 8 + h) + make_interval(mins => m), 'tools/call', "
        f"'tool_' || t, (ARRAY['free', 'pro', 'enterprise'])[1 + u % 3], 12, (u % 7 = 0)::int, "
        f"123.4, {values} "
        f"FROM generate_series(1, {args.users}) u, generate_series(0, {args.hours - 1}) h, "
        f"generate_series(0, {minutes - 1}) m, generate_series(1, {args.tools}) t"
    )


async def _measure(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    await migrate(dsn)
    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(dsn)
    run = trio_asyncio.aio_as_trio
    try:
        started = time.monotonic()
        for day in range(args.days):
            await run(conn.execute)(_insert("usage_hourly", "hour", day, args, 1))
        for day in range(2):  # the minute rollups of the last 48 hours
            await run(conn.execute)(_insert("usage_rollups", "minute", day, args, args.minutes))
        await run(conn.execute)("VACUUM ANALYZE usage_hourly")
        await run(conn.execute)("VACUUM ANALYZE usage_rollups")
        out: dict[str, Any] = {
            "users": args.users,
            "days": args.days,
            "active_hours_per_day": args.hours,
            "tools_per_active_hour": args.tools,
            "active_minutes_per_active_hour": args.minutes,
            "seconds_to_write": round(time.monotonic() - started, 1),
        }
        for table in ("usage_hourly", "usage_rollups"):
            row = await run(conn.fetchrow)(
                f"SELECT count(*) AS n, pg_total_relation_size('{table}') AS total, "
                f"pg_relation_size('{table}') AS heap FROM {table}"
            )
            n, total = int(row["n"]), int(row["total"])
            indexes = await run(conn.fetch)(
                "SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size "
                f"FROM pg_index WHERE indrelid = '{table}'::regclass ORDER BY 1"
            )
            out[table] = {
                "rows": n,
                "total_mib": round(total / 2**20, 1),
                "heap_mib": round(int(row["heap"]) / 2**20, 1),
                "index_mib": {i["name"]: round(int(i["size"]) / 2**20, 1) for i in indexes},
                "bytes_per_row": round(total / n, 1) if n else None,
            }
        return out
    finally:
        await run(conn.close)()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_size")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--hours", type=int, default=2, help="active hours per user and day")
    parser.add_argument("--tools", type=int, default=2, help="tools called per active hour")
    parser.add_argument("--minutes", type=int, default=10, help="active minutes per active hour")
    args = parser.parse_args(argv)
    from tests.harness._pg import create_database, start_cluster, stop_cluster

    session = start_cluster()
    try:
        dsn = session.cluster.dsn(create_database(session.cluster))
        result = trio_asyncio.run(_measure, dsn, args)
    finally:
        stop_cluster(session)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
