"""restart-recovery: durable sessions across a restart.

N transport sessions are created, Steward is stopped and started again on the same data folder,
and the benchmark measures the time from the restart until every old session id answers again:
``restart_s`` (the process started until its ready file) plus ``probe_s`` (until the last old
id answered 200), asked by the lean generator (bench/_loadgen.py) on PROBES kept-alive
connections, so that the probe is not the bound.
The peer keeps sessions in process memory: after its restart every old id answers 404.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import trio

from bench._loadgen import (
    INITIALIZE,
    PROTOCOL_VERSION,
    Connection,
    ProtocolError,
    _rpc,
    base_headers,
    exchange,
)
from bench._servers import STEWARD_CONFIG, free_port, obtain_token, peer
from tests.harness._serve import steward_serve

OPENERS = 16  # connections creating the sessions
PROBES = 64  # connections asking the old ids after the restart


async def _create(port: int, path: str, token: str | None, n: int) -> list[str]:
    """``n`` transport sessions (one initialize each), OPENERS at a time on kept-alive
    connections: their ids."""
    ids: list[str] = []
    todo = iter(range(n))

    async def opener() -> None:
        conn = Connection("127.0.0.1", port)
        try:
            for _ in todo:
                body = _rpc(1, "initialize", INITIALIZE)
                reply = await exchange(conn, "POST", path, base_headers(token), body, request_id=1)
                if reply.status != 200 or "mcp-session-id" not in reply.headers:
                    msg = f"initialize answered {reply.status} {reply.body[:120]!r}"
                    raise ProtocolError(msg)
                ids.append(reply.headers["mcp-session-id"])
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(OPENERS):
            nursery.start_soon(opener)
    return ids


async def _probe(
    port: int, path: str, token: str | None, ids: list[str], deadline: float
) -> dict[str, Any]:
    """Ask every old session id (``tools/list``) with the lean generator, PROBES kept-alive
    connections at once, until each answers 200 (a 404 is final: the session is gone)."""
    pending = list(ids)
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    last_answer = [t0]
    base = {**base_headers(token), "mcp-protocol-version": PROTOCOL_VERSION}
    body = _rpc(2, "tools/list")
    while pending and time.monotonic() - t0 < deadline:
        failed: list[str] = []
        todo = iter(pending)

        async def prober(todo: Iterator[str], failed: list[str]) -> None:
            conn = Connection("127.0.0.1", port)
            try:
                for sid in todo:
                    try:
                        reply = await exchange(
                            conn, "POST", path, {**base, "mcp-session-id": sid}, body, request_id=2
                        )
                    except (OSError, trio.BrokenResourceError, ProtocolError):
                        failed.append(sid)
                        await conn.aclose()
                        await trio.sleep(0.01)
                        continue
                    statuses[reply.status] = statuses.get(reply.status, 0) + 1
                    if reply.status == 200:
                        last_answer[0] = time.monotonic()
                    elif reply.status != 404:
                        failed.append(sid)
            finally:
                await conn.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(PROBES):
                nursery.start_soon(prober, todo, failed)
        pending = failed
    return {
        "answered": statuses.get(200, 0),
        "seconds": round(last_answer[0] - t0, 2),
        "statuses": statuses,
    }


def run(sessions: int = 10_000) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "restart-recovery", "sessions": sessions}
    with steward_serve(
        "--port",
        str(free_port()),
        config=STEWARD_CONFIG,
        env={"STEWARD_LOG_LEVEL": "warning"},
    ) as server:
        token = obtain_token(server.ready, "carol")
        url = urlsplit(server.ready["mcp_url"])
        port, path = url.port or 80, url.path or "/"
        ids = trio.run(_create, port, path, token, sessions)
        server.stop()
        t0 = time.monotonic()
        doc = server.start()
        started = time.monotonic() - t0
        cpu0 = time.process_time()
        probe = trio.run(_probe, port, path, token, ids, 300.0)
        probe["generator_cpu_s"] = round(time.process_time() - cpu0, 2)
        assert urlsplit(doc["mcp_url"]).port == port
        out["steward"] = {
            "restart_s": round(started, 2),
            "probe_s": probe["seconds"],
            "all_answered_after_s": round(started + probe["seconds"], 2),
            "answered": probe["answered"],
            "errors": len(ids) - probe["answered"],  # old ids that never answered 200
            "error_kinds": {str(k): n for k, n in probe["statuses"].items() if k != 200},
            "statuses": probe["statuses"],
            "probe_connections": PROBES,
            "generator_cpu_s": probe["generator_cpu_s"],
        }
    with peer() as p:
        ids = trio.run(_create, p.port, p.path, None, min(sessions, 1000))
    with peer() as p2, contextlib.suppress(Exception):
        probe = trio.run(_probe, p2.port, p2.path, None, ids[:100], 30.0)
        out["mcp-sdk"] = {
            "answered": probe["answered"],
            "of": len(ids[:100]),
            "statuses": probe["statuses"],
            "note": "the peer restarted on a new port; its sessions live in memory",
        }
    return out
