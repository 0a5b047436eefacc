"""The deprecated HTTP+SSE transport (2024-11-05, MCP-R13) with the official SDK's SSE client, and
its rules over raw HTTP: an endpoint event first, authentication on both halves, 404 for a stream
that is gone or belongs to someone else."""

from __future__ import annotations

from typing import Any

import httpx
import trio
from mcp import ClientSession, types
from mcp.client.sse import sse_client

from server._introspection import StreamKind
from server.app._steward import Context, Steward
from tests.harness._steward import SseReader, running_node, sign_in
from tests.harness._wait import wait_until

app = Steward("legacy-test")


@app.tool()
async def echo(ctx: Context, text: str) -> str:
    return text


@app.tool()
async def ask_model(ctx: Context, question: str) -> str:
    await ctx.log("info", "asking")
    result = await ctx.sample([{"role": "user", "content": {"type": "text", "text": question}}])
    return f"model said: {result['content']['text']}"


@app.resource("test://readme")
async def readme(ctx: Context) -> str:
    return "read me"


async def sampling(context: Any, params: Any) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="forty-two"),
        model="stub",
        stop_reason="endTurn",
    )


async def test_the_sdk_sse_client_initializes_calls_tools_and_answers_sampling(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db, app=app) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "carol")
        logs: list[Any] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logs.append(params.data)

        url = f"{node.info.listen_url}/sse"
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        with trio.fail_after(20):
            async with (
                sse_client(url, headers=headers) as (read, write),
                ClientSession(
                    read, write, sampling_callback=sampling, logging_callback=on_log
                ) as session,
            ):
                init = await session.initialize()
                assert init.server_info.name == "legacy-test"
                tools = await session.list_tools()
                assert {t.name for t in tools.tools} == {"echo", "ask_model"}
                echoed = await session.call_tool("echo", {"text": "hi"})
                assert echoed.content[0].text == "hi"  # type: ignore[union-attr]
                sampled = await session.call_tool("ask_model", {"question": "meaning?"})
                assert sampled.content[0].text == "model said: forty-two"  # type: ignore[union-attr]
                assert logs == ["asking"]
                read_result = await session.read_resource("test://readme")
                assert read_result.contents[0].text == "read me"  # type: ignore[union-attr]
        with trio.fail_after(10):  # each request's usage is recorded, as on /mcp
            while True:
                rows = await node.store.fetch(
                    "SELECT method, name, outcome FROM usage_events ORDER BY method, name"
                )
                if len(rows) >= 4:
                    break
                await trio.sleep(0.05)
        assert [(r["method"], r["name"], r["outcome"]) for r in rows] == [
            ("resources/read", "test://readme", "ok"),  # a resource by its URI
            ("tools/call", "ask_model", "ok"),
            ("tools/call", "echo", "ok"),
            ("tools/list", None, "ok"),
        ]


async def test_the_endpoint_event_comes_first_and_posts_need_the_streams_principal(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db, app=app) as node, httpx.AsyncClient(timeout=10) as http:
        carol = (await sign_in(http, node, "carol"))["access_token"]
        bob = (await sign_in(http, node, "bob"))["access_token"]
        url = f"{node.info.listen_url}/sse"
        assert (await http.get(url)).status_code == 401  # no token, no stream
        evil = {"authorization": f"Bearer {carol}", "origin": "https://evil.example"}
        assert (await http.get(url, headers=evil)).status_code == 403
        async with http.stream("GET", url, headers={"authorization": f"Bearer {carol}"}) as r:
            reader = SseReader(r)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader._pump)
                with trio.fail_after(5):
                    endpoint = await reader.next()
                assert endpoint is not None and endpoint["event"] == "endpoint"
                path = endpoint["data"]
                assert isinstance(path, str) and path.startswith("/messages?session_id=")
                post_url = f"{node.info.listen_url}{path}"
                ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                assert (await http.post(post_url, json=ping)).status_code == 401
                as_bob = {"authorization": f"Bearer {bob}"}
                assert (await http.post(post_url, json=ping, headers=as_bob)).status_code == 404
                as_carol = {"authorization": f"Bearer {carol}"}
                r2 = await http.post(post_url, json=ping, headers=as_carol)
                assert r2.status_code == 202 and r2.content == b""
                with trio.fail_after(5):
                    reply = await reader.next()
                assert reply is not None and reply["event"] == "message"
                assert reply["data"] == {"jsonrpc": "2.0", "id": 1, "result": {}}
                nursery.cancel_scope.cancel()
        # the stream's handler notices the disconnect and cleans up
        await wait_until(lambda: not node.streams(kind=StreamKind.LEGACY_SSE), within=5, every=0.01)
        r3 = await http.post(post_url, json=ping, headers=as_carol)
        assert r3.status_code == 404  # the stream is gone
