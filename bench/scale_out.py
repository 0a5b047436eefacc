"""scale-out: session churn with 1 and 2 worker processes, and cross-node revocation fan-out.

On a 2-core machine the servers are not pinned here: two workers need both cores, and the load
generator shares them. Each point reports the CPU seconds spent by role (the workers, their
PostgreSQL, the parent of a multi-worker run, the generator) and per HTTP request, from /proc in
the same run: the inputs of the capacity model in docs/scaling.md. Every worker reads the
benchmark's configuration (tiers far above the load, a cross-node tool-call quota above what
all workers could admit); ``figures.errors`` is the sum over the points, and a point with errors
yields no ratio (bench/_honest.py).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import httpx
import trio

from bench._cpu import cpu_by_role, delta
from bench._loadgen import run_load
from bench._servers import Server, obtain_token, steward

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def _revocation_latencies(ready: dict[str, Any], admin: str, users: int) -> list[float]:
    url = ready["mcp_url"]
    latencies: list[float] = []
    tokens = [await trio.to_thread.run_sync(obtain_token, ready, f"r{i}") for i in range(users)]
    async with httpx.AsyncClient(timeout=30) as control:
        for i, token in enumerate(tokens):
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(
                    url,
                    headers={**HEADERS, "authorization": f"Bearer {token}"},
                    json={
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-11-25",
                            "capabilities": {},
                            "clientInfo": {"name": "b", "version": "1"},
                        },
                    },
                )
                sid = r.headers["mcp-session-id"]
                headers = {
                    **HEADERS,
                    "accept": "text/event-stream",
                    "authorization": f"Bearer {token}",
                    "mcp-session-id": sid,
                    "mcp-protocol-version": "2025-11-25",
                }
                async with http.stream("GET", url, headers=headers) as response:
                    lines = response.aiter_lines()
                    async for line in lines:  # the priming event
                        if line == "":
                            break
                    users_page = (
                        await control.get(
                            f"{ready['admin_url']}sessions",
                            params={"user": f"|r{i}"},
                            headers={"authorization": f"Bearer {admin}"},
                        )
                    ).json()
                    user_id = users_page["sessions"][0]["user_id"]
                    started = trio.current_time()
                    await control.post(
                        f"{ready['admin_url']}users/revoke",
                        json={"user_id": user_id},
                        headers={"authorization": f"Bearer {admin}"},
                    )
                    async for line in lines:
                        if line.startswith("data:") and '"error"' in line:
                            latencies.append(trio.current_time() - started)
                            break
    return latencies


def churn_point(s: Server, workers: int, clients: int, duration: float) -> dict[str, Any]:
    """One churn point with the CPU by role over it: seconds, and milliseconds per request."""
    load = functools.partial(run_load, "127.0.0.1", s.port, token=s.token, path=s.path)
    before = cpu_by_role(s.pid, workers, s.data_dir)
    point = trio.run(load, clients, duration).as_dict()
    cpu = delta(before, cpu_by_role(s.pid, workers, s.data_dir))
    cpu["generator"] = point["generator_cpu_s"]
    requests = max(1, point["requests"])
    point["cpu_s"] = cpu
    point["cpu_ms_per_request"] = {k: round(v * 1000 / requests, 3) for k, v in cpu.items()}
    point["cpu_cores"] = {k: round(v / point["seconds"], 2) for k, v in cpu.items()}
    return point


def run(duration: float = 5.0, users: int = 40, clients: int = 32) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "scale-out", "duration_per_point_s": duration, "churn": {}}
    for workers in (1, 2):
        with steward(core=None, workers=workers) as s:
            load = functools.partial(run_load, "127.0.0.1", s.port, token=s.token, path=s.path)
            trio.run(load, 4, 0.5)  # warm-up
            out["churn"][f"{workers}_worker"] = churn_point(s, workers, clients, duration)
            if workers == 2:
                assert s.admin is not None
                lat = sorted(trio.run(_revocation_latencies, s.ready, s.admin, users))
                out["revocation"] = {
                    "users": users,
                    "delivered": len(lat),
                    "errors": users - len(lat),
                    "cross_node_revocation_p50_ms": round(lat[len(lat) // 2] * 1000, 1)
                    if lat
                    else None,
                    "cross_node_revocation_p99_ms": round(
                        lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1
                    )
                    if lat
                    else None,
                }
    one, two = (
        out["churn"]["1_worker"]["sessions_per_s"],
        out["churn"]["2_worker"]["sessions_per_s"],
    )
    out["ratios"] = {"two_vs_one_worker": round(two / one, 2) if one else None}
    out["cross_node_revocation_p99_ms"] = out.get("revocation", {}).get(
        "cross_node_revocation_p99_ms"
    )
    figures: dict[str, Any] = {
        "errors": sum(p["errors"] for p in out["churn"].values())
        + out.get("revocation", {}).get("errors", 0),
        "cpu_cores": os.cpu_count(),
    }
    for name, p in out["churn"].items():
        figures[f"sessions_per_s_{name}"] = p["sessions_per_s"]
        figures[f"requests_per_s_{name}"] = p["requests_per_s"]
        figures[f"errors_{name}"] = p["errors"]
        for role, ms in p["cpu_ms_per_request"].items():
            figures[f"cpu_ms_per_request_{role}_{name}"] = ms
    for key in ("cross_node_revocation_p50_ms", "cross_node_revocation_p99_ms"):
        figures[key] = out.get("revocation", {}).get(key)
    out["figures"] = figures
    return out
