"""cross-node: a resource update delivered to a stream on this process or, through the outbox, on
another (``steward serve --workers 2``).

One user session subscribes to ``demo://readme`` and holds one GET stream (on whichever worker the
kernel gave it). Then CALLS times, each on a new connection (the kernel picks the worker), the
``touch_readme`` tool publishes an update; its reply says whether the stream was on the same
worker (delivered at once) or not (an outbox row, a NOTIFY, the other worker's claim). The figure
is the time from sending the tool call to the update arriving on the stream, per path. The
servers are not pinned: two workers need both cores and share them with the generator. The SDK
peer keeps its sessions in one process: no peer figure and no ratio.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import trio

from bench._servers import steward

CALLS = 200
QUICK_CALLS = 40
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
PEER_NOTE = "the MCP SDK server keeps sessions in one process; no peer figure and no ratio"


def _pct(values: list[float], p: float) -> float | None:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 2) if s else None


def _rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


async def _measure(ready: dict[str, Any], token: str, calls: int) -> dict[str, Any]:
    url = ready["mcp_url"]
    headers = {**HEADERS, "authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        }
        r = await http.post(url, headers=headers, json=_rpc("initialize", init))
        r.raise_for_status()
        headers |= {
            "mcp-session-id": r.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        subscribe = _rpc("resources/subscribe", {"uri": "demo://readme"})
        (await http.post(url, headers=headers, json=subscribe)).raise_for_status()
        paths: dict[str, list[float]] = {"same_process": [], "other_process": []}
        received: list[float] = []
        arrived = trio.Event()
        stream_headers = {**headers, "accept": "text/event-stream"}
        async with http.stream("GET", url, headers=stream_headers) as response:

            async def read() -> None:
                nonlocal arrived
                async for line in response.aiter_lines():
                    if line.startswith("data:") and "resources/updated" in line:
                        received.append(time.perf_counter())
                        arrived.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.sleep(0.5)  # the stream is open and read
                call = _rpc("tools/call", {"name": "touch_readme", "arguments": {}})
                for _ in range(calls):
                    arrived = trio.Event()
                    async with httpx.AsyncClient(timeout=30) as fresh:  # any worker may take it
                        sent = time.perf_counter()
                        reply = (await fresh.post(url, headers=headers, json=call)).json()
                    with trio.fail_after(10):
                        await arrived.wait()
                    text = reply["result"]["content"][0]["text"]
                    path = "same_process" if "told: 1 here" in text else "other_process"
                    paths[path].append(received[-1] - sent)
                nursery.cancel_scope.cancel()
    figures: dict[str, Any] = {"updates_received": len(received), "calls": calls}
    for path, values in paths.items():
        figures[f"{path}_count"] = len(values)
        figures[f"{path}_p50_ms"] = _pct(values, 0.5)
        figures[f"{path}_p99_ms"] = _pct(values, 0.99)
    return figures


def run(*, quick: bool = False) -> dict[str, Any]:
    calls = QUICK_CALLS if quick else CALLS
    with steward(core=None, workers=2, user="bob") as server:
        assert server.token is not None
        figures = trio.run(_measure, server.ready, server.token, calls)
    return {
        "benchmark": "cross-node",
        "workers": 2,
        "figures": figures,
        "peer": {"available": False, "reason": PEER_NOTE},
    }
