"""``mcp-remote`` (the stdio-to-remote proxy desktop hosts use), driven over its stdin and stdout
as such a host does: it signs in through its loopback callback (the person's browser is played by
tests/interop/_user.py and delivers the code there), then initialize, tools/list, a tool call with
progress and the free user's call of the pro tool, in its default era and in ``--protocol auto``."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.interop import _user
from tests.interop._child import Child, child
from tests.interop.conftest import FREE_USER, PRO_USER, TIER_SENTENCE, Clients, Steward

LIMIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Host:
    """What a desktop host does on mcp-remote's stdio: JSON-RPC lines, answers matched by id."""

    def __init__(self, c: Child) -> None:
        self.c = c
        self.notes: list[dict[str, Any]] = []
        self.next_id = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self.c.send(
            json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        )
        return self.answer(self.next_id)

    def answer(self, id: int) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(
                self.c.wait_for(lambda s: s.startswith("{"), LIMIT)
            )
            if message.get("id") == id and "method" not in message:
                return message
            self.notes.append(message)


@pytest.mark.parametrize("era", ["legacy", "auto"])
def test_mcp_remote_signs_in_and_proxies(clients: Clients, steward: Steward, era: str) -> None:
    for user in (FREE_USER, PRO_USER):
        with tempfile.TemporaryDirectory(prefix="stw-mcp-remote-") as folder:
            as_user(clients, steward, Path(folder), era, user)


def as_user(clients: Clients, steward: Steward, config: Path, era: str, user: str) -> None:
    port = free_port()
    env = clients.env(
        config,
        MCP_REMOTE_CONFIG_DIR=str(config),
        BROWSER="true",  # the browser "opens" and does nothing: the test signs in
    )
    cmd = [
        clients.node,
        clients.bin("mcp-remote", "mcp-remote"),
        steward.mcp_url,
        str(port),
        "--transport",
        "http-only",
        "--protocol",
        era,
    ]
    with child(cmd, env=env) as c:
        host = Host(c)
        host.next_id = 1
        c.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "desktop host", "version": "1"},
                    },
                }
            )
        )
        c.wait_for(lambda s: "Please authorize this client" in s, LIMIT, stream="stderr")
        url = c.wait_for(lambda s: s.startswith("http"), LIMIT, stream="stderr")
        back = _user.sign_in(url, user, steward.servers, deliver=True)
        assert back.startswith(f"http://localhost:{port}/") or back.startswith(
            f"http://127.0.0.1:{port}/"
        ), back
        init = host.answer(1)
        assert init["result"]["protocolVersion"] == "2025-11-25"  # the host's era
        if era == "auto":  # stderr is read by its own thread: wait for the line
            c.wait_for(lambda s: "speaks MCP 2026-07-28" in s, LIMIT, stream="stderr")
        assert init["result"]["serverInfo"]["name"], init
        c.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        tools = host.request("tools/list", {})["result"]["tools"]
        names = {t["name"] for t in tools}
        assert {"echo", "count"} <= names
        counted = host.request(
            "tools/call",
            {"name": "count", "arguments": {"to": 3}, "_meta": {"progressToken": "p1"}},
        )
        assert counted["result"]["content"][0]["text"] == "counted to 3"
        progress = [
            n["params"]["progress"]
            for n in host.notes
            if n.get("method") == "notifications/progress"
        ]
        assert progress == [1, 2, 3], host.notes
        report = host.request("tools/call", {"name": "report", "arguments": {"topic": "q3"}})
        text = report["result"]["content"][0]["text"]
        if user == FREE_USER:
            assert "report" not in names
            assert report["result"]["isError"] is True and TIER_SENTENCE in text
        else:
            assert "report" in names
            assert not report["result"].get("isError") and text.startswith("report on q3")
        if era == "legacy":
            assert not any("2026-07-28" in line for line in c.err), c.err
