"""One implementation per operator action: the admin API of a live node and the ``steward``
command (another process, the same database) leave the same rows.

Two equivalent users, each with two sessions and an open stream on each, go through the same
actions: set a tier override, clear it, end one session, revoke the user (which ends the other),
reinstate them. One user's actions go through ``/admin/api/…``, the other's through
``steward users …`` / ``steward sessions end``. After each action the rows of both users in
grants, connections, users, upstream_tokens, cluster_events and auth_events are compared,
ids and times left out: they must be the same.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from server._node import Node
from tests.harness._steward import McpClient, SseReader, get_stream, running_node, sign_in
from tests.harness._wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "operator-paths-admin"
STEWARD = [sys.executable, "-m", "server.cli"]
TABLES = ("users", "grants", "connections", "upstream_tokens", "cluster_events", "auth_events")


def steward(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEWARD, *args, "--database-url", dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Subject:
    """One user with two sessions, an open GET stream on each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.user_id = ""
        self.grants: list[uuid.UUID] = []
        self.streams: list[SseReader] = []

    @asynccontextmanager
    async def signed_in(self, http: httpx.AsyncClient, node: Node) -> AsyncIterator[Subject]:
        async with AsyncExitStack() as stack:
            for _ in range(2):
                tokens = await sign_in(http, node, self.name)
                mcp = McpClient(http, node, tokens["access_token"])
                await mcp.initialize()
                stream = await stack.enter_async_context(get_stream(mcp))
                await stream.next()  # the priming event: the stream is open
                self.streams.append(stream)
            self.user_id = await node.store.fetchval(
                "SELECT user_id FROM users WHERE subject = $1", self.name
            )
            rows = await node.store.fetch(
                "SELECT grant_id FROM grants WHERE user_id = $1 ORDER BY created_at", self.user_id
            )
            self.grants = [r["grant_id"] for r in rows]
            yield self


async def rows_of(node: Node, who: Subject) -> dict[str, list[str]]:
    """Every row of ``who`` in TABLES, with ids and times replaced by what they stand for."""
    await node.store.write()  # audit rows are queued (write_nowait): a write after them flushes
    await wait_until(lambda: not node.store.statistics().queue_depth, within=5, every=0.01)
    names = {who.user_id: "<user>", node.info.node_id: "<origin>", "cli": "<origin>"}
    names |= {str(g): f"<grant {i}>" for i, g in enumerate(who.grants)}
    clients = await node.store.fetch(
        "SELECT DISTINCT client_id FROM grants WHERE user_id = $1", who.user_id
    )
    names |= {r["client_id"]: "<client>" for r in clients}

    def plain(value: Any) -> Any:
        if isinstance(value, datetime.datetime):
            return "<time>"
        if isinstance(value, bytes):
            return "<bytes>"
        if isinstance(value, uuid.UUID):
            return names.get(str(value), "<id>")
        if isinstance(value, str):
            if value in names:
                return names[value]
            try:
                datetime.datetime.fromisoformat(value)
            except ValueError:
                return value
            return "<time>"
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    ignored = {"subject", "email", "event_id", "connection_id", "session_id", "seq", "key_id"}
    out: dict[str, list[str]] = {}
    for table in TABLES:
        rows = await node.store.fetch(
            f"SELECT * FROM {table} WHERE user_id = $1 "
            + ("OR grant_id = ANY($2::uuid[])" if table != "users" else "OR $2::uuid[] IS NULL"),
            who.user_id,
            who.grants,
        )
        out[table] = sorted(
            json.dumps({k: plain(v) for k, v in r.items() if k not in ignored}, sort_keys=True)
            for r in rows
        )
    return out


async def ended(stream: SseReader, reason: str) -> None:
    """The stream's final event names ``reason``, and then it ends."""
    with trio.fail_after(10):
        while True:  # list_changed notifications of an earlier tier change may come first
            event = await stream.next_message()
            assert event is not None, "the stream ended without its final event"
            if not event["data"].get("method", "").endswith("/list_changed"):
                break
        assert event["data"]["params"]["data"]["error"] == reason, event
        while await stream.next() is not None:
            pass


async def tokens_gone(node: Node, grant_id: uuid.UUID) -> None:
    """The revoker has revoked the grant's upstream tokens and deleted their row."""
    with trio.fail_after(15):
        while await node.store.fetchval(
            "SELECT count(*) FROM upstream_tokens WHERE grant_id = $1", grant_id
        ):
            await trio.sleep(0.05)


async def test_the_admin_api_and_the_cli_leave_the_same_rows(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, admin_token=TOKEN) as node,
        httpx.AsyncClient(timeout=30) as http,
        Subject("via-api").signed_in(http, node) as api,
        Subject("via-cli").signed_in(http, node) as cli,
    ):

        async def admin(route: str, **body: str) -> None:
            r = await http.post(
                f"{node.info.listen_url}/admin/api/{route}",
                json=body,
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            assert r.status_code == 200, r.text

        async def command(*args: str) -> None:
            out = await trio.to_thread.run_sync(steward, fresh_db, *args)
            assert out.returncode == 0, out.stderr

        differ: list[tuple[str, str, list[str], list[str]]] = []

        async def same(action: str) -> None:
            """Compare the rows now; the differences are all reported at the end."""
            by_api, by_cli = await rows_of(node, api), await rows_of(node, cli)
            differ.extend(
                (action, t, by_api[t], by_cli[t]) for t in TABLES if by_api[t] != by_cli[t]
            )

        await same("signed in")

        await admin("users/set-tier", user_id=api.user_id, tier="pro")
        await command("users", "set-tier", cli.user_id, "pro")
        await same("set-tier")

        await admin("users/clear-tier", user_id=api.user_id)
        await command("users", "clear-tier", cli.user_id)
        await same("clear-tier")

        await admin("sessions/end", grant_id=str(api.grants[0]))
        await command("sessions", "end", str(cli.grants[0]))
        for who in (api, cli):
            await ended(who.streams[0], "ended")
            await tokens_gone(node, who.grants[0])
        await same("end session")

        await admin("users/revoke", user_id=api.user_id)
        await command("users", "revoke", cli.user_id)
        for who in (api, cli):
            await ended(who.streams[1], "revoked")
            await tokens_gone(node, who.grants[1])
        await same("revoke user")

        await admin("users/reinstate", user_id=api.user_id)
        await command("users", "reinstate", cli.user_id)
        await same("reinstate")
        assert not differ, "\n".join(
            f"{action}, {table}:\n  api: {a}\n  cli: {c}" for action, table, a, c in differ
        )
