"""edges: where a session's edges spend their time at one client (``python -m bench edges``).

One client runs SESSIONS whole sessions (initialize, initialized, 10 x tools/call echo, DELETE)
against ``bench._node`` with the lean generator's connection and reports each request kind's
p50 / p99 (ms). Then, on the node's own PostgreSQL and with the same kind of write, it times one
durable commit (a row update and COMMIT, ``synchronous_commit`` on: the WAL flush) against the
same commit with ``synchronous_commit = off`` (no flush wait), and a bare round trip
(``SELECT 1``): how much of ``initialize`` and ``DELETE`` is the wait for durability. The peer
(both reply modes) runs the same sessions for its edges. Steward only on core 0, generator on
core 1, as everywhere.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import trio

from bench._loadgen import (
    INITIALIZE,
    Connection,
    ProtocolError,
    _rpc,
    base_headers,
    exchange,
)
from bench._servers import Server, Unavailable, generator_pinned, peer, steward

SESSIONS = 300
QUICK_SESSIONS = 60
COMMITS = 300
KINDS = ("initialize", "initialized", "tools/call", "DELETE")


def _pct(values: list[float], p: float) -> float | None:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 3) if s else None


async def _sessions(server: Server, n: int) -> tuple[dict[str, list[float]], int, str | None]:
    """Per request kind, the seconds each took; the errors; the last session id."""
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    errors = 0
    conn = Connection("127.0.0.1", server.port)
    last: str | None = None
    try:
        for _ in range(n):
            base = base_headers(server.token)
            t0 = time.perf_counter()
            reply = await exchange(
                conn, "POST", server.path, base, _rpc(1, "initialize", INITIALIZE), request_id=1
            )
            times["initialize"].append(time.perf_counter() - t0)
            sid = reply.headers.get("mcp-session-id")
            if reply.status != 200 or sid is None:
                errors += 1
                continue
            last = sid
            headers = {**base, "mcp-protocol-version": "2025-11-25", "mcp-session-id": sid}
            t0 = time.perf_counter()
            reply = await exchange(
                conn, "POST", server.path, headers, _rpc(None, "notifications/initialized")
            )
            times["initialized"].append(time.perf_counter() - t0)
            for i in range(10):
                body = _rpc(i + 2, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
                t0 = time.perf_counter()
                reply = await exchange(conn, "POST", server.path, headers, body, request_id=i + 2)
                times["tools/call"].append(time.perf_counter() - t0)
                errors += reply.status != 200
            t0 = time.perf_counter()
            reply = await exchange(conn, "DELETE", server.path, headers)
            times["DELETE"].append(time.perf_counter() - t0)
            errors += reply.status not in (200, 202, 204)
    except (OSError, ProtocolError) as exc:
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        await conn.aclose()
    return times, errors, last


async def _commits(dsn: str, session_id: str, n: int) -> dict[str, float | None]:
    """p50 / p99 ms of a bare round trip, a durable one-row commit and the same commit without
    the flush wait, on the node's PostgreSQL."""
    sql = "UPDATE transport_sessions SET last_seen_at = now() WHERE session_id = $1"
    conn = await asyncpg.connect(dsn)
    out: dict[str, float | None] = {}
    try:
        for name, setting in (
            ("round_trip", None),
            ("commit_durable", "on"),
            ("commit_async", "off"),
        ):
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                if setting is None:
                    await conn.fetchval("SELECT 1")
                else:
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL synchronous_commit = {setting}")
                        await conn.execute(sql, session_id)
                times.append(time.perf_counter() - t0)
            out[f"{name}_p50_ms"] = _pct(times, 0.5)
            out[f"{name}_p99_ms"] = _pct(times, 0.99)
    finally:
        await conn.close()
    return out


def _measure(start: Callable[[], Any], n: int, commits: bool) -> dict[str, Any]:
    try:
        with start() as server:
            trio.run(_sessions, server, 10)  # warm-up
            times, errors, last = trio.run(_sessions, server, n)
            out: dict[str, Any] = {"available": True, "sessions": n, "errors": errors}
            for kind, values in times.items():
                out[f"{kind}_p50_ms"] = _pct(values, 0.5)
                out[f"{kind}_p99_ms"] = _pct(values, 0.99)
            if commits and last is not None:
                out["postgresql"] = asyncio.run(_commits(server.ready["dsn"], last, COMMITS))
            return out
    except Unavailable as exc:
        return {"available": False, "reason": str(exc)}


def run(*, quick: bool = False, sessions: int | None = None) -> dict[str, Any]:
    n = sessions or (QUICK_SESSIONS if quick else SESSIONS)
    with generator_pinned() as core:
        servers = {
            "mcp-sdk-json": _measure(functools.partial(peer, replies="json"), n, False),
            "mcp-sdk": _measure(peer, n, False),
            "steward": _measure(lambda: steward(node_options=[]), n, True),
        }
    figures: dict[str, Any] = {}
    for name, prefix in (
        ("steward", "steward"),
        ("mcp-sdk", "peer"),
        ("mcp-sdk-json", "peer_json"),
    ):
        for key, value in servers[name].items():
            if key.endswith("_ms"):
                figures[f"{prefix}_{key.replace('/', '_')}"] = value
    for key, value in servers["steward"].get("postgresql", {}).items():
        figures[f"postgresql_{key}"] = value
    return {
        "benchmark": "edges",
        "generator_core": core,
        "servers": servers,
        "figures": figures,
        "ratios": {},
    }
