"""An upstream refresh that fails for good is one exception, AuthenticationRequiredError, and every
endpoint answers it the same way: 401 with the challenge that starts re-authorization (MCP-R21,
R23)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from actors.sessions import AuthenticationRequiredError, SessionPolicy
from server.app._steward import Context, Steward
from tests.harness._pg import psql
from tests.harness._steward import McpClient, running_node, sign_in
from tests.harness._wait import wait_until

app = Steward("reauth-test")


@app.tool()
async def upstream_after_sign_out(ctx: Context) -> str:
    """Ends its own session, then asks for the upstream token (as a refresh failing meanwhile would)."""
    session = ctx._emit.session
    await session.invalidate("reauth_required", "the identity provider revoked the grant")
    return await ctx.upstream_token()


def metadata_url_for_sse(node: Any) -> str:
    return f"{node.info.base_url}/.well-known/oauth-protected-resource/sse"


def assert_challenge(r: httpx.Response, metadata_url: str, reason: str | None = None) -> None:
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{metadata_url}"' in challenge
    assert r.json()["error"] == "invalid_token"
    if reason is not None:
        assert reason in r.json()["error_description"]


async def test_a_refresh_refused_for_good_is_answered_401_with_the_challenge_everywhere(
    fresh_db: str,
) -> None:
    policy = SessionPolicy(
        refresh_lead=0.5, refresh_lead_fraction=0.5, refresh_floor=0.1, refresh_jitter=0.0
    )
    async with (
        running_node(fresh_db, session_policy=policy) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert node.dev_idp is not None
        node.dev_idp.access_ttl = 1.0  # upstream tokens live 1 s: the keeper refreshes soon
        tokens = await sign_in(http, node, "carol")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        grant = uuid.UUID(psql(fresh_db, "SELECT grant_id FROM grants"))
        r = await http.post(  # the user is revoked at the IdP: every refresh is refused from now on
            f"{node.dev_idp.issuer}/_control/revoke_user",
            json={"user": "carol"},
            headers={"x-control-secret": node.dev_idp.control_secret},
        )
        assert r.status_code == 200
        psql(fresh_db, "UPDATE upstream_tokens SET access_expires_at = now()")
        with pytest.raises(AuthenticationRequiredError) as refused:
            await node.sessions.refresh_upstream(grant)
        assert refused.value.reason == "reauth_required" and refused.value.grant_id == grant
        with trio.fail_after(10):  # the token keeper's own refresh is refused too
            while (r := await mcp.post("ping")).status_code != 401:
                await trio.sleep(0.05)
        metadata = node.resource_server.metadata_url
        assert_challenge(r, metadata)
        bearer = {"authorization": f"Bearer {tokens['access_token']}"}
        get = await http.get(mcp.url, headers={**mcp.headers(), "accept": "text/event-stream"})
        assert_challenge(get, metadata)
        legacy = await http.get(
            f"{node.info.listen_url}/sse", headers={**bearer, "accept": "text/event-stream"}
        )
        # the deprecated transport's challenge names the /sse resource's document (RFC 9728)
        assert_challenge(legacy, node.resource_server.metadata_url_for("/sse"))
        assert metadata_url_for_sse(node) == node.resource_server.metadata_url_for("/sse")
        # the session ends here first; the row commits right after
        await wait_until(
            lambda: psql(fresh_db, "SELECT status FROM grants") == "reauth_required",
            within=5,
            every=0.05,
        )


async def test_authentication_required_inside_a_tool_is_the_same_401(fresh_db: str) -> None:
    async with running_node(fresh_db, app) as node, httpx.AsyncClient(timeout=10) as http:
        tokens = await sign_in(http, node, "bob")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        r = await mcp.post("tools/call", {"name": "upstream_after_sign_out", "arguments": {}})
        assert_challenge(r, node.resource_server.metadata_url, "the session is reauth_required")
        assert_challenge(await mcp.post("ping"), node.resource_server.metadata_url)
