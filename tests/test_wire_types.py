"""What Steward sends validates against the official mcp-types models."""

from __future__ import annotations

import uuid
from typing import Any

import mcp_types as t
import pytest

from actors.sessions import UserContext
from server.dev._demo import demo
from server.mcp._dispatch import Dispatcher, RpcError

USER = UserContext(
    "u", uuid.uuid4(), "c", "enterprise", frozenset({"mcp:tools", "mcp:resources", "mcp:prompts"})
)


class Quiet:
    """An emitter that records what a handler sends before its result."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        self.sent.append({"jsonrpc": "2.0", "method": method, "params": params})

    async def log(self, params: dict[str, Any]) -> None:
        await self.notify("notifications/message", params)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("no server request expected")


CASES: list[tuple[str, dict[str, Any], type[Any]]] = [
    ("tools/list", {}, t.ListToolsResult),
    ("tools/call", {"name": "echo", "arguments": {"text": "x"}}, t.CallToolResult),
    ("tools/call", {"name": "whoami", "arguments": {}}, t.CallToolResult),
    (
        "tools/call",
        {"name": "count", "arguments": {"to": 2}, "_meta": {"progressToken": 1}},
        t.CallToolResult,
    ),
    ("resources/list", {}, t.ListResourcesResult),
    ("resources/templates/list", {}, t.ListResourceTemplatesResult),
    ("resources/read", {"uri": "demo://readme"}, t.ReadResourceResult),
    ("resources/read", {"uri": "demo://users/ada"}, t.ReadResourceResult),
    ("prompts/list", {}, t.ListPromptsResult),
    ("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}}, t.GetPromptResult),
    (
        "completion/complete",
        {
            "ref": {"type": "ref/prompt", "name": "greet"},
            "argument": {"name": "name", "value": "a"},
        },
        t.CompleteResult,
    ),
    ("ping", {}, t.EmptyResult),
]


@pytest.mark.parametrize(
    ("method", "params", "model"), CASES, ids=[c[0] + ":" + str(i) for i, c in enumerate(CASES)]
)
async def test_results_validate(method: str, params: dict[str, Any], model: type[Any]) -> None:
    emitter = Quiet()
    result = await Dispatcher(demo).call(USER, method, params, emitter)
    model.model_validate(result)
    for message in emitter.sent:
        t.JSONRPCNotification.model_validate(message)
        if message["method"] == "notifications/progress":
            t.ProgressNotificationParams.model_validate(message["params"])
        else:
            t.LoggingMessageNotificationParams.model_validate(message["params"])


def test_initialize_and_discover_results_validate() -> None:
    dispatcher = Dispatcher(demo)
    t.InitializeResult.model_validate(dispatcher.initialize_result("2025-11-25"))
    assert dispatcher.initialize_result("1999-01-01")["protocolVersion"] == "2025-11-25"
    t.DiscoverResult.model_validate(dispatcher.discover_result())


async def test_errors_are_json_rpc_errors() -> None:
    with pytest.raises(RpcError) as info:
        await Dispatcher(demo).call(
            USER, "tools/call", {"name": "echo", "arguments": {"text": 3}}, Quiet()
        )
    error = {"jsonrpc": "2.0", "id": 1, "error": info.value.to_dict()}
    t.JSONRPCError.model_validate(error)
    assert info.value.code == -32602 and "'text'" in info.value.message
