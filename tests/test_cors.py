"""CORS for browser-based clients: preflights answered, the public metadata documents readable by
any origin, /mcp, /sse, /messages, /token, /register and /revoke by the allowed origins only,
with the headers a client must read exposed; over HTTP, and in Chromium from a page on an
allowed and on a foreign origin."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness._extras import require_browser
from tests.harness._steward import MCP_HEADERS, McpClient, running_node, sign_in
from tests.harness._wait import wait_until

APP = "https://app.example"
EVIL = "https://evil.example"
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")

PUBLIC = (
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
    "/.well-known/oauth-protected-resource/sse",
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
)
RESTRICTED = {
    "/mcp": "GET, POST, DELETE",
    "/sse": "GET",
    "/messages": "POST",
    "/token": "POST",
    "/register": "POST",
    "/revoke": "POST",
}


def preflight(origin: str, method: str, headers: str = "") -> dict[str, str]:
    out = {"origin": origin, "access-control-request-method": method}
    if headers:
        out["access-control-request-headers"] = headers
    return out


async def test_preflights_and_responses_carry_cors_for_allowed_origins_only(
    fresh_db: str,
) -> None:
    async with (
        running_node(fresh_db, allowed_origins=[APP]) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        base = node.info.listen_url
        asked = "authorization, content-type, mcp-session-id, mcp-protocol-version, last-event-id"
        for path, methods in RESTRICTED.items():
            r = await http.options(f"{base}{path}", headers=preflight(APP, "POST", asked))
            assert r.status_code == 204, (path, r.text)
            assert r.headers["access-control-allow-origin"] == APP
            assert r.headers["access-control-allow-methods"] == methods
            allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
            assert {h.strip() for h in asked.split(",")} <= allowed
            assert r.headers["vary"] == "Origin" and r.headers["access-control-max-age"] == "600"
            # a foreign origin's preflight is refused, with nothing a browser would accept
            r = await http.options(f"{base}{path}", headers=preflight(EVIL, "POST", asked))
            assert r.status_code == 403, (path, r.text)
            assert "access-control-allow-origin" not in r.headers
            assert "evil.example" in r.json()["error_description"]
        for path in PUBLIC:
            r = await http.options(f"{base}{path}", headers=preflight(EVIL, "GET"))
            assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
            r = await http.get(f"{base}{path}", headers={"origin": EVIL})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        # a 2026-07-28 client's Mcp-Param-<name> headers are allowed as asked
        r = await http.options(
            f"{base}/mcp", headers=preflight(APP, "POST", "mcp-method, mcp-name, mcp-param-city")
        )
        assert "mcp-param-city" in r.headers["access-control-allow-headers"]
        # a plain OPTIONS (no preflight) says what the path allows
        r = await http.options(f"{base}/mcp")
        assert r.status_code == 204 and r.headers["allow"] == "OPTIONS, GET, POST, DELETE"

        # the answers themselves: the 401's challenge and the session id are readable by APP
        r = await http.post(
            f"{base}/mcp", headers={**MCP_HEADERS, "origin": APP}, json={"jsonrpc": "2.0"}
        )
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP
        exposed = r.headers["access-control-expose-headers"]
        assert exposed == "Mcp-Session-Id, WWW-Authenticate, MCP-Protocol-Version"
        tokens = await sign_in(http, node, "bob")
        mcp = McpClient(http, node, tokens["access_token"])
        r = await mcp.post(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
            origin=APP,
        )
        assert r.status_code == 200 and r.headers["mcp-session-id"]
        assert r.headers["access-control-allow-origin"] == APP
        r = await http.post(
            f"{base}/register",
            json={"redirect_uris": ["http://127.0.0.1:9/cb"]},
            headers={"origin": APP},
        )
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == APP
        r = await http.post(f"{base}/token", data={"grant_type": "nope"}, headers={"origin": APP})
        assert r.status_code == 400 and r.headers["access-control-allow-origin"] == APP
        # a foreign origin: /mcp refuses it, and nothing anywhere lets its page read an answer
        r = await mcp.post("ping", origin=EVIL)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        r = await http.post(f"{base}/token", data={"grant_type": "nope"}, headers={"origin": EVIL})
        assert "access-control-allow-origin" not in r.headers
        # the public URL's own origin is always allowed
        r = await http.options(f"{base}/mcp", headers=preflight(node.info.base_url, "POST"))
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == node.info.base_url


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@pytest.fixture
def chromium() -> Path:
    return require_browser()


async def test_a_page_on_an_allowed_origin_uses_mcp_in_chromium_and_a_foreign_one_cannot(
    fresh_db: str, chromium: Path
) -> None:
    """Two pages on 127.0.0.1, one on a configured origin and one not, run fetch() against /mcp
    with a bearer token: the first initializes, reads Mcp-Session-Id, calls a tool, reads a 401's
    WWW-Authenticate and deletes its session; the second's requests are refused."""
    allowed, foreign = _listening(), _listening()
    try:
        page_origin = f"http://127.0.0.1:{allowed.getsockname()[1]}"
        async with (
            running_node(fresh_db, allowed_origins=[page_origin]) as node,
            httpx.AsyncClient(timeout=20) as http,
        ):
            tokens = await sign_in(http, node, "bob")
            command = [
                sys.executable,
                "-m",
                "tests.cors_browser",
                str(allowed.fileno()),
                str(foreign.fileno()),
                f"{node.info.listen_url}/mcp",
                tokens["access_token"],
            ]
            out = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    command,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    pass_fds=(allowed.fileno(), foreign.fileno()),
                )
            )
            assert out.returncode == 0, out.stderr[-3000:]
            seen = json.loads(out.stdout)
            ended = await node.store.fetchval(
                "SELECT count(*) FROM transport_sessions WHERE ended_at IS NOT NULL"
            )
    finally:
        allowed.close()
        foreign.close()
    good = seen["allowed"]
    assert good["ok"] is True, good
    assert len(good["sessionId"]) >= 16
    assert good["server"] == "steward-demo"
    assert good["initialized"] == 202
    assert good["text"] == "from the browser"
    assert good["deleted"] == 204
    assert good["unauthorized"] == 401
    assert 'resource_metadata="' in good["challenge"]
    assert ended == 1
    bad = seen["foreign"]
    assert bad["ok"] is False and "Failed to fetch" in bad["error"], bad
    assert any("CORS" in line for line in bad["console"]), bad


async def test_an_unexpected_error_is_a_500_a_browser_can_read_and_is_counted(
    fresh_db: str,
) -> None:
    """A defect in an endpoint is answered 500 through the same send as every answer: with the
    CORS headers of the origin, and counted under its status (it was sent around them, counted
    as status 0)."""
    from tests.harness._steward import running_node

    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        real = node.asgi.oauth

        class Broken:
            paths = real.paths

            def handles(self, path: str) -> bool:
                return real.handles(path)

            async def __call__(self, scope: object, receive: object, send: object) -> None:
                raise RuntimeError("a defect")

        node.asgi.oauth = Broken()  # type: ignore[assignment]
        origin = "http://127.0.0.1:5173"
        r = await http.post(f"{node.info.listen_url}/token", data={}, headers={"origin": origin})
        assert r.status_code == 500 and r.json()["error"] == "server_error"
        assert r.headers["access-control-allow-origin"] == origin
        # counted once the request's task ends, after the answer
        await wait_until(
            lambda: any(status == 500 for (_, _, status) in node.asgi.requests.counts),
            within=5,
            every=0.01,
        )
        assert not any(status == 0 for (_, _, status) in node.asgi.requests.counts)
