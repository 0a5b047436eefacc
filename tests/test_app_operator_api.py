"""The operator API: schemas from type hints, argument errors that name the argument, tool failures
as error results, scopes enforced with 403 insufficient_scope and tiers with an error result, over
real HTTP."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import httpx
import pytest
from structlog.testing import capture_logs

from actors.sessions import UserContext
from server.app._steward import Context, Steward
from server.mcp._dispatch import Dispatcher, RpcError
from tests.harness._steward import McpClient, running_node, sign_in


def user(tier: str = "free", scopes: frozenset[str] = frozenset({"mcp:tools"})) -> UserContext:
    return UserContext("u1", uuid.uuid4(), "client", tier, scopes, "s1")


class Silent:
    async def notify(self, method: str, params: dict[str, Any]) -> None:
        pass

    async def log(self, params: dict[str, Any]) -> None:
        pass

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("no server request expected")


app = Steward("api-test")


@app.tool
async def plain(ctx: Context) -> str:
    """Registered with the bare decorator."""
    return ctx.user.user_id


@app.tool("forecast", description="The weather.")
async def forecast_fn(
    ctx: Context,
    city: Annotated[str, "a city name"],
    days: int = 3,
    units: Literal["metric", "imperial"] = "metric",
    tags: list[str] | None = None,
    ratio: float | None = None,
) -> dict[str, Any]:
    return {"city": city, "days": days, "units": units, "tags": tags, "ratio": ratio}


@app.tool(
    input_schema={
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    }
)
async def search(ctx: Context, **arguments: Any) -> str:
    return f"searched {arguments['q']}"


@app.tool()
async def broken(ctx: Context) -> str:
    raise KeyError("secret-internal-detail")


def test_the_input_schema_is_derived_from_the_type_hints() -> None:
    assert app.tools["forecast"].input_schema == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "a city name"},
            "days": {"type": "integer", "default": 3},
            "units": {"enum": ["metric", "imperial"], "default": "metric"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ratio": {"type": "number"},
        },
        "required": ["city"],
    }
    assert app.tools["forecast"].description == "The weather."
    assert app.tools["plain"].input_schema == {"type": "object", "properties": {}}
    assert app.tools["plain"].description == "Registered with the bare decorator."
    assert app.tools["search"].input_schema["required"] == ["q"]


def test_a_minimum_tier_must_be_one_of_the_tiers() -> None:
    with pytest.raises(ValueError, match="min_tier 'gold' is not one of"):

        @app.tool(min_tier="gold")
        async def shiny(ctx: Context) -> str:
            return ""


@pytest.mark.parametrize(
    ("arguments", "names"),
    [
        ({}, "missing the required argument 'city'"),
        ({"city": 3}, "argument 'city' of tool 'forecast' must be of type string, got int"),
        ({"city": "x", "days": "3"}, "argument 'days' of tool 'forecast' must be of type integer"),
        ({"city": "x", "days": True}, "argument 'days' of tool 'forecast' must be of type integer"),
        ({"city": "x", "units": "kelvin"}, "argument 'units' of tool 'forecast' must be one of"),
        ({"city": "x", "colour": "red"}, "tool 'forecast' has no argument 'colour'"),
        (["x"], "arguments of tool 'forecast' must be an object"),
    ],
)
async def test_invalid_arguments_are_invalid_params_naming_the_argument(
    arguments: Any, names: str
) -> None:
    params = {"name": "forecast", "arguments": arguments}
    with pytest.raises(RpcError) as info:
        await Dispatcher(app).call(user(), "tools/call", params, Silent())
    assert info.value.code == -32602
    assert names in info.value.message
    assert "Traceback" not in info.value.message


async def test_valid_arguments_reach_the_handler_with_defaults() -> None:
    params = {"name": "forecast", "arguments": {"city": "Oslo", "ratio": 1}}
    result = await Dispatcher(app).call(user(), "tools/call", params, Silent())
    assert result["structuredContent"] == {
        "city": "Oslo",
        "days": 3,
        "units": "metric",
        "tags": None,
        "ratio": 1,
    }
    searched = await Dispatcher(app).call(
        user(), "tools/call", {"name": "search", "arguments": {"q": "owls"}}, Silent()
    )
    assert searched["content"] == [{"type": "text", "text": "searched owls"}]


async def test_a_tool_that_raises_answers_an_error_result_and_is_logged() -> None:
    with capture_logs() as logs:
        result = await Dispatcher(app).call(
            user(), "tools/call", {"name": "broken", "arguments": {}}, Silent()
        )
    assert result["isError"] is True
    assert result["content"][0]["text"].startswith("tool 'broken' failed: KeyError")
    assert "Traceback" not in result["content"][0]["text"]
    assert [e["event"] for e in logs] == ["tool_failed"]
    assert logs[0]["tool"] == "broken" and logs[0]["error"] == "KeyError"


async def test_an_unknown_tool_is_invalid_params() -> None:
    with pytest.raises(RpcError) as info:
        await Dispatcher(app).call(user(), "tools/call", {"name": "nope"}, Silent())
    assert info.value.code == -32602 and "'nope'" in info.value.message


async def test_scopes_are_enforced_with_403_and_tiers_with_an_error_result(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        # the demo's echo needs mcp:tools; report needs the pro tier
        narrow = await sign_in(http, node, "alice", scope="mcp:resources")
        mcp = McpClient(http, node, narrow["access_token"])
        await mcp.initialize()
        r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and "mcp:tools" in challenge
        assert "resource_metadata=" in challenge
        assert "mcp:tools" in r.json()["error_description"]

        free = McpClient(http, node, (await sign_in(http, node, "alice"))["access_token"])
        await free.initialize()
        r = await free.post("tools/call", {"name": "report", "arguments": {"topic": "t"}})
        assert r.status_code == 200
        assert r.json()["result"]["isError"] is True
        assert r.json()["result"]["content"][0]["text"] == (
            "tool 'report' needs the pro tier or above; this account is free"
        )
        assert (await free.call("tools/call", {"name": "echo", "arguments": {"text": "ok"}}))[
            "result"
        ]["content"][0]["text"] == "ok"
        r = await free.post("tools/call", {"name": "echo", "arguments": {"text": 5}})
        assert r.status_code == 200 and r.json()["error"]["code"] == -32602

        pro = McpClient(http, node, (await sign_in(http, node, "bob"))["access_token"])
        await pro.initialize()
        done = await pro.call("tools/call", {"name": "report", "arguments": {"topic": "t"}})
        assert done["result"]["isError"] is False
