"""The MCP Inspector's web UI (@modelcontextprotocol/inspector, pinned) in headless Chromium
(inspector_web.py drives it as a person would): it connects to ``steward serve``, the person signs
in at the development IdP's page and allows the consent, and runs tools from the Tools tab; the
free user's list lacks the pro tool."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.admin_browser import CHROMIUM
from tests.interop._child import child
from tests.interop.conftest import FREE_USER, PRO_USER, ROOT, Clients, Steward
from tests.interop.test_mcp_remote import free_port

LIMIT = 60.0
SHOTS = ROOT / ".ci" / ".cache" / "interop-screenshots"


def web_ui(clients: Clients, steward: Steward, home: Path, user: str) -> dict[str, Any]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "CLIENT_PORT": str(free_port()),
        "MCP_SANDBOX_PORT": str(free_port()),
        "MCP_AUTO_OPEN_ENABLED": "false",
        "MCP_INSPECTOR_SECRET_STORE": "memory",
    }
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
