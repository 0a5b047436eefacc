"""The official SDK's high-level client in auto mode speaks 2026-07-28 to Steward (MCP-R17):
stateless requests, no transport session, and sampling and elicitation as input_required results
that the client answers by retrying the request."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import mcp
from mcp import types
from mcp.client.streamable_http import streamable_http_client

from examples.everything import app as everything
from tests.harness._steward import running_node, sign_in
from tests.test_mcp_everything import elicitation, sampling


async def test_the_sdk_client_in_auto_mode_uses_2026_and_answers_input_requests(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db, app=everything) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "carol")
        logs: list[Any] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logs.append(params.data)

        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http2,
            mcp.Client(
                streamable_http_client(node.info.mcp_url, http_client=http2),
                sampling_callback=sampling,
                elicitation_callback=elicitation,
                logging_callback=on_log,
                log_level="info",  # 2026: no log messages for a request without a logLevel
            ) as client,
        ):
            assert client.protocol_version == "2026-07-28"
            tools = await client.list_tools()
            assert {t.name for t in tools.tools} == set(everything.tools)
            text = await client.call_tool("test_simple_text", {})
            assert text.content[0].text == "This is a simple text response for testing."  # type: ignore[union-attr]
            sampled = await client.call_tool("test_sampling", {"prompt": "hi"})
            assert sampled.content[0].text == "LLM response: echo of hi"  # type: ignore[union-attr]
            elicited = await client.call_tool("test_elicitation", {"message": "who?"})
            assert elicited.content[0].text == (  # type: ignore[union-attr]
                'User response: action=accept, content={"response":"who?"}'
            )
            seen: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen.append(progress)

            await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
            assert seen == [0, 50, 100]
            logged = await client.call_tool("test_tool_with_logging", {})
            assert logged.is_error is False
            assert logs[-3:] == [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]
            resource = await client.read_resource("test://static-text")
            assert resource.contents[0].text == (  # type: ignore[union-attr]
                "This is the content of the static text resource."
            )
            prompt = await client.get_prompt(
                "test_prompt_with_arguments", {"arg1": "a", "arg2": "b"}
            )
            assert prompt.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"  # type: ignore[union-attr]
        assert await node.store.fetchval("SELECT count(*) FROM transport_sessions") == 0
        assert node.statistics().endpoint.parked_requests == 0
        assert node.statistics().endpoint.pending_client_answers == 0
