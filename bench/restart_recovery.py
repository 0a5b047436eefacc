"""restart-recovery: durable sessions across a restart.

N transport sessions are created, Steward is stopped and started again on the same data folder,
and the benchmark measures the time from the restart until every old session id answers again.
The peer keeps sessions in process memory: after its restart every old id answers 404.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx
import trio

from bench._servers import UNLIMITED_ADDRESSES, free_port, obtain_token, peer
from tests.harness._serve import steward_serve

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "b", "version": "1"},
    },
}


async def _create(url: str, token: str | None, n: int) -> list[str]:
    ids: list[str] = []
    headers = {**HEADERS, **({"authorization": f"Bearer {token}"} if token else {})}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def worker(count: int) -> None:
            for _ in range(count):
                r = await http.post(url, headers=headers, json=INIT)
                ids.append(r.headers["mcp-session-id"])

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(worker, n // 16 + (1 if i < n % 16 else 0))
    return ids


async def _check(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    sid: str,
    limiter: trio.CapacityLimiter,
    statuses: dict[int, int],
    failed: list[str],
) -> None:
    async with limiter:
        try:
            r = await http.post(
                url,
                headers={**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"},
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            )
        except httpx.HTTPError:
            failed.append(sid)
            return
    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    if r.status_code != 200:
        failed.append(sid)


async def _probe(url: str, token: str | None, ids: list[str], deadline: float) -> dict[str, Any]:
    """Ask every old session id until each answers 200 (or 404, which is final)."""
    headers = {**HEADERS, **({"authorization": f"Bearer {token}"} if token else {})}
    pending = list(ids)
    statuses: dict[int, int] = {}
    limiter = trio.CapacityLimiter(32)
    t0 = trio.current_time()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as http:
        while pending and trio.current_time() - t0 < deadline:
            failed: list[str] = []
            async with trio.open_nursery() as nursery:
                for sid in pending:
                    nursery.start_soon(_check, http, url, headers, sid, limiter, statuses, failed)
            pending = failed
            if pending and 404 in statuses:
                break
    return {
        "answered": len(ids) - len(pending),
        "seconds": round(trio.current_time() - t0, 2),
        "statuses": statuses,
    }


def run(sessions: int = 10_000) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "restart-recovery", "sessions": sessions}
    with steward_serve(
        "--port",
        str(free_port()),
        config=UNLIMITED_ADDRESSES
        + '[[tiers]]\nname = "free"\nrequests_per_minute = 100000000\nburst = 1000000\n'
        "max_sessions = 100000000\ninitialize_per_minute = 100000000\n",
        env={"STEWARD_LOG_LEVEL": "warning"},
    ) as server:
        token = obtain_token(server.ready, "carol")
        ids = trio.run(_create, server.ready["mcp_url"], token, sessions)
        server.stop()
        t0 = time.monotonic()
        doc = server.start()
        started = time.monotonic() - t0
        probe = trio.run(_probe, doc["mcp_url"], token, ids, 300.0)
        out["steward"] = {
            "restart_s": round(started, 2),
            "probe_s": probe["seconds"],
            "all_answered_after_s": round(started + probe["seconds"], 2),
            "answered": probe["answered"],
            "errors": len(ids) - probe["answered"],  # old ids that never answered 200
            "error_kinds": {str(k): n for k, n in probe["statuses"].items() if k != 200},
            "statuses": probe["statuses"],
        }
    with peer() as p:
        url = f"http://127.0.0.1:{p.port}/mcp"
        ids = trio.run(_create, url, None, min(sessions, 1000))
    with peer() as p2, contextlib.suppress(Exception):
        url = f"http://127.0.0.1:{p2.port}/mcp"
        probe = trio.run(_probe, url, None, ids[:100], 30.0)
        out["mcp-sdk"] = {
            "answered": probe["answered"],
            "of": len(ids[:100]),
            "statuses": probe["statuses"],
            "note": "the peer restarted on a new port; its sessions live in memory",
        }
    return out
