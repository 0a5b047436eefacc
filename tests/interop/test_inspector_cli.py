"""The MCP Inspector's CLI (@modelcontextprotocol/inspector, pinned) against ``steward serve`` in
both protocol eras (legacy: 2025-11-25 with initialize; modern: 2026-07-28): its OAuth flow
prints the authorization URL and waits on its loopback callback, where the person's browser
(tests/interop/_user.py) delivers the code; later runs use the stored token. The free user's
tools/list lacks the pro tool; the CLI then refuses to call it itself (it calls only a listed tool),
so Steward's sentence cannot reach this client: the test shows the CLI's own answer."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.interop import _user
from tests.interop._child import child
from tests.interop.conftest import FREE_USER, PRO_USER, Clients, Steward
from tests.interop.test_mcp_remote import free_port

LIMIT = 60.0
PROMPT = "Please navigate to: "


def inspector(
    clients: Clients, steward: Steward, home: Path, port: int, era: str, user: str, *args: str
) -> tuple[dict[str, Any], bool]:
    """One CLI run; returns its JSON result (on failure its error envelope) and whether it asked
    the user to sign in."""
    env = clients.env(
        home,
        BROWSER="true",  # the browser "opens" and does nothing: the test signs in
        MCP_AUTO_OPEN_ENABLED="true",  # no TTY here: sign in all the same
        MCP_INSPECTOR_SECRET_STORE="file",  # in HOME: the next run reuses the token
    )
    cmd = [
        clients.node,
        clients.bin("@modelcontextprotocol/inspector", "mcp-inspector"),
        "--cli",
        steward.mcp_url,  # first: --tool-arg takes every value after it
        "--format",
        "json",
        "--protocol-era",
        era,
        "--callback-url",
        f"http://127.0.0.1:{port}/oauth/callback",
        *args,
    ]
    with child(cmd, env=env) as c:
        signed_in = False
        # stdout: the result; stderr: the sign-in prompt, or the error envelope
        stream, line = c.wait_any(lambda _, s: s.startswith((PROMPT, "{")), LIMIT)
        if line.startswith(PROMPT):
            _user.sign_in(line.removeprefix(PROMPT), user, steward.servers, deliver=True)
            signed_in = True
            stream, line = c.wait_any(lambda _, s: s.startswith("{"), LIMIT)
        status = c.proc.wait(LIMIT)
        result: dict[str, Any] = json.loads(line)
        assert (stream == "stdout") is (status == 0), (status, result, c.err)
        return result, signed_in


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_the_inspector_cli_signs_in_and_works(clients: Clients, steward: Steward, era: str) -> None:
    for user in (FREE_USER, PRO_USER):
        with tempfile.TemporaryDirectory(prefix="stw-inspector-") as home:
            as_user(clients, steward, Path(home), era, user)


def as_user(clients: Clients, steward: Steward, home: Path, era: str, user: str) -> None:
    port = free_port()

    def run(*args: str) -> tuple[dict[str, Any], bool]:
        return inspector(clients, steward, home, port, era, user, *args)

    listed, signed_in = run("--method", "tools/list")
    assert signed_in
    names = {t["name"] for t in listed["result"]["tools"]}
    assert {"echo", "count"} <= names
    # the next runs use the token the first one stored
    echoed, signed_in = run(
        "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "text=from the cli"
    )
    assert not signed_in
    assert echoed["result"]["content"][0]["text"] == "from the cli"
    report, signed_in = run(
        "--method", "tools/call", "--tool-name", "report", "--tool-arg", "topic=q3"
    )
    assert not signed_in
    if user == FREE_USER:
        # the CLI calls only a tool it was listed: the free user is not, so the CLI refuses
        # before asking Steward, and Steward's sentence cannot reach this client
        assert "report" not in names
        assert report == {
            "error": {"code": "tool_not_found", "message": "Tool 'report' not found on server."}
        }
    else:
        assert "report" in names
        text = report["result"]["content"][0]["text"]
        assert not report["result"].get("isError") and text.startswith("report on q3")
