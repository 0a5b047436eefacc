"""The MCP Inspector's web UI in headless Chromium (inspector_web.py drives it as a person would):
it connects to ``steward serve``, the person signs in at the development IdP's page and allows the
consent, and runs tools from the Tools tab; the free user's list lacks the pro tool.

Two versions, both pinned: the current one (2.12), whose page sends every MCP and OAuth request
through its own backend, and v1 (1.0.3, the npm alias ``inspector-direct``) with its Connection
Type set to Direct, whose page fetches Steward itself: the browser client that needs CORS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.admin_browser import CHROMIUM
from tests.interop._child import child
from tests.interop.conftest import FREE_USER, PRO_USER, ROOT, Clients, Steward
from tests.interop.test_mcp_remote import free_port

LIMIT = 60.0
SHOTS = ROOT / ".ci" / ".cache" / "interop-screenshots"


def web_ui(clients: Clients, steward: Steward, home: Path, user: str) -> dict[str, Any]:
    env = clients.env(
        home,
        CLIENT_PORT=str(free_port()),
        MCP_SANDBOX_PORT=str(free_port()),
        MCP_AUTO_OPEN_ENABLED="false",
        MCP_INSPECTOR_SECRET_STORE="memory",
    )
    cmd = [
        clients.node,
        clients.bin("@modelcontextprotocol/inspector", "mcp-inspector"),
        "--web",
        "--server-url",
        steward.mcp_url,
        "--transport",
        "http",
    ]
    with child(cmd, env=env, cwd=home) as c:
        line = c.wait_for(lambda s: "MCP_INSPECTOR_API_TOKEN=" in s, LIMIT)
        url = re.search(r"http://\S+", line)
        assert url is not None, line
        SHOTS.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "tests.interop.inspector_web", url.group(0), user, str(SHOTS)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")},
        )
        assert done.returncode == 0, done.stderr
        seen: dict[str, Any] = json.loads(done.stdout)
        return seen


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_inspector_web_ui_signs_in_and_runs_tools(clients: Clients, steward: Steward) -> None:
    for user in (FREE_USER, PRO_USER):
        with tempfile.TemporaryDirectory(prefix="stw-inspector-web-") as home:
            seen = web_ui(clients, steward, Path(home), user)
        assert "error" not in seen, (seen.get("error"), seen.get("url"), seen.get("body"))
        assert seen["connected"] and seen["echo"] == "from the web ui"
        assert {"echo", "count"} <= set(seen["tools"])
        if user == FREE_USER:
            # the free user is not shown the pro tool, so the UI offers no way to call it
            assert "report" not in seen["tools"] and "report" not in seen
        else:
            assert "report" in seen["tools"]
            assert seen["report"].startswith("report on q3 for ")
        # this version of the web UI has no direct connection: MCP and OAuth requests go through
        # its own backend (/api/fetch, /api/mcp/*); the browser meets Steward only in the sign-in
        # and consent pages
        paths = [f"{steward.base_url}{p}" for p in ("/mcp", "/token", "/register", "/.well-known")]
        direct = [r for r in seen["requests"] if r.split(" ", 1)[1].startswith(tuple(paths))]
        assert direct == [], direct


def direct_web_ui(clients: Clients, steward: Steward, home: Path, user: str) -> dict[str, Any]:
    """Inspector v1's web UI (the last one with a direct connection), started on free ports."""
    client_port, proxy_port = free_port(), free_port()
    env = clients.env(
        home,
        CLIENT_PORT=str(client_port),
        SERVER_PORT=str(proxy_port),
        MCP_AUTO_OPEN_ENABLED="false",
    )
    cmd = [clients.node, clients.bin("inspector-direct", "mcp-inspector")]
    with child(cmd, env=env, cwd=home) as c:
        line = c.wait_for(lambda s: "MCP_PROXY_AUTH_TOKEN=" in s, LIMIT)
        token = re.search(r"MCP_PROXY_AUTH_TOKEN=(\w+)", line)
        assert token is not None, line
        query = urlencode(
            {
                # the proxy's address in the URL is kept across the OAuth redirect
                "MCP_PROXY_FULL_ADDRESS": f"http://localhost:{proxy_port}",
                "MCP_PROXY_AUTH_TOKEN": token.group(1),
                "transport": "streamable-http",
                "serverUrl": steward.mcp_url,
            }
        )
        url = f"http://localhost:{client_port}/?{query}"
        SHOTS.mkdir(parents=True, exist_ok=True)
        script = ["-m", "tests.interop.inspector_web", "direct", url, user, str(SHOTS)]
        done = subprocess.run(
            [sys.executable, *script, steward.mcp_url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")},
        )
        assert done.returncode == 0, done.stderr
        seen: dict[str, Any] = json.loads(done.stdout)
        seen["origin"] = f"http://localhost:{client_port}"
        (SHOTS / f"direct-{user}.json").write_text(json.dumps(seen, indent=1))
        return seen


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_inspector_web_ui_direct_connection_signs_in_and_runs_tools(
    clients: Clients, steward: Steward
) -> None:
    """The page on the Inspector's origin talks to Steward itself: discovery, registration, the
    token exchange and every MCP request are cross-origin fetches that CORS lets it read."""
    for user in (FREE_USER, PRO_USER):
        with tempfile.TemporaryDirectory(prefix="stw-inspector-direct-") as home:
            seen = direct_web_ui(clients, steward, Path(home), user)
        assert "error" not in seen, (seen.get("error"), seen.get("url"), seen.get("body"))
        assert seen["connected"] and seen["echo"] == "from the browser, direct"
        if user == FREE_USER:
            assert seen["tools"] == ["echo", "count"]  # not report: the UI cannot offer it
        else:
            assert seen["tools"] == ["echo", "count", "report"]
            assert seen["report"].strip('"').startswith("report on q3 for ")
        # the code exchange worked; a second Connect (inspector_web.run_direct) only after the
        # page itself spent the code twice, which Steward refuses the second time
        tokens = [status for _, path, status, _ in seen["cors"] if path == "/token"]
        assert 200 in tokens, seen["cors"]
        if "connect_again" in seen:
            assert any("authorization code already used" in m for m in seen["console"]) or (
                tokens.count(200) == 1 and "signed_in_again" not in seen
            ), (seen["console"], seen["cors"])
        fetched = {(method, path) for method, path, _, _ in seen["cors"]}
        assert {
            ("GET", "/.well-known/oauth-protected-resource/mcp"),
            ("GET", "/.well-known/oauth-authorization-server"),
            ("POST", "/register"),
            ("POST", "/token"),
            ("POST", "/mcp"),
            ("GET", "/mcp"),
        } <= fetched, seen["cors"]
        for method, path, status, allowed in seen["cors"]:
            # the metadata documents are public (any origin); the rest names the page's origin
            expected = "*" if path.startswith("/.well-known/") else seen["origin"]
            assert allowed == expected, (method, path, status, allowed)
