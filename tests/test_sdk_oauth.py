"""The official SDK client's OAuth flow against Steward: discovery from the 401 (MCP-R21, R25),
registration (R29), authorization with PKCE and consent (R22, R26, R28, R30, R31), token refresh
(R27) and re-authorization after the session was invalidated (R23)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import trio
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientMetadata,
)

from tests.harness._pg import psql
from tests.harness._sdk_storage import MemoryStorage
from tests.harness._steward import running_node

REDIRECT = "http://127.0.0.1:9/oauth/callback"


class Browser:
    """Plays the user: signs in at the development IdP as ``user`` and allows the consent."""

    def __init__(self, node: Any, user: str) -> None:
        self.node = node
        self.user = user
        self.result: AuthorizationCodeResult | None = None
        self.sign_ins = 0

    async def redirect(self, url: str) -> None:
        self.sign_ins += 1
        local = url.replace(self.node.info.base_url, self.node.info.listen_url, 1)
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.get(local + f"&login_hint={self.user}")
            assert r.status_code == 302, r.text
            r = await http.get(r.headers["location"])
            r = await http.get(
                r.headers["location"].replace(self.node.info.base_url, self.node.info.listen_url, 1)
            )
            if r.status_code == 200:
                assert "Allow" in r.text and self.node.info.base_url not in ("",)
                cookie = r.headers["set-cookie"].split(";")[0]
                fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
                r = await http.post(
                    f"{self.node.info.listen_url}/consent",
                    data={**fields, "decision": "allow"},
                    headers={"cookie": cookie},
                )
            assert r.status_code == 302, r.text
            location = r.headers["location"]
            assert location.startswith(REDIRECT)
            q = parse_qs(urlsplit(location).query)
            self.result = AuthorizationCodeResult(
                code=q["code"][0], state=q["state"][0], iss=q["iss"][0]
            )

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


def sdk_provider(
    node: Any, browser: Browser, storage: MemoryStorage, server_url: str | None = None
) -> OAuthClientProvider:
    """The SDK's OAuth provider for a public client, signing in through ``browser``."""
    return OAuthClientProvider(
        server_url=server_url or node.info.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="sdk test",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
    )


async def test_the_sdk_oauth_provider_signs_in_refreshes_and_reauthorizes(fresh_db: str) -> None:
    async with running_node(fresh_db, access_token_ttl=2.0) as node:
        browser = Browser(node, "bob")
        storage = MemoryStorage()
        provider = sdk_provider(node, browser, storage)
        url = f"{node.info.listen_url}/mcp"
        # the client reaches Steward on its socket; the URLs it discovers name the same host
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as client,
            streamable_http_client(url, http_client=client) as (read, write, *_),
        ):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert browser.sign_ins == 1 and storage.tokens is not None
                first_access = storage.tokens.access_token
                assert (await session.call_tool("whoami", {})).structured_content["tier"] == "pro"  # type: ignore[index]
                # the access token expires: the SDK refreshes before its next request
                await trio.sleep(2.5)
                await session.call_tool("echo", {"text": "after refresh"})
                assert storage.tokens.access_token != first_access
                refreshes = int(
                    psql(fresh_db, "SELECT count(*) FROM auth_events WHERE kind = 'token_refresh'")
                    or 0
                )
                assert refreshes >= 1 and browser.sign_ins == 1
                # the operator ends the grant: the next request gets 401, the refresh is refused,
                # and the SDK goes back through authorization and continues
                grant = psql(fresh_db, "SELECT grant_id FROM grants WHERE status = 'active'")
                import uuid

                await node.sessions.invalidate(
                    uuid.UUID(grant), reason="reauth_required", message="sign in again"
                )
                result = await session.call_tool("echo", {"text": "after re-authorization"})
                assert result.content[0].text == "after re-authorization"  # type: ignore[union-attr]
                assert browser.sign_ins == 2


async def test_the_sdk_sse_client_discovers_signs_in_and_works_from_sse(fresh_db: str) -> None:
    """The deprecated transport's client starts at /sse: the 401 there names the metadata of the
    /sse resource (RFC 9728, path-suffixed), the SDK's resource check passes, the token it gets
    is bound to /sse and works on /sse and /messages, and on /mcp (one resource, docs/security.md)."""
    from mcp.client.sse import sse_client

    async with running_node(fresh_db) as node:
        browser = Browser(node, "carol")
        storage = MemoryStorage()
        provider = sdk_provider(node, browser, storage, f"{node.info.base_url}/sse")
        with trio.fail_after(30):
            async with (
                sse_client(f"{node.info.listen_url}/sse", auth=provider) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("echo", {"text": "over the old transport"})
                assert result.content[0].text == "over the old transport"  # type: ignore[union-attr]
        assert browser.sign_ins == 1 and storage.tokens is not None
        resource = psql(fresh_db, "SELECT DISTINCT resource FROM tokens WHERE kind = 'access'")
        assert resource == f"{node.info.base_url}/sse"
        async with httpx.AsyncClient(timeout=20) as http:
            # the /sse metadata names /sse; the canonical one still names /mcp
            prm = await http.get(f"{node.info.listen_url}/.well-known/oauth-protected-resource/sse")
            assert prm.json()["resource"] == f"{node.info.base_url}/sse"
            prm = await http.get(f"{node.info.listen_url}/.well-known/oauth-protected-resource")
            assert prm.json()["resource"] == node.info.mcp_url
            # a token for /sse is this server's: accepted on /mcp too
            r = await http.post(
                f"{node.info.listen_url}/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                },
                headers={
                    "authorization": f"Bearer {storage.tokens.access_token}",
                    "accept": "application/json, text/event-stream",
                },
            )
            assert r.status_code == 200, r.text
            # the challenge of each endpoint names its own metadata document
            for path, named in (("/sse", "/sse"), ("/messages", "/sse"), ("/mcp", "/mcp")):
                method = "GET" if path == "/sse" else "POST"
                r = await http.request(
                    method,
                    f"{node.info.listen_url}{path}",
                    headers={"content-type": "application/json", "accept": "text/event-stream"},
                )
                assert r.status_code == 401
                assert (
                    f'resource_metadata="{node.info.base_url}/.well-known/oauth-protected-resource{named}"'
                    in r.headers["www-authenticate"]
                )
