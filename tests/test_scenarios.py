"""Whole scenarios, each over real HTTP against a live node and real PostgreSQL, from the first
sign-in to the last assertion on the rows. docs/sessions.md lists every scenario and its test."""

from __future__ import annotations

import base64
import contextlib
import uuid
from typing import Any

import attrs
import httpx
import httpx2
import trio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from actors.sessions import SessionPolicy
from runtime import Backoff, faults
from server.app._steward import Context, Steward
from tests.harness._pg import psql
from tests.harness._sdk_storage import MemoryStorage
from tests.harness._steward import McpClient, SseReader, get_stream, running_node, sign_in
from tests.harness._wait import wait_until
from tests.test_sdk_oauth import Browser, sdk_provider

PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()


async def client(http: httpx.AsyncClient, node: Any, user: str) -> McpClient:
    tokens = await sign_in(http, node, user)
    mcp = McpClient(http, node, tokens["access_token"])
    await mcp.initialize()
    return mcp


async def is_open(stream: SseReader, seconds: float = 0.3) -> bool:
    """Nothing ends the stream within ``seconds`` (keep-alive comments are skipped)."""
    with trio.move_on_after(seconds):
        return await stream.next() is not None
    return True


def error_of(event: dict[str, Any] | None) -> str | None:
    """The reason a stream's final error event names, or None for anything else."""
    data = (event or {}).get("data")
    if not isinstance(data, dict) or data.get("method") != "notifications/message":
        return None
    params = data["params"]
    return params["data"]["error"] if params["level"] in ("error", "warning") else None


async def revoke_at_idp(http: httpx.AsyncClient, node: Any, user: str) -> None:
    r = await http.post(
        f"{node.dev_idp.issuer}/_control/revoke_user",
        json={"user": user},
        headers={"x-control-secret": node.dev_idp.control_secret},
    )
    assert r.status_code == 200, r.text


