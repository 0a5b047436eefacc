"""The official MCP Python SDK client against Steward: a client nobody on this project wrote."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from server.app._steward import Context, Steward
from tests.harness._steward import running_node, sign_in

app = Steward("sdk-test")


@app.tool()
async def echo(ctx: Context, text: str) -> str:
    """Echo."""
    return text


@app.tool()
async def ask_model(ctx: Context, question: str) -> str:
    """Ask the client's model through sampling."""
    result = await ctx.sample(
        [{"role": "user", "content": {"type": "text", "text": question}}], max_tokens=20
    )
    return f"model said: {result['content']['text']}"


@app.tool()
async def ask_user(ctx: Context) -> str:
    """Ask the user through elicitation."""
    answer = await ctx.elicit(
        "Your name?",
        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    )
    return f"hello {answer['content']['name']}"


@app.tool()
async def steps(ctx: Context, n: int) -> str:
    """Report progress and log."""
    for i in range(n):
        await ctx.log("info", f"step {i}")
        await ctx.progress(i + 1, n)
    return "done"


@app.resource("test://readme")
async def readme(ctx: Context) -> str:
    return "read me"


@app.prompt()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}"


async def sampling(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="forty-two"),
        model="stub",
        stop_reason="endTurn",
    )


async def elicitation(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def test_the_sdk_client_initializes_calls_tools_and_answers_server_requests(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db, app=app) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "bob")
        logs: list[Any] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logs.append(params.data)

        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as client,
            streamable_http_client(node.info.mcp_url, http_client=client) as (read, write, *_),
        ):
            async with ClientSession(
                read,
                write,
                sampling_callback=sampling,
                elicitation_callback=elicitation,
                logging_callback=on_log,
            ) as session:
                init = await session.initialize()
                assert init.server_info.name == "sdk-test"
                tools = await session.list_tools()
                assert {t.name for t in tools.tools} == {"echo", "ask_model", "ask_user", "steps"}
                result = await session.call_tool("echo", {"text": "hi"})
                assert result.content[0].text == "hi"  # type: ignore[union-attr]
                sampled = await session.call_tool("ask_model", {"question": "meaning?"})
                assert sampled.content[0].text == "model said: forty-two"  # type: ignore[union-attr]
                elicited = await session.call_tool("ask_user", {})
                assert elicited.content[0].text == "hello Ada"  # type: ignore[union-attr]
                progress: list[float] = []

                async def on_progress(p: float, total: float | None, message: str | None) -> None:
                    progress.append(p)

                done = await session.call_tool("steps", {"n": 3}, progress_callback=on_progress)
                assert done.content[0].text == "done"  # type: ignore[union-attr]
                assert progress == [1, 2, 3]
                assert logs == ["step 0", "step 1", "step 2"]
                read_result = await session.read_resource("test://readme")
                assert read_result.contents[0].text == "read me"  # type: ignore[union-attr]
                prompt = await session.get_prompt("greet", {"name": "Ada"})
                assert prompt.messages[0].content.text == "Hello Ada"  # type: ignore[union-attr]
                with pytest.raises(
                    MCPError, match="tool 'echo' is missing the required argument 'text'"
                ):
                    await session.call_tool("echo", {})
