"""scale-out: session churn with 1 and 2 worker processes, and cross-node revocation fan-out.

On a 2-core machine the servers are not pinned here: two workers need both cores, and the load
generator shares them (its CPU is reported).
"""

from __future__ import annotations

import functools
from typing import Any

import httpx
import trio

from bench._loadgen import run_load
from bench._servers import obtain_token, steward

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


def run(duration: float = 5.0, users: int = 40) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "scale-out", "duration_per_point_s": duration, "churn": {}}
    for workers in (1, 2):
        with steward(core=None, workers=workers) as s:
            load = functools.partial(run_load, "127.0.0.1", s.port, token=s.token, path=s.path)
            trio.run(load, 4, 0.5)  # warm-up
            out["churn"][f"{workers}_worker"] = trio.run(load, 32, duration).as_dict()
            if workers == 2:
                assert s.admin is not None
                lat = sorted(trio.run(_revocation_latencies, s.ready, s.admin, users))
                out["revocation"] = {
                    "users": users,
                    "delivered": len(lat),
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
    return out
