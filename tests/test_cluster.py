"""Several nodes on one database: cross-node revocation, hydration anywhere, the janitor."""

from __future__ import annotations

import base64

import httpx
import trio

from tests.harness._pg import psql
from tests.harness._steward import McpClient, get_stream, running_node, sign_in

PUBLIC = "http://steward.test"
# every node of a deployment shares the upstream-token encryption key
KEY = base64.b64encode(bytes(range(32))).decode()


async def test_a_revocation_on_one_node_closes_the_users_streams_on_another(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY) as a,
        running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        tokens = await sign_in(http, a, "alice")
        on_b = McpClient(http, b, tokens["access_token"])
        await on_b.initialize()  # the session hydrates on b from the database
        other = await sign_in(http, a, "bob")
        bob_b = McpClient(http, b, other["access_token"])
        await bob_b.initialize()
        async with get_stream(on_b) as stream, get_stream(bob_b) as bob_stream:
            await stream.next()
            await bob_stream.next()
            user_id = psql(fresh_db, "SELECT user_id FROM users WHERE subject = 'alice'")
            started = trio.current_time()
            await a.sessions.revoke_user(user_id)
            with trio.fail_after(1.0):
                event = await stream.next()
            assert event is not None and event["data"]["params"]["data"]["error"] == "revoked"
            assert trio.current_time() - started < 1.0
            with trio.move_on_after(0.3) as untouched:
                await bob_stream.next_message()
            assert untouched.cancelled_caught
        assert (await on_b.post("ping")).status_code == 401
        assert (await bob_b.post("ping")).status_code == 200


async def test_a_transport_session_continues_on_another_node(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY) as a,
        running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        tokens = await sign_in(http, a, "bob")
        on_a = McpClient(http, a, tokens["access_token"])
        await on_a.initialize()
        on_b = McpClient(http, b, tokens["access_token"])
        on_b.session_id = on_a.session_id
        listed = await on_b.call("tools/list")
        assert "echo" in {t["name"] for t in listed["result"]["tools"]}


async def test_the_janitor_expires_sessions_reaps_stale_connections_and_dead_nodes(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, node, "alice")
        await sign_in(http, node, "bob")
        grant_bob = psql(
            fresh_db,
            "SELECT grant_id FROM grants g JOIN users u USING (user_id) WHERE u.subject = 'bob'",
        )
        psql(
            fresh_db,
            f"UPDATE grants SET expires_at = now() - interval '1 minute' WHERE grant_id = '{grant_bob}'",
        )
        psql(
            fresh_db,
            "INSERT INTO nodes (node_id, heartbeat_at) VALUES ('gone', now() - interval '1 hour');"
            f"INSERT INTO connections (connection_id, node_id, grant_id, user_id, kind) SELECT gen_random_uuid(), 'gone', grant_id, user_id, 'get' FROM grants WHERE grant_id <> '{grant_bob}';"
            f"INSERT INTO connections (connection_id, node_id, grant_id, user_id, kind, heartbeat_at) SELECT gen_random_uuid(), '{node.info.node_id}', grant_id, user_id, 'get', now() - interval '1 hour' FROM grants WHERE grant_id <> '{grant_bob}'",
        )
        result = await node.janitor.sweep()
        assert result["expired_sessions"] == 1
        assert result["dead_nodes"] == 1
        assert result["dead_node_connections"] == 1
        assert result["stale_connections"] == 1
        assert (
            psql(fresh_db, f"SELECT status FROM grants WHERE grant_id = '{grant_bob}'") == "expired"
        )
        assert psql(fresh_db, "SELECT count(*) FROM connections WHERE closed_at IS NULL") == "0"
        assert (
            psql(fresh_db, f"SELECT status FROM nodes WHERE node_id = '{node.info.node_id}'")
            == "alive"
        )
        again = await node.janitor.sweep()
        assert again["expired_sessions"] == again["dead_nodes"] == again["stale_connections"] == 0
