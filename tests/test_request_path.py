"""The request path's own cost: a 2025 request's handler runs in the task that serves its HTTP
request, and a second task is started only when its reply becomes an SSE stream."""

from __future__ import annotations

import httpx
import trio

from server.app._steward import Context, Steward
from tests.harness._steward import McpClient, running_node, sign_in, sse_messages

app = Steward("request-path-test")
tasks: dict[str, trio.lowlevel.Task] = {}


@app.tool()
async def quiet(ctx: Context, label: str) -> str:
    """Sends nothing before its result: a JSON reply."""
    tasks[label] = trio.lowlevel.current_task()
    return label


@app.tool()
async def chatty(ctx: Context, label: str) -> str:
    """Logs first (the reply becomes SSE), then answers."""
    await ctx.log("info", f"working on {label}")
    tasks[label] = trio.lowlevel.current_task()
    return label


async def test_a_json_replys_handler_runs_in_its_requests_task_and_a_streams_too(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db, app=app) as node, httpx.AsyncClient(timeout=10) as http:
        tokens = await sign_in(http, node, "carol")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        tasks.clear()
        await mcp.post("logging/setLevel", {"level": "info"})

        r = await mcp.post("tools/call", {"name": "quiet", "arguments": {"label": "a"}})
        assert r.headers["content-type"] == "application/json"
        assert r.json()["result"]["content"][0]["text"] == "a"
        r = await mcp.post("tools/call", {"name": "chatty", "arguments": {"label": "b"}})
        assert r.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(r.text)
        assert [m.get("method") for m in messages] == ["notifications/message", None]
        assert messages[-1]["result"]["content"][0]["text"] == "b"

    # no task of the request runner's own: the handler ran where the request was served (one
    # task per HTTP request, Hypercorn's), both for a JSON reply and for a stream
    for label in ("a", "b"):
        assert "RequestRunner" not in tasks[label].name, tasks[label].name
