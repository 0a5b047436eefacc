"""Nodes as operators run them: a node restarted under its node id after ``kill -9`` takes over
its predecessor's stream rows at start; each node reports its own socket besides the public URL;
the public URL's own origin is allowed by default; an ended grant's subscriptions are dropped,
so that updates stop writing outbox rows for them."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import httpx
import trio

from examples.everything import WATCHED_URI
from examples.everything import app as everything
from tests.harness._pg import psql
from tests.harness._serve import steward_serve
from tests.harness._steward import McpClient, get_stream, running_node, sign_in
from tests.harness._wait import wait_until

PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()  # every node of a deployment shares it


def tiers(**free: Any) -> list[dict[str, Any]]:
    return [
        {"name": "free", "requests_per_minute": 6000, "burst": 1000, **free},
        {"name": "pro"},
        {"name": "enterprise"},
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def open_streams(dsn: str, node_id: str) -> int:
    return int(
        psql(
            dsn,
            f"SELECT count(*) FROM connections WHERE node_id = '{node_id}' AND closed_at IS NULL",
        )
    )


async def test_a_node_restarted_after_kill_9_takes_over_its_predecessors_streams(
    fresh_db: str,
) -> None:
    """Node b (a process) holds alice's two streams, her free tier's limit, and is killed with
    SIGKILL: its rows stay open, and node a refuses alice's streams (b's node id still looks
    alive). b restarts under the same node id and closes those rows at start
    (``node_restarted``): alice opens her two streams on a at once, not 133 s later. b's ready
    file and output name its own socket besides the public URL."""
    async with (
        running_node(
            fresh_db, node_id="a", public_url=PUBLIC, encryption_key=KEY, tiers=tiers(max_streams=2)
        ) as a,
        httpx.AsyncClient(timeout=20) as http,
    ):
        idp = a.info.dev_idp_url
        port = free_port()
        env = {
            "STEWARD_NODE_ID": "b",
            "STEWARD_PUBLIC_URL": PUBLIC,
            "STEWARD_ENCRYPTION_KEY": KEY,
            "STEWARD_DEV_IDP": "false",
            "STEWARD_UPSTREAM__ISSUER": str(idp),
            "STEWARD_UPSTREAM__AUTHORIZATION_ENDPOINT": f"{idp}/authorize",
            "STEWARD_UPSTREAM__TOKEN_ENDPOINT": f"{idp}/token",
            "STEWARD_UPSTREAM__USERINFO_ENDPOINT": f"{idp}/userinfo",
            "STEWARD_UPSTREAM__CLIENT_ID": "steward",
        }
        with steward_serve("--database-url", fresh_db, "--port", str(port), env=env) as b:
            b_url = f"http://127.0.0.1:{port}"
            assert b.ready["listen_url"] == b_url and b.ready["mcp_url"] == f"{PUBLIC}/mcp"
            output = b.log_path.read_text()
            assert f"Steward node b is listening on {b_url}, serving MCP at {PUBLIC}/mcp" in output
            ready_line = next(
                json.loads(line) for line in output.splitlines() if '"node_ready"' in line
            )
            assert ready_line["listen_url"] == b_url and ready_line["node_id"] == "b"

            tabs = []
            for _ in range(2):
                tab = McpClient(http, a, (await sign_in(http, a, "alice"))["access_token"])
                tab.url = f"{b_url}/mcp"
                await tab.initialize()
                tabs.append(tab)
            async with get_stream(tabs[0]) as s1, get_stream(tabs[1]) as s2:
                for s in (s1, s2):
                    assert await s.next() is not None
                await wait_until(lambda: open_streams(fresh_db, "b") >= 2, every=0.05)
                b.kill()  # SIGKILL: no stream row is closed
                with trio.fail_after(10):
                    assert await s1.next() is None and await s2.next() is None
            assert open_streams(fresh_db, "b") == 2
            on_a = [McpClient(http, a, t.token) for t in tabs]
            for mine, theirs in zip(on_a, tabs, strict=True):
                mine.session_id = theirs.session_id
            refused = await http.get(
                on_a[0].url, headers={**on_a[0].headers(), "accept": "text/event-stream"}
            )
            assert refused.status_code == 429  # the ghosts count against alice

            await trio.to_thread.run_sync(b.start)  # the same node id, the same data folder
            await wait_until(lambda: open_streams(fresh_db, "b") == 0, every=0.05)
            reasons = psql(
                fresh_db, "SELECT DISTINCT close_reason FROM connections WHERE node_id = 'b'"
            )
            assert reasons == "node_restarted"
            async with get_stream(on_a[0]) as s3, get_stream(on_a[1]) as s4:
                for s in (s3, s4):
                    assert await s.next() is not None


async def test_the_public_urls_own_origin_is_allowed_by_default(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, public_url="https://steward.test:443/") as node,
        running_node(
            fresh_db,
            public_url="https://steward.test",
            allowed_origins=["https://app.example"],
        ) as configured,
        httpx.AsyncClient(timeout=20) as http,
    ):
        for n in (node, configured):
            mcp = McpClient(http, n, (await sign_in(http, n, "alice"))["access_token"])
            await mcp.initialize()
            own = await mcp.post("ping", origin="https://steward.test")
            assert own.status_code == 200, own.text
            evil = await mcp.post("ping", origin="https://evil.test")
            assert evil.status_code == 403
            assert "origin 'https://evil.test' is not allowed" in evil.text
            other_port = await mcp.post("ping", origin="https://steward.test:8443")
            assert other_port.status_code == 403
            loopback = await mcp.post("ping", origin="http://localhost:6274")
            # loopback origins stay allowed while no origin is configured, and only then
            assert loopback.status_code == (200 if n is node else 403)
        app = await mcp.post("ping", origin="https://app.example")
        assert app.status_code == 200


async def test_the_subscriptions_of_an_ended_grant_are_dropped(fresh_db: str) -> None:
    """alice and bob subscribe through node b and hold no stream: an update published on node
    a writes an outbox row for each. alice's client revokes its token: her subscription and
    her waiting rows are dropped with the grant, and the next update writes bob's row only."""
    async with (
        running_node(fresh_db, everything, public_url=PUBLIC, encryption_key=KEY) as a,
        running_node(fresh_db, everything, public_url=PUBLIC, encryption_key=KEY) as b,
        httpx.AsyncClient(timeout=20) as http,
    ):
        clients = {}
        for user in ("alice", "bob"):
            tokens = await sign_in(http, a, user)
            mcp = McpClient(http, b, tokens["access_token"])
            await mcp.initialize()
            await mcp.call("resources/subscribe", {"uri": WATCHED_URI})
            clients[user] = (mcp, tokens)
        alice = f"session:{clients['alice'][0].session_id}"
        bob = f"session:{clients['bob'][0].session_id}"

        def rows(table: str, target: str) -> int:
            return int(psql(fresh_db, f"SELECT count(*) FROM {table} WHERE target = '{target}'"))

        a.notify_resource_updated(WATCHED_URI)
        await a.store.write()  # committed
        assert (rows("outbox", alice), rows("outbox", bob)) == (1, 1)

        revoked = await http.post(
            f"{a.info.listen_url}/revoke",
            data={
                "token": clients["alice"][1]["refresh_token"],
                "client_id": clients["alice"][1]["client_id"],
            },
        )
        assert revoked.status_code == 200
        assert rows("resource_subscriptions", alice) == 0
        assert rows("resource_subscriptions", bob) == 1
        assert rows("outbox", alice) == 0

        a.notify_resource_updated(WATCHED_URI)
        await a.store.write()
        assert (rows("outbox", alice), rows("outbox", bob)) == (0, 2)
