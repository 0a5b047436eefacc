"""The conformance suite's "everything" fixtures, driven by the official SDK client over real HTTP;
every result Steward sends is validated against the official mcp-types models."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import httpx2
import mcp_types as t
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter

from actors.sessions import UserContext
from examples.everything import PNG_1PX, WATCHED_URI
from examples.everything import app as everything
from server.mcp._dispatch import Dispatcher
from tests.harness._steward import running_node, sign_in


async def sampling(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    text = params.messages[0].content.text  # type: ignore[union-attr]
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"echo of {text}"),
        model="stub",
        stop_reason="endTurn",
    )


async def elicitation(context: Any, params: Any) -> types.ElicitResult:
    properties = params.requested_schema["properties"]
    if "response" in properties:
        return types.ElicitResult(action="accept", content={"response": params.message})
    if "untitledSingle" in properties:
        return types.ElicitResult(action="decline")
    defaults = {k: v["default"] for k, v in properties.items()}  # SEP-1034: defaults offered
    return types.ElicitResult(action="accept", content=defaults)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 2025-era methods the suite still calls
async def test_every_fixture_answers_like_the_reference_server(fresh_db: str) -> None:
    async with running_node(fresh_db, app=everything) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "carol")
        logs: list[Any] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logs.append(params.data)

        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as client,
            streamable_http_client(node.info.mcp_url, http_client=client) as (read, write, *_),
            ClientSession(
                read,
                write,
                sampling_callback=sampling,
                elicitation_callback=elicitation,
                logging_callback=on_log,
            ) as session,
        ):
            init = await session.initialize()
            assert init.capabilities.resources is not None
            assert init.capabilities.resources.subscribe is True
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert tools == set(everything.tools)

            async def call(name: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
                result = await session.call_tool(name, args or {}, **kw)
                return result.content

            assert (await call("test_simple_text"))[0].text == (
                "This is a simple text response for testing."
            )
            image = (await call("test_image_content"))[0]
            assert (image.type, image.data, image.mime_type) == ("image", PNG_1PX, "image/png")
            audio = (await call("test_audio_content"))[0]
            assert (audio.type, audio.mime_type) == ("audio", "audio/wav")
            embedded = (await call("test_embedded_resource"))[0]
            assert embedded.resource.uri == "test://embedded-resource"
            mixed = await call("test_multiple_content_types")
            assert [c.type for c in mixed] == ["text", "image", "resource"]

            logs.clear()
            logged = await call("test_tool_with_logging")
            assert logged[0].text == "Tool with logging executed successfully"
            assert logs == [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]

            progress: list[tuple[float, float | None]] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append((p, total))

            await call("test_tool_with_progress", progress_callback=on_progress)
            assert progress == [(0, 100), (50, 100), (100, 100)]

            failed = await session.call_tool("test_error_handling", {})
            assert failed.is_error is True
            assert "intentionally returns an error" in failed.content[0].text  # type: ignore[union-attr]

            sampled = await call("test_sampling", {"prompt": "two plus two"})
            assert sampled[0].text == "LLM response: echo of two plus two"
            elicited = await call("test_elicitation", {"message": "name?"})
            assert elicited[0].text == 'User response: action=accept, content={"response":"name?"}'
            defaults = (await call("test_elicitation_sep1034_defaults"))[0].text
            assert defaults.startswith("Elicitation result: action=accept, content=")
            assert json.loads(defaults.split("content=", 1)[1]) == {
                "name": "John Doe",
                "age": 30,
                "score": 95.5,
                "status": "active",
                "verified": True,
            }
            enums = (await call("test_elicitation_sep1330_enums"))[0].text
            assert enums == "Elicitation completed: action=decline, content={}"

            logs.clear()  # SEP-1699: the server closes the stream mid-call, the client resumes
            reconnected = await call("test_reconnection")
            assert reconnected[0].text == "Reconnection test completed"
            assert logs == ["Before disconnect", "After reconnect"]

            text = await session.read_resource("test://static-text")
            assert text.contents[0].text == "This is the content of the static text resource."  # type: ignore[union-attr]
            binary = await session.read_resource("test://static-binary")
            assert binary.contents[0].blob == PNG_1PX  # type: ignore[union-attr]
            templated = await session.read_resource("test://template/42/data")
            assert json.loads(templated.contents[0].text) == {  # type: ignore[union-attr]
                "id": "42",
                "templateTest": True,
                "data": "Data for ID: 42",
            }
            listed = await session.list_resource_templates()
            assert listed.resource_templates[0].uri_template == "test://template/{id}/data"
            await session.subscribe_resource(WATCHED_URI)
            await session.unsubscribe_resource(WATCHED_URI)
            await session.set_logging_level("warning")
            logs.clear()
            await call("test_tool_with_logging")
            assert logs == []  # info is below the session's level now

            simple = await session.get_prompt("test_simple_prompt")
            assert simple.messages[0].content.text == "This is a simple prompt for testing."  # type: ignore[union-attr]
            args = await session.get_prompt(
                "test_prompt_with_arguments", {"arg1": "a", "arg2": "b"}
            )
            assert args.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"  # type: ignore[union-attr]
            res = await session.get_prompt(
                "test_prompt_with_embedded_resource", {"resourceUri": "test://x"}
            )
            assert res.messages[0].content.resource.uri == "test://x"  # type: ignore[union-attr]
            img = await session.get_prompt("test_prompt_with_image")
            assert img.messages[0].content.type == "image"
            completed = await session.complete(
                types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
                {"name": "arg1", "value": "a"},
            )
            assert completed.completion.values == ["alpha", "apple", "avocado"]
        assert node.statistics().endpoint.resumable_streams == 0
        assert node.statistics().endpoint.live_exchanges == 0
        assert node.statistics().endpoint.pending_client_answers == 0


class Recorder:
    """An emitter that records what a handler sends and answers server requests like a client."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        self.sent.append({"jsonrpc": "2.0", "method": method, "params": params})

    async def log(self, params: dict[str, Any]) -> None:
        await self.notify("notifications/message", params)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.sent.append({"jsonrpc": "2.0", "id": "s-1", "method": method, "params": params})
        if method == "sampling/createMessage":
            return {"role": "assistant", "content": {"type": "text", "text": "ok"}, "model": "m"}
        if method == "roots/list":
            return {"roots": [{"uri": "file:///work", "name": "work"}]}
        return {"action": "accept", "content": {"response": "ok"}}


