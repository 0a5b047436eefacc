"""idle-streams (formerly memory-streams): the server's resident memory per idle SSE stream.

For each level N (cumulative), sessions are created until there are N, the server's RSS is read
from /proc/PID/status, then one idle ``GET`` SSE stream is opened on each new session (its own
connection, held open and never read) and the RSS is read again. Reported per level: kB per
stream (the second step over its streams) and kB per session plus stream (over the baseline).
Only the server's own process is measured (Steward's embedded PostgreSQL is a separate process
and holds no per-stream state). Steward bounds the streams of one user session, so its sessions
are spread over users, STREAMS_PER_USER each; the peer's sessions carry no token.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Callable
from typing import Any

import trio

from bench._loadgen import ERROR_KINDS, Body, Connection, ProtocolError, open_session
from bench._servers import (
    SERVER_CORE,
    Server,
    Unavailable,
    generator_pinned,
    obtain_tokens,
    peer,
    rss_kb,
    steward,
)

LEVELS = (1000, 10_000)
QUICK_LEVELS = (100, 200)
FDS_PER_STREAM = 2  # the generator's socket and the server's (the servers inherit the limit)
OPENERS = 16  # sessions and streams being opened at once
SETTLE = 1.0  # seconds between the last open and reading the RSS
STREAMS_PER_USER = 50  # below Steward's max_connections (64 streams per user session)


async def _sessions(server: Server, tokens: list[str | None]) -> list[dict[str, str]]:
    """One new transport session per entry of ``tokens``, signed with it."""
    out: list[dict[str, str]] = []
    todo = iter(tokens)

    async def opener() -> None:
        conn = Connection("127.0.0.1", server.port)
        try:
            for token in todo:
                out.append(await open_session(conn, server.path, token))
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(OPENERS):
            nursery.start_soon(opener)
    return out


async def _tokens(server: Server, n: int) -> list[str | None]:
    """A token for each of ``n`` sessions: Steward's are spread over users, STREAMS_PER_USER
    each (it bounds the streams of one user session); the peer needs none."""
    if server.token is None:
        return [None] * n
    users = -(-n // STREAMS_PER_USER)
    others = await obtain_tokens(
        server.ready, [f"streams{i}" for i in range(1, users)], concurrency=OPENERS
    )
    tokens: list[str | None] = [server.token, *others]
    return [tokens[i // STREAMS_PER_USER] for i in range(n)]


async def _open_streams(
    server: Server, sessions: list[dict[str, str]], held: list[Connection]
) -> dict[str, int]:
    """Open one GET stream per session, appending each open one to ``held``; the failures by
    kind."""
    failures: dict[str, int] = {}
    limiter = trio.CapacityLimiter(OPENERS)

    def fail(kind: str) -> None:
        if kind in failures or len(failures) < ERROR_KINDS:
            failures[kind] = failures.get(kind, 0) + 1
        else:
            failures["other"] = failures.get("other", 0) + 1

    async def one(headers: dict[str, str]) -> None:
        get = {k: v for k, v in headers.items() if k != "content-type"}
        get["accept"] = "text/event-stream"
        conn = Connection("127.0.0.1", server.port)
        async with limiter:
            try:
                await conn.send_request("GET", server.path, get)
                status, head = await conn.read_head()
            except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                fail(type(exc).__name__)
                await conn.aclose()
                return
        if status == 200 and head.get("content-type", "").startswith("text/event-stream"):
            held.append(conn)
        else:
            body = await Body(conn, head).next() if "content-length" in head else b""
            fail(f"{status} {(body or b'')[:100]!r}")
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for headers in sessions:
            nursery.start_soon(one, headers)
    return failures


async def _measure_async(server: Server, levels: tuple[int, ...], settle: float) -> dict[str, Any]:
    held: list[Connection] = []
    await trio.sleep(settle)
    baseline = rss_kb(server.pid)
    points = []
    previous = 0
    tokens = await _tokens(server, max(levels))
    try:
        for level in levels:
            added = level - previous
            sessions = await _sessions(server, tokens[previous:level])
            await trio.sleep(settle)
            rss_sessions = rss_kb(server.pid)
            failures = await _open_streams(server, sessions, held)
            await trio.sleep(settle)
            rss_streams = rss_kb(server.pid)
            opened = added - sum(failures.values())
            points.append(
                {
                    "level": level,
                    "streams": len(held),
                    "stream_failures": sum(failures.values()),
                    "failure_kinds": failures,
                    "rss_kb_before_streams": rss_sessions,
                    "rss_kb": rss_streams,
                    "kb_per_stream": round((rss_streams - rss_sessions) / opened, 1)
                    if opened
                    else None,
                    "kb_per_session_and_stream": round((rss_streams - baseline) / len(held), 1)
                    if held
                    else None,
                }
            )
            previous = level
    finally:
        for conn in held:
            await conn.aclose()
    return {"available": True, "baseline_rss_kb": baseline, "points": points}


def _measure(
    start: Callable[[], contextlib.AbstractContextManager[Server]],
    levels: tuple[int, ...],
    settle: float,
) -> dict[str, Any]:
    try:
        with start() as server:
            started = time.monotonic()
            result = trio.run(_measure_async, server, levels, settle)
            result["seconds"] = round(time.monotonic() - started, 1)
            return result
    except Unavailable as exc:
        return {"available": False, "reason": str(exc)}


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (inherited by the servers it starts) towards
    ``needed``, up to the hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


PREFIXES = {"steward": "steward", "mcp-sdk": "peer", "mcp-sdk-json": "peer_json"}


def run(*, levels: tuple[int, ...] = LEVELS, settle: float = SETTLE) -> dict[str, Any]:
    """The peer (default, then ``json_response=True``) and Steward at every level."""
    fd_limit = raise_fd_limit(max(levels) * FDS_PER_STREAM + 1024)
    with generator_pinned() as core:
        servers = {
            "mcp-sdk": _measure(peer, levels, settle),
            "mcp-sdk-json": _measure(functools.partial(peer, replies="json"), levels, settle),
            "steward": _measure(steward, levels, settle),
        }
    figures: dict[str, Any] = {}
    for name, prefix in PREFIXES.items():
        points = servers[name].get("points") or []
        for p in points:
            figures[f"{prefix}_kb_per_stream_{p['level']}"] = p["kb_per_stream"]
            figures[f"{prefix}_rss_mb_{p['level']}"] = round(p["rss_kb"] / 1024, 1)
        if points:
            last = points[-1]
            figures[f"{prefix}_streams"] = last["streams"]
            figures[f"{prefix}_kb_per_stream"] = last["kb_per_stream"]
            figures[f"{prefix}_kb_per_session_and_stream"] = last["kb_per_session_and_stream"]
            figures[f"{prefix}_stream_failures"] = sum(p["stream_failures"] for p in points)
    ratios: dict[str, float | None] = {}
    for key, ratio in (
        ("kb_per_stream", "rss_per_stream"),
        ("kb_per_session_and_stream", "rss_per_session_and_stream"),
    ):
        for suffix in ("", "_json"):
            a, b = figures.get(f"steward_{key}"), figures.get(f"peer{suffix}_{key}")
            ratios[f"{ratio}_vs_peer{suffix}"] = round(a / b, 2) if a is not None and b else None
    for level in levels:
        a, b = (
            figures.get(f"steward_kb_per_stream_{level}"),
            figures.get(f"peer_kb_per_stream_{level}"),
        )
        ratios[f"rss_per_stream_vs_peer_{level}"] = round(a / b, 2) if a is not None and b else None
    out: dict[str, Any] = {
        "benchmark": "idle-streams",
        "levels": list(levels),
        "fd_limit": fd_limit,
        "goal": "rss_per_stream_vs_peer <= 0.5",
        "server_core": SERVER_CORE if core is not None else None,
        "generator_core": core,
        "servers": servers,
        "figures": figures,
        "ratios": ratios,
    }
    unavailable = {n: s["reason"] for n, s in servers.items() if not s["available"]}
    if unavailable:
        out["unavailable"] = unavailable
    return out