def assert_reauthorization_challenge(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge


async def test_scenario_three_tabs_a_crashed_stream_then_the_user_revoked_at_the_idp(
    fresh_db: str,
) -> None:
    """(a) Alice holds three GET streams (three transport sessions of one grant, like three tabs)
    and Bob one. One of Alice's connection actors crashes: only that stream ends (with an error
    event), the others and Bob's stay, and the session is not restarted; Alice's client reconnects
    it with Last-Event-ID. Then Alice is revoked at the development IdP: the token keeper's next
    refresh is refused (invalid_grant), and within a second each of her three streams gets the
    final error event and ends; her next request gets the 401 challenge. Bob's stream is untouched
    (it still receives notifications) and his requests still succeed."""
    # 1 s upstream tokens refreshed 0.8 s before they expire: a lead of 80% of the lifetime,
    # above what the settings allow, and a floor of 0.1 s, below it (docs/sessions.md)
    policy = SessionPolicy(
        refresh_lead=0.8, refresh_lead_fraction=0.8, refresh_floor=0.1, refresh_jitter=0.0
    )
    async with (
        running_node(fresh_db, session_policy=policy) as node,
        httpx.AsyncClient(timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        assert node.dev_idp is not None
        node.dev_idp.access_ttl = 1.0  # upstream tokens live 1 s: keepers refresh every 0.2 s
        bob = await client(http, node, "bob")
        bob_stream = await stack.enter_async_context(get_stream(bob))
        assert await bob_stream.next() is not None
        tokens = await sign_in(http, node, "alice")
        tabs = [McpClient(http, node, tokens["access_token"]) for _ in range(3)]
        for tab in tabs:
            await tab.initialize()
        # Alice's streams send a keep-alive every 0.2 s (Bob's opened with the default 15 s): the
        # first keep-alive of one of them crashes its connection actor
        node.sessions.policy = attrs.evolve(policy, heartbeat=0.2)
        faults.arm("connection.heartbeat", error=RuntimeError("connection actor crash"), times=1)
        try:
            streams = [await stack.enter_async_context(get_stream(tab)) for tab in tabs]
            priming = [await s.next() for s in streams]
            await wait_until(lambda: faults.hits("connection.heartbeat") != 0, within=5)
        finally:
            faults.reset()
        outcomes = []
        for s in streams:
            with trio.move_on_after(0.5):
                outcomes.append(error_of(await s.next()))
                continue
            outcomes.append("open")
        assert sorted(outcomes, key=str) == ["connection_stopped", "open", "open"]
        assert await is_open(bob_stream)
        sessions_sup = {c.id: c for c in node.root.which_children()}["sessions"]  # type: ignore[union-attr]
        assert sessions_sup.restarts == 0
        crashed = outcomes.index("connection_stopped")
        assert await streams[crashed].next() is None
        last_id = priming[crashed]["id"]  # type: ignore[index]
        streams[crashed] = await stack.enter_async_context(
            get_stream(tabs[crashed], **{"last-event-id": last_id})
        )
        assert sorted(len(s.connections()) for s in node.sessions.live()) == [1, 3]
        await revoke_at_idp(http, node, "alice")
        with trio.fail_after(1.0):
            for s in streams:
                assert error_of(await s.next()) == "reauth_required"
                assert await s.next() is None
        assert node.notify_list_changed("tools") == 1  # Bob's stream is the only one left
        with trio.fail_after(5):
            event = await bob_stream.next()
        assert event is not None and event["data"]["method"] == "notifications/tools/list_changed"
        assert (await bob.post("ping")).status_code == 200
        echoed = await bob.call("tools/call", {"name": "echo", "arguments": {"text": "still"}})
        assert echoed["result"]["content"][0]["text"] == "still"
        assert_reauthorization_challenge(await tabs[0].post("ping"))
        await node.store.write()
        reasons = psql(
            fresh_db,
            "SELECT string_agg(close_reason || ':' || n, ',' ORDER BY close_reason) FROM "
            "(SELECT close_reason, count(*) AS n FROM connections WHERE kind = 'get' "
            "AND closed_at IS NOT NULL GROUP BY close_reason) r",
        )
        assert reasons == "connection_stopped:1,reauth_required:3"


async def test_scenario_upstream_refresh_fails_for_now_then_for_good_and_the_sdk_reauthorizes(
    fresh_db: str,
) -> None:
    """(b) The official SDK client signs in (OAuth, PKCE, consent) and calls tools; a raw client
    holds a GET stream of the same grant. The IdP answers the next two upstream refreshes 503:
    the token keeper crashes and restarts with backoff, the stream stays open and tool calls keep
    succeeding. Then the IdP refuses a refresh for good (invalid_grant): the grant becomes
    reauth_required, the stream gets the final error event and ends, a request gets the 401
    challenge, and the SDK client, on its next call, goes back through authorization by itself
    and continues with the same session."""
    policy = SessionPolicy(
        refresh_lead=0.8,
        refresh_lead_fraction=0.8,
        refresh_floor=0.1,
        refresh_jitter=0.0,
        keeper_backoff=Backoff(min=0.05, max=0.2, jitter=0.0),
    )
    async with (
        running_node(fresh_db, session_policy=policy) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert node.dev_idp is not None
        node.dev_idp.access_ttl = 1.0  # upstream tokens live 1 s: the keeper refreshes often
        browser, storage = Browser(node, "bob"), MemoryStorage()
        provider = sdk_provider(node, browser, storage)
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as sdk_http,
            streamable_http_client(f"{node.info.listen_url}/mcp", http_client=sdk_http) as (
                read,
                write,
                *_,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert browser.sign_ins == 1 and storage.tokens is not None
            raw = McpClient(http, node, storage.tokens.access_token)
            await raw.initialize()
            async with get_stream(raw) as stream:
                assert await stream.next() is not None
                failed = node.sessions.refreshes["failed"]
                node.dev_idp.fail_refreshes("5xx", 2)
                await wait_until(
                    lambda: (
                        not (node.dev_idp.refresh_faults_left or node.sessions.refreshes["ok"] < 3)
                    ),
                    every=0.05,
                )
                assert node.sessions.refreshes["failed"] - failed == 2
                result = await session.call_tool("echo", {"text": "through the outage"})
                assert result.content[0].text == "through the outage"  # type: ignore[union-attr]
                assert await is_open(stream)
                node.dev_idp.fail_refreshes("invalid_grant")
                with trio.fail_after(10):
                    assert error_of(await stream.next()) == "reauth_required"
                    assert await stream.next() is None
            assert_reauthorization_challenge(await raw.post("ping"))
            assert psql(fresh_db, "SELECT status FROM grants") == "reauth_required"
            result = await session.call_tool("echo", {"text": "after re-authorization"})
            assert result.content[0].text == "after re-authorization"  # type: ignore[union-attr]
            assert browser.sign_ins == 2
        statuses = psql(fresh_db, "SELECT string_agg(status, ',' ORDER BY status) FROM grants")
        assert statuses == "active,reauth_required"


async def test_scenario_a_restart_in_the_middle_of_a_session(fresh_db: str) -> None:
    """(d) Alice initializes a 2025 session and calls a tool whose reply is a stream; after its
    first progress event the tool closes the HTTP response (SEP-1699) and goes on: two more
    progress events and the result are sent while the client is away, stored in PostgreSQL.
    Steward stops and a new Steward starts on the same database. The same Mcp-Session-Id works on
    the new process, and a GET with Last-Event-ID replays exactly the missed events, the result
    last, then the stream ends."""
    app = Steward("restart-scenario")

    @app.tool()
    async def steps(ctx: Context) -> str:
        await ctx.progress(1, 3)
        await ctx.close_stream()  # the client comes back with Last-Event-ID
        await ctx.progress(2, 3)
        await ctx.progress(3, 3)
        return "three steps"

    settings = {"public_url": PUBLIC, "encryption_key": KEY}
    async with httpx.AsyncClient(timeout=10) as http:
        async with running_node(fresh_db, app, **settings) as first:
            mcp = await client(http, first, "alice")
            body = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "steps", "arguments": {}, "_meta": {"progressToken": "p"}},
            }
            async with http.stream("POST", mcp.url, json=body, headers=mcp.headers()) as reply:
                reader = SseReader(reply)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader._pump)
                    seen = [await reader.next(), await reader.next()]
                    with trio.fail_after(5):
                        assert await reader.next() is None  # closed by the tool, not ended
            assert seen[0] is not None and seen[0]["data"] is None  # the priming event
            assert seen[1] is not None and seen[1]["data"]["params"]["progress"] == 1
            # the tool finishes while the client is away
            await wait_until(lambda: not first.statistics().endpoint.live_exchanges, within=5)
        async with running_node(fresh_db, app, **settings) as second:
            mcp.url = f"{second.info.listen_url}/mcp"
            listed = await mcp.call("tools/list")
            assert [t["name"] for t in listed["result"]["tools"]] == ["steps"]
            async with get_stream(mcp, **{"last-event-id": seen[1]["id"]}) as resumed:
                with trio.fail_after(5):
                    replayed = [await resumed.next() for _ in range(4)]
        stream_id = seen[1]["id"].rpartition(":")[0]
        assert [e["id"] if e else None for e in replayed] == [
            f"{stream_id}:3",
            f"{stream_id}:4",
            f"{stream_id}:5",
            None,
        ]
        assert [e["data"]["params"]["progress"] for e in replayed[:2] if e] == [2, 3]
        assert replayed[2] is not None and replayed[2]["data"]["id"] == 7
        assert replayed[2]["data"]["result"]["content"][0]["text"] == "three steps"


async def test_scenario_cleanup_removes_exactly_what_is_stale(fresh_db: str) -> None:
    """(f) Alice and Bob hold live GET streams; beside them the database holds what a cleanup is
    for: a dead node with an open connection, a connection of this node whose heartbeat stopped an
    hour ago, Bob's grant past its lifetime, and rows past their retention (a stream event two
    hours old, a connection closed eight days ago, a usage event eight days old) next to fresh
    ones of each kind. One janitor sweep closes the dead node's and the stale connection, expires
    Bob's grant (his stream gets the final error event, his next request the 401 challenge) and
    deletes the old rows; Alice's stream, her connection row and every fresh row stay, and she
    keeps working. A second sweep finds nothing."""
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        alice, bob = await client(http, node, "alice"), await client(http, node, "bob")
        await alice.call("tools/call", {"name": "echo", "arguments": {"text": "fresh usage"}})
        async with get_stream(alice) as alice_stream, get_stream(bob) as bob_stream:
            for s in (alice_stream, bob_stream):
                assert await s.next() is not None
            await node.store.write()  # the live streams' rows are committed
            grant = {
                name: psql(
                    fresh_db,
                    f"SELECT grant_id FROM grants JOIN users USING (user_id) WHERE subject = '{name}'",
                )
                for name in ("alice", "bob")
            }
            user = psql(fresh_db, "SELECT user_id FROM users WHERE subject = 'alice'")
            a = grant["alice"]
            psql(
                fresh_db,
                f"UPDATE grants SET expires_at = now() - interval '1 minute' WHERE grant_id = '{grant['bob']}';"
                "INSERT INTO nodes (node_id, heartbeat_at) VALUES ('gone', now() - interval '1 hour');"
                "INSERT INTO connections (connection_id, node_id, grant_id, user_id, kind, heartbeat_at) VALUES "
                f"(gen_random_uuid(), 'gone', '{a}', '{user}', 'get', now()),"
                f"(gen_random_uuid(), '{node.info.node_id}', '{a}', '{user}', 'get', now() - interval '1 hour');"
                "INSERT INTO connections (connection_id, node_id, grant_id, user_id, kind, closed_at, close_reason) VALUES "
                f"(gen_random_uuid(), 'gone', '{a}', '{user}', 'get', now() - interval '8 days', 'old'),"
                f"(gen_random_uuid(), 'gone', '{a}', '{user}', 'get', now() - interval '1 day', 'recent');"
                "INSERT INTO stream_events (session_id, stream_id, seq, user_id, payload, created_at) VALUES "
                f"('{alice.session_id}', 'old', 1, '{user}', '{{}}', now() - interval '2 hours'),"
                f"('{alice.session_id}', 'fresh', 1, '{user}', '{{}}', now());"
                "INSERT INTO usage_events (event_id, user_id, method, tier, outcome, occurred_at) VALUES "
                f"('{uuid.uuid4()}', '{user}', 'tools/call', 'free', 'ok', now() - interval '8 days')",
            )
            result = await node.janitor.sweep()
            assert {k: v for k, v in result.items() if k != "retention_deleted"} == {
                "expired_sessions": 1,
                "dead_nodes": 1,
                "dead_node_connections": 1,
                "stale_connections": 1,
                "idle_transport_sessions": 0,
            }
            with trio.fail_after(5):
                assert error_of(await bob_stream.next()) == "expired"
                assert await bob_stream.next() is None
            assert await is_open(alice_stream)
            assert (await alice.post("ping")).status_code == 200
            assert_reauthorization_challenge(await bob.post("ping"))

            def rows(sql: str) -> str:
                return psql(fresh_db, sql)

            assert rows("SELECT string_agg(stream_id, ',') FROM stream_events") == "fresh"
            assert (
                rows(
                    "SELECT string_agg(close_reason, ',' ORDER BY close_reason) FROM connections "
                    f"WHERE grant_id = '{a}' AND closed_at IS NOT NULL"
                )
                == "node_dead,recent,stale"
            )
            assert (
                rows(
                    f"SELECT count(*) FROM connections WHERE grant_id = '{a}' AND closed_at IS NULL"
                )
                == "1"
            )  # Alice's live stream
            assert (
                rows(
                    "SELECT count(*) FROM usage_events WHERE occurred_at < now() - interval '1 day'"
                )
                == "0"
            )
            assert rows("SELECT count(*) FROM usage_events WHERE method = 'tools/call'") == "1"
            again = await node.janitor.sweep()
            assert set(again.values()) == {0}