USER = UserContext("u", uuid.uuid4(), "c", "free", frozenset())
TOOL_ARGS = {
    "test_sampling": {"prompt": "p"},
    "test_elicitation": {"message": "m"},
    "test_custom_header": {"region": "eu"},
}
SERVER_REQUESTS: dict[str, TypeAdapter[Any]] = {
    "sampling/createMessage": TypeAdapter(t.CreateMessageRequestParams),
    "elicitation/create": TypeAdapter(t.ElicitRequestParams),
    "roots/list": TypeAdapter(t.RequestParams),
}


@pytest.mark.parametrize("name", sorted(everything.tools))
async def test_each_fixture_tool_sends_valid_mcp_types(name: str) -> None:
    emitter = Recorder()
    params = {"name": name, "arguments": TOOL_ARGS.get(name, {}), "_meta": {"progressToken": 7}}
    result = await Dispatcher(everything).call(USER, "tools/call", params, emitter)
    t.CallToolResult.model_validate(result)
    if name.startswith("test_trigger_"):  # the hooks toggle a tool or prompt: toggle it back
        await Dispatcher(everything).call(USER, "tools/call", params, emitter)
    for message in emitter.sent:
        if "id" in message:
            t.JSONRPCRequest.model_validate(message)
            SERVER_REQUESTS[message["method"]].validate_python(message["params"])
        else:
            t.JSONRPCNotification.model_validate(message)


async def test_fixture_resources_and_prompts_validate_against_mcp_types() -> None:
    dispatcher = Dispatcher(everything)
    calls: list[tuple[str, dict[str, Any], type[Any]]] = [
        ("resources/list", {}, t.ListResourcesResult),
        ("resources/templates/list", {}, t.ListResourceTemplatesResult),
        ("prompts/list", {}, t.ListPromptsResult),
        ("resources/read", {"uri": "test://static-binary"}, t.ReadResourceResult),
        ("resources/read", {"uri": "test://template/7/data"}, t.ReadResourceResult),
        ("prompts/get", {"name": "test_prompt_with_image"}, t.GetPromptResult),
        (
            "prompts/get",
            {"name": "test_prompt_with_embedded_resource", "arguments": {"resourceUri": "a://b"}},
            t.GetPromptResult,
        ),
    ]
    for method, params, model in calls:
        model.model_validate(await dispatcher.call(USER, method, params, Recorder()))
    uris = {
        r["uri"]
        for r in (await dispatcher.call(USER, "resources/list", {}, Recorder()))["resources"]
    }
    assert uris == {"test://static-text", "test://static-binary", WATCHED_URI}
