"""tool-calls: calls/s and call p50/p99 on live sessions at 1, 8, 32 and 128 concurrent clients.

The peer (the official MCP Python SDK server) and Steward run in turn in one run, each pinned to
core 0, with the same generator pinned to core 1. A session is initialize -> initialized ->
10 x tools/call echo -> DELETE (docs/benchmarks.md). Ratios are Steward over the peer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import trio

from bench._loadgen import run_load
from bench._servers import SERVER_CORE, Server, Unavailable, generator_pinned, peer, steward

LEVELS = (1, 8, 32, 128)
WARM_UP = 0.5  # seconds of load before the measured points, at two clients


def measure(
    start: Callable[[], contextlib.AbstractContextManager[Server]],
    levels: tuple[int, ...],
    duration: float,
    check: Callable[[Server, list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The warm-up, then one point per level; with ``check``, its result (from the server and
    every point, warm-up first, before the server stops) under ``"check"``."""
    try:
        with start() as server:
            load = functools.partial(
                run_load, "127.0.0.1", server.port, token=server.token, path=server.path
            )
            warm = trio.run(load, 2, WARM_UP).as_dict()
            points = [trio.run(load, w, duration).as_dict() for w in levels]
            out: dict[str, Any] = {"available": True, "points": points}
            if check is not None:
                out["check"] = check(server, [warm, *points])
    except Unavailable as exc:
        return {"available": False, "reason": str(exc)}
    return out


def run(
    *, levels: tuple[int, ...] = LEVELS, duration: float = 5.0, peer_replies: str = "sse"
) -> dict[str, Any]:
    """Both servers at every level for ``duration`` seconds per point."""
    with generator_pinned() as core:
        servers = {
            "mcp-sdk": measure(lambda: peer(replies=peer_replies), levels, duration),
            "steward": measure(steward, levels, duration),
        }
    out: dict[str, Any] = {
        "benchmark": "tool-calls",
        "duration_per_point_s": duration,
        "levels": list(levels),
        "server_core": SERVER_CORE if core is not None else None,
        "generator_core": core,
        "peer_replies": peer_replies,
        "servers": servers,
    }
    figures: dict[str, Any] = {}
    for name, prefix in (("steward", "steward"), ("mcp-sdk", "peer")):
        for p in servers[name].get("points", []):
            w = p["workers"]
            figures[f"{prefix}_calls_per_s_w{w}"] = p["calls_per_s"]
            figures[f"{prefix}_call_p50_ms_w{w}"] = p["call_p50_ms"]
            figures[f"{prefix}_call_p99_ms_w{w}"] = p["call_p99_ms"]
            figures[f"{prefix}_errors_w{w}"] = p["errors"]
            figures[f"{prefix}_generator_cpu_w{w}"] = p["generator_cpu_fraction"]
    ratios: dict[str, float | None] = {}
    for w in levels:
        for key in ("calls_per_s", "call_p99_ms"):
            a = figures.get(f"steward_{key}_w{w}")
            b = figures.get(f"peer_{key}_w{w}")
            ratios[f"{key}_w{w}"] = round(a / b, 2) if a is not None and b else None
    out["figures"] = figures
    out["ratios"] = ratios
    unavailable = {n: s["reason"] for n, s in servers.items() if not s["available"]}
    if unavailable:
        out["unavailable"] = unavailable
    return out
