"""session-churn: whole sessions per second with concurrent clients, every one durably recorded.

A session is initialize -> notifications/initialized -> 10 x tools/call echo -> DELETE
(docs/benchmarks.md). The SDK peer in its default configuration (SSE replies), the peer with
``json_response=True`` and Steward run in turn in one run, each pinned to core 0, with the same
generator pinned to core 1. While Steward still runs, its PostgreSQL is asked how many transport
sessions were recorded and how many were ended: both must equal what the generator counted
(initialize answered, DELETE answered), or the run says how many are missing.

The headline ratios are against the peer's best at each level, 1, 8, 32 and 128 clients:
``sessions_per_s_vs_peer_best_wN`` over its faster reply mode there, ``call_p99_ms_vs_peer_best_wN``
over the lower of its two modes' call p99. Each mode's own ratios stay (``_vs_peer`` for SSE
replies, ``_vs_peer_json``). An empty ASGI app on Steward's Hypercorn trio worker
(bench/_reference.py) runs the same workload with the same generator in the same run:
every server is started at once and, at each level, measured in ROUNDS interleaved rounds (the
point's duration split between them) so that the load of a shared machine falls on each alike;
``http_vs_hypercorn_reference`` is Steward's best HTTP requests/s over the reference's best
(``_wN`` per level). No ratio is given over a point with errors (bench/_honest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import asyncpg
import trio

from bench._loadgen import run_load
from bench._servers import (
    SERVER_CORE,
    Server,
    Unavailable,
    generator_pinned,
    peer,
    reference,
    steward,
)
from bench.tool_calls import WARM_UP

LEVELS = (1, 8, 32, 128)
QUICK_LEVELS = (32,)
ROUNDS = 5  # interleaved rounds per level: each server measured in turn, five times
HEADLINE = 32  # clients: the level the headline ratios are taken at (declared before measuring)
PEERS = {"mcp-sdk": "sse", "mcp-sdk-json": "json"}


async def _count(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS recorded, count(ended_at) AS ended FROM transport_sessions"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["recorded"]), int(row["ended"])


def durable_rows(server: Server, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Steward's transport-session rows against the generator's counts (every point and the
    warm-up)."""
    recorded, ended = asyncio.run(_count(server.ready["dsn"]))
    opened = sum(p["sessions_opened"] for p in points)
    finished = sum(p["sessions"] for p in points)
    return {
        "rows_recorded": recorded,
        "rows_ended": ended,
        "sessions_opened": opened,
        "sessions_finished": finished,
        "all_recorded": recorded == opened and ended == finished,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def peer_best(figures: dict[str, Any], w: int) -> dict[str, Any]:
    """The peer's best at ``w`` clients: its faster reply mode (sessions/s) and that mode's
    figures, and the lower of the two modes' call p99 (the stricter comparison)."""
    modes = {m: figures.get(f"{m}_sessions_per_s_w{w}") for m in ("peer", "peer_json")}
    known = {m: v for m, v in modes.items() if v is not None}
    if not known:
        return {"mode": None, "sessions_per_s": None, "calls_per_s": None, "call_p99_ms": None}
    mode = max(known, key=lambda m: known[m])
    p99s = [v for m in known if (v := figures.get(f"{m}_call_p99_ms_w{w}")) is not None]
    return {
        "mode": {"peer": "sse", "peer_json": "json"}[mode],
        "sessions_per_s": figures[f"{mode}_sessions_per_s_w{w}"],
        "calls_per_s": figures[f"{mode}_calls_per_s_w{w}"],
        "call_p99_ms": min(p99s) if p99s else None,
    }


PREFIXES = {
    "steward": "steward",
    "mcp-sdk": "peer",
    "mcp-sdk-json": "peer_json",
    "hypercorn-reference": "reference",
}


def _merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from a server's interleaved rounds at one level: counts and seconds summed
    (rates over the whole), latency percentiles the median of the rounds', error kinds added."""
    out = dict(rounds[0])
    for key in ("seconds", "sessions", "sessions_opened", "calls", "requests", "errors"):
        out[key] = round(sum(r[key] for r in rounds), 2)
    out["generator_cpu_s"] = round(sum(r["generator_cpu_s"] for r in rounds), 3)
    seconds = out["seconds"] or 1.0
    for key, count in (
        ("sessions_per_s", "sessions"),
        ("calls_per_s", "calls"),
        ("requests_per_s", "requests"),
    ):
        out[key] = round(out[count] / seconds, 1)
    out["generator_cpu_fraction"] = round(out["generator_cpu_s"] / seconds, 3)
    for key in ("call_p50_ms", "call_p99_ms"):
        values = sorted(r[key] for r in rounds if r[key] is not None)
        out[key] = values[len(values) // 2] if values else None
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, n in r["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    out["error_kinds"] = kinds
    out["rounds"] = len(rounds)
    out["round_sessions_per_s"] = [r["sessions_per_s"] for r in rounds]
    return out


def measure_interleaved(
    starts: dict[str, Callable[[], contextlib.AbstractContextManager[Server]]],
    levels: tuple[int, ...],
    duration: float,
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """Every server started at once (idle while the others are measured), then at each level
    ``rounds`` rounds of ``duration / rounds`` s per server in turn, so that background load on
    a shared machine falls on all of them alike; each level's rounds merged (``_merge``).
    Steward's durable rows are checked against the generator's counts before it stops."""
    servers: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        running: dict[str, Server] = {}
        for name, start in starts.items():
            try:
                running[name] = stack.enter_context(start())
            except Unavailable as exc:
                servers[name] = {"available": False, "reason": str(exc)}
        loads = {
            name: functools.partial(run_load, "127.0.0.1", s.port, token=s.token, path=s.path)
            for name, s in running.items()
        }
        warm = {name: trio.run(load, 2, WARM_UP).as_dict() for name, load in loads.items()}
        points: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
        piece = duration / rounds
        for w in levels:
            per: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
            for _ in range(rounds):
                for name, load in loads.items():
                    per[name].append(trio.run(load, w, piece).as_dict())
            for name in loads:
                points[name].append(_merge(per[name]))
        for name, server in running.items():
            servers[name] = {"available": True, "points": points[name]}
            if name == "steward":
                servers[name]["check"] = durable_rows(server, [warm[name], *points[name]])
    return {name: servers[name] for name in starts}


def run(
    *, levels: tuple[int, ...] = LEVELS, duration: float = 5.0, rounds: int = ROUNDS
) -> dict[str, Any]:
    """The peer (both reply modes), the Hypercorn reference and Steward at every level for
    ``duration`` s per point, interleaved in ``rounds`` rounds, with the same generator."""
    starts: dict[str, Callable[[], contextlib.AbstractContextManager[Server]]] = {
        name: functools.partial(peer, replies=mode) for name, mode in PEERS.items()
    }
    starts["hypercorn-reference"] = reference
    starts["steward"] = lambda: steward(node_options=[])
    with generator_pinned() as core:
        servers = measure_interleaved(starts, levels, duration, max(1, rounds))
    figures: dict[str, Any] = {}
    for name, measured in servers.items():
        prefix = PREFIXES[name]
        for p in measured.get("points", []):
            w = p["workers"]
            for key in (
                "sessions_per_s",
                "calls_per_s",
                "requests_per_s",
                "call_p50_ms",
                "call_p99_ms",
                "errors",
            ):
                figures[f"{prefix}_{key}_w{w}"] = p[key]
            figures[f"{prefix}_generator_cpu_w{w}"] = p["generator_cpu_fraction"]
    check = servers["steward"].get("check")
    if check is not None:
        figures["steward_rows_recorded"] = check["rows_recorded"]
        figures["steward_sessions_opened"] = check["sessions_opened"]
        figures["steward_rows_ended"] = check["rows_ended"]
        figures["steward_sessions_finished"] = check["sessions_finished"]
        figures["steward_all_sessions_recorded"] = check["all_recorded"]
    ratios: dict[str, float | None] = {}
    head = HEADLINE if HEADLINE in levels else levels[-1]
    for w in levels:
        best = peer_best(figures, w)
        figures[f"peer_best_mode_w{w}"] = best["mode"]
        ratios[f"sessions_per_s_vs_peer_best_w{w}"] = _ratio(
            figures.get(f"steward_sessions_per_s_w{w}"), best["sessions_per_s"]
        )
        ratios[f"call_p99_ms_vs_peer_best_w{w}"] = _ratio(
            figures.get(f"steward_call_p99_ms_w{w}"), best["call_p99_ms"]
        )
        ratios[f"http_vs_hypercorn_reference_w{w}"] = _ratio(
            figures.get(f"steward_requests_per_s_w{w}"),
            figures.get(f"reference_requests_per_s_w{w}"),
        )
        for key in ("sessions_per_s", "calls_per_s", "call_p99_ms"):
            for suffix, peer_prefix in (("", "peer"), ("_json", "peer_json")):
                ratio = _ratio(
                    figures.get(f"steward_{key}_w{w}"), figures.get(f"{peer_prefix}_{key}_w{w}")
                )
                ratios[f"{key}_w{w}_vs_peer{suffix}"] = ratio
                if w == head:
                    ratios[f"{key}_vs_peer{suffix}"] = ratio
    # each server's best level against the other's: how close Steward is to its stack's ceiling
    steward_best = max(figures.get(f"steward_requests_per_s_w{w}") or 0.0 for w in levels)
    reference_best = max(figures.get(f"reference_requests_per_s_w{w}") or 0.0 for w in levels)
    figures["steward_requests_per_s_best"] = steward_best or None
    figures["reference_requests_per_s_best"] = reference_best or None
    ratios["http_vs_hypercorn_reference"] = _ratio(steward_best or None, reference_best or None)
    out: dict[str, Any] = {
        "benchmark": "session-churn",
        "duration_per_point_s": duration,
        "rounds_per_point": max(1, rounds),
        "levels": list(levels),
        "headline_clients": head,
        "server_core": SERVER_CORE if core is not None else None,
        "generator_core": core,
        "servers": servers,
        "figures": figures,
        "ratios": dict(sorted(ratios.items(), key=lambda kv: (kv[0].count("_w"), kv[0]))),
        "goal": "sessions_per_s_vs_peer_best_wN >= 1.0 at every level, "
        "call_p99_ms_vs_peer_best_w32 <= 0.5, http_vs_hypercorn_reference >= 0.85",
    }
    unavailable = {n: s["reason"] for n, s in servers.items() if not s["available"]}
    if unavailable:
        out["unavailable"] = unavailable
    return out
