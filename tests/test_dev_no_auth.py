"""``dev_no_auth`` (``steward serve --dev-no-auth``): authorization off for conformance runs, refused
outside a development configuration; without it every MCP request still needs a token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.config._settings import ConfigError, load_settings
from server.dev._sign_in import DEV_USER
from tests.harness._steward import McpClient, running_node

UPSTREAM = {
    "issuer": "https://idp.example.com",
    "authorization_endpoint": "https://idp.example.com/authorize",
    "token_endpoint": "https://idp.example.com/token",
    "client_id": "steward",
}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"upstream": UPSTREAM}, "needs the development IdP"),
        ({"dev_idp": False}, "needs the development IdP"),
        ({"host": "0.0.0.0"}, "host must be 127.0.0.1, ::1 or localhost, got '0.0.0.0'"),
        ({"host": "192.168.1.10"}, "binds to loopback only"),
        ({"public_url": "https://mcp.example.com"}, "public_url must name a loopback host"),
        ({"workers": 2}, "runs one process only"),
    ],
)
def test_dev_no_auth_is_refused_outside_a_development_configuration(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="dev_no_auth") as info:
        load_settings(environ={}, overrides={"dev_no_auth": True, **overrides})
    assert message in str(info.value)


def test_dev_no_auth_is_allowed_on_loopback_with_the_development_idp() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        settings = load_settings(
            environ={"STEWARD_DEV_NO_AUTH": "true"},
            overrides={"host": host, "public_url": "http://localhost:8000"},
        )
        assert settings.dev_no_auth
    assert not load_settings(environ={}).dev_no_auth  # off unless asked for


async def _whoami(mcp: McpClient) -> dict[str, Any]:
    await mcp.initialize()
    reply = await mcp.call("tools/call", {"name": "whoami", "arguments": {}})
    me: dict[str, Any] = reply["result"]["structuredContent"]
    return me


async def test_with_dev_no_auth_every_request_runs_as_the_development_user(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, dev_no_auth=True) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        me = await _whoami(McpClient(http, node, ""))  # no Authorization header
        assert me["user"].endswith(f"|{DEV_USER}")
        assert me["tier"] == "enterprise"
        assert set(me["scopes"]) == {"mcp:tools", "mcp:resources", "mcp:prompts"}
        # a token, even a made-up one, changes nothing: the flag means no authorization at all
        assert await _whoami(McpClient(http, node, "made-up")) == me


async def test_without_dev_no_auth_mcp_still_needs_a_token(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        for token in ("", "made-up"):
            r = await McpClient(http, node, token).post("ping")
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer ")
