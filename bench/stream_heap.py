"""``python -m bench.stream_heap [N]``: what one idle GET stream holds on Steward's Python heap.

A diagnostic beside idle-streams (which measures RSS against the peer): an in-process node on a
throwaway PostgreSQL cluster (or ``DATABASE_URL``), 20 warm-up streams, then N transport sessions
(default 300), a ``gc.collect()`` and a tracemalloc snapshot, then an idle GET stream on each
session (its own connection, never read), a second collect and snapshot. It prints the growth per
stream by file and by allocation site, the Trio tasks per stream, and last one JSON line
``{"bench": "stream-heap", "traced_kb_per_stream": ..., "tasks_per_stream": ...}``.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from typing import Any

import httpx
import trio

from actors.sessions import SessionPolicy
from tests.harness._pg import create_database, start_cluster, stop_cluster
from tests.harness._steward import McpClient, running_node, sign_in

WARM_UP = 20
UNLIMITED = {
    "requests_per_minute": 10**6,
    "burst": 10**6,
    "max_streams": 10**6,
    "max_sessions": 10**6,
    "initialize_per_minute": 10**6,
}


def _tasks() -> int:
    todo = [trio.lowlevel.current_root_task()]
    count = 0
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


async def _open_stream(port: int, mcp: McpClient) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    request = (
        "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n"
        f"authorization: Bearer {mcp.token}\r\nmcp-session-id: {mcp.session_id}\r\n"
        "mcp-protocol-version: 2025-11-25\r\n\r\n"
    )
    await sock.send(request.encode())
    head = await sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        msg = f"GET answered {head[:200]!r}"
        raise RuntimeError(msg)
    return sock


async def _measure(dsn: str, n: int) -> dict[str, Any]:
    tiers = [{"name": t, **UNLIMITED} for t in ("free", "pro", "enterprise")]
    policy = SessionPolicy(max_connections=n + WARM_UP + 64)
    async with (
        running_node(dsn, session_policy=policy, tiers=tiers) as node,
        httpx.AsyncClient(timeout=30) as http,
    ):
        port = int(node.info.listen_url.rsplit(":", 1)[1])
        tokens = [(await sign_in(http, node, u))["access_token"] for u in ("alice", "bob", "carol")]

        async def session(i: int) -> McpClient:
            mcp = McpClient(http, node, tokens[i % len(tokens)])
            await mcp.initialize()
            return mcp

        socks = [await _open_stream(port, await session(i)) for i in range(WARM_UP)]
        sessions = [await session(i) for i in range(n)]
        await trio.sleep(0.5)
        gc.collect()
        tracemalloc.start(25)
        before, tasks_before = tracemalloc.take_snapshot(), _tasks()
        socks += [await _open_stream(port, mcp) for mcp in sessions]
        await trio.sleep(1.0)
        gc.collect()
        after, tasks_after = tracemalloc.take_snapshot(), _tasks()
        tracemalloc.stop()
        for sock in socks:
            sock.close()
    by_file = after.compare_to(before, "filename")
    print("bytes per stream by file:")
    for stat in by_file[:25]:
        print(f"{stat.size_diff / n:9.0f}  {stat.traceback[0].filename}")
    print("bytes per stream by allocation site:")
    for stat in after.compare_to(before, "lineno")[:30]:
        print(f"{stat.size_diff / n:9.0f}  {stat.traceback[0]}")
    return {
        "bench": "stream-heap",
        "streams": n,
        "traced_kb_per_stream": round(sum(s.size_diff for s in by_file) / n / 1024, 1),
        "tasks_per_stream": round((tasks_after - tasks_before) / n, 2),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    cluster = start_cluster()
    try:
        dsn = cluster.cluster.dsn(create_database(cluster.cluster))
        result = trio.run(_measure, dsn, n)
    finally:
        stop_cluster(cluster)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
