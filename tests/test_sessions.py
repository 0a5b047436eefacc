"""User sessions and their streams: isolation, invalidation, revocation, resumption, lifecycle."""

from __future__ import annotations

from typing import Any, cast

import httpx
import trio

from actors import ConnectionKind
from actors.sessions import Connection, SessionPolicy
from runtime import faults
from tests.harness._pg import psql
from tests.harness._steward import McpClient, get_stream, running_node, sign_in
from tests.harness._wait import wait_until


async def connected(http: httpx.AsyncClient, node: object, user: str) -> McpClient:
    tokens = await sign_in(http, node, user)  # type: ignore[arg-type]
    mcp = McpClient(http, node, tokens["access_token"])  # type: ignore[arg-type]
    await mcp.initialize()
    return mcp


async def test_revoking_a_user_closes_each_of_their_streams_with_an_error_and_no_other(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        tab1 = await connected(http, node, "alice")
        tab2 = await connected(http, node, "alice")
        other = await connected(http, node, "bob")
        for c in (tab1, tab2, other):
            assert (await c.call("resources/subscribe", {"uri": "demo://readme"}))["result"] == {}
        async with get_stream(tab1) as s1, get_stream(tab2) as s2, get_stream(other) as s3:
            for s in (s1, s2, s3):
                assert (await s.next())["data"] is None  # the priming event
            user_id = (await tab1.call("tools/call", {"name": "whoami", "arguments": {}}))[
                "result"
            ]["structuredContent"]["user"]
            await node.sessions.revoke_user(user_id)
            with trio.fail_after(5):
                for s in (s1, s2):
                    event = await s.next()
                    assert event is not None and event["data"]["params"]["level"] == "error"
                    assert event["data"]["params"]["data"]["error"] == "revoked"
                    assert await s.next() is None  # the stream ended
            assert node.notify_resource_updated("demo://readme") == 1
            with trio.fail_after(5):
                event = await s3.next_message()
            assert (
                event is not None and event["data"]["method"] == "notifications/resources/updated"
            )
        r = await tab1.post("ping")
        assert r.status_code == 401
        assert (await other.post("ping")).status_code == 200
        await node.store.write()
        assert (
            psql(fresh_db, "SELECT count(*) FROM connections WHERE close_reason = 'revoked'") == "2"
        )


async def test_a_revoked_users_streams_close_before_the_revocation_commits(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        alice = await connected(http, node, "alice")
        user_id = (await alice.call("tools/call", {"name": "whoami", "arguments": {}}))["result"][
            "structuredContent"
        ]["user"]
        async with get_stream(alice) as stream:
            assert (await stream.next())["data"] is None  # the priming event
            await node.store.write()  # nothing of the stream's left in the queue
            faults.arm("store.commit", hang=True)  # from now on no commit finishes
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(node.sessions.revoke_user, user_id)
                    with trio.fail_after(10):
                        event = await stream.next()
                        assert await stream.next() is None  # the stream ended
                    assert event is not None and event["data"]["params"]["data"]["error"] == (
                        "revoked"
                    )
                    assert faults.hits("store.commit") >= 1  # the revocation's write is held
                    assert psql(fresh_db, "SELECT status FROM grants") == "active"
                    nursery.cancel_scope.cancel()
            finally:
                faults.reset()


async def test_invalid_grant_upstream_requires_reauthorization(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        assert node.dev_idp is not None
        node.dev_idp.access_ttl = 1.0  # the token keeper refreshes at once
        node.dev_idp.fail_refreshes("invalid_grant")
        tokens = await sign_in(http, node, "carol")
        mcp = McpClient(http, node, tokens["access_token"])
        r = await mcp.post(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
        with trio.fail_after(10):
            while (r := await mcp.post("ping")).status_code != 401:
                await trio.sleep(0.05)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        # the 401 may come before the row's commit
        await wait_until(
            lambda: psql(fresh_db, "SELECT status FROM grants") == "reauth_required",
            within=5,
            every=0.05,
        )
        await node.store.write()
        kinds = psql(fresh_db, "SELECT string_agg(kind, ',') FROM auth_events")
        assert "upstream_refresh_failed" in kinds
        # signing in again gives a working session
        fresh = await sign_in(http, node, "carol", client_id=tokens["client_id"])
        again = McpClient(http, node, fresh["access_token"])
        await again.initialize()


async def test_upstream_refresh_is_single_flight(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        assert node.dev_idp is not None
        await sign_in(http, node, "bob")
        grant = psql(fresh_db, "SELECT grant_id FROM grants")
        psql(fresh_db, "UPDATE upstream_tokens SET access_expires_at = now()")
        import uuid

        before = node.dev_idp.calls["refresh"]
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(node.sessions.refresh_upstream, uuid.UUID(grant))
        assert node.dev_idp.calls["refresh"] - before == 1


async def test_another_principals_session_id_is_not_found(fresh_db: str) -> None:
    """MCP-R19, R20: session ids are random and bound to their principal; another's is 404."""
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        alice = await connected(http, node, "alice")
        bob = await connected(http, node, "bob")
        bob.session_id = alice.session_id
        r = await bob.post("tools/list")
        assert r.status_code == 404
        unknown = await connected(http, node, "bob")
        unknown.session_id = "no-such-session"
        assert (await unknown.post("tools/list")).status_code == 404


async def test_delete_ends_the_transport_session(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        mcp = await connected(http, node, "alice")
        r = await http.delete(mcp.url, headers=mcp.headers())
        assert r.status_code == 204
        assert (await mcp.post("tools/list")).status_code == 404
        assert (await http.delete(mcp.url, headers=mcp.headers())).status_code == 404


async def test_resuming_a_stream_replays_what_was_missed_from_the_database(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        mcp = await connected(http, node, "alice")
        await mcp.call("resources/subscribe", {"uri": "demo://readme"})
        async with get_stream(mcp) as stream:
            await stream.next()
            for _ in range(3):
                node.notify_resource_updated("demo://readme")
            events = [await stream.next_message() for _ in range(3)]
        ids = [e["id"] for e in events if e]
        assert len(set(ids)) == 3
        await node.store.write()  # the events are committed
        async with get_stream(mcp, **{"last-event-id": ids[0]}) as resumed:
            replayed = [await resumed.next_message() for _ in range(2)]
        assert [e["id"] for e in replayed if e] == ids[1:]


async def test_a_crashing_connection_actor_closes_only_its_own_stream(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        node.sessions.policy = SessionPolicy(heartbeat=0.2)
        tokens = await sign_in(http, node, "alice")
        tab1 = McpClient(http, node, tokens["access_token"])
        tab2 = McpClient(http, node, tokens["access_token"])
        await tab1.initialize()
        await tab2.initialize()
        faults.arm("connection.heartbeat", error=RuntimeError("connection actor crash"), times=1)
        try:
            async with get_stream(tab1) as s1, get_stream(tab2) as s2:
                await s1.next()
                await s2.next()
                await wait_until(lambda: faults.hits("connection.heartbeat") > 0, within=5)
                # the crashed connection actor's stream is closed; the other stays
                await wait_until(lambda: len(node.sessions.live()[0].connections()) == 1, within=5)
                outcomes = []
                for s in (s1, s2):
                    with trio.move_on_after(1.0):
                        event = await s.next()
                        outcomes.append(
                            event["data"]["params"]["data"]["error"]
                            if event and event.get("data")
                            else "ended"
                        )
                        continue
                    outcomes.append("open")
                session = node.sessions.live()[0]
                assert len(session.connections()) == 1
                assert node.root is not None
        finally:
            faults.reset()
        assert sorted(outcomes) == ["connection_stopped", "open"]
        sessions_sup = {c.id: c for c in node.root.which_children()}["sessions"]
        assert sessions_sup.restarts == 0
        assert (await tab1.post("ping")).status_code == 200


async def test_every_stream_of_a_session_gets_its_keep_alives_and_heartbeat_rows(
    fresh_db: str,
) -> None:
    """One timer per session wakes each connection actor when its heartbeat is due: two streams
    of one session, opened at different times, each get a keep-alive comment every 0.2 s."""
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        node.sessions.policy = SessionPolicy(heartbeat=0.2)
        tokens = await sign_in(http, node, "alice")
        tabs = [McpClient(http, node, tokens["access_token"]) for _ in range(2)]
        for tab in tabs:
            await tab.initialize()
        counts = [0, 0]

        async def count_keep_alives(i: int, delay: float) -> None:
            await trio.sleep(delay)  # kept: the two streams open at different times
            headers = {**tabs[i].headers(), "accept": "text/event-stream"}
            async with http.stream("GET", tabs[i].url, headers=headers) as response:
                assert response.status_code == 200
                with trio.move_on_after(1.3):
                    async for line in response.aiter_lines():
                        counts[i] += line == ": keep-alive"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_keep_alives, 0, 0.0)
            nursery.start_soon(count_keep_alives, 1, 0.13)
        assert all(4 <= n <= 7 for n in counts), counts
        assert len(node.sessions.live()) == 1
        await node.store.write()
        beats = psql(
            fresh_db,
            "SELECT count(*) FROM connections WHERE heartbeat_at > opened_at + interval '0.5 s'",
        )
        assert beats == "2"


def test_a_streams_event_ids_move_on_from_what_it_carried_and_never_back() -> None:
    """A resumed or followed stream (``Connection.advance_to``: the replay, what another node
    stored) numbers its own next event after the last one it carried, never again below it."""
    conn = Connection(
        cast(Any, None),
        ConnectionKind.GET,
        "session",
        "stream",
        store=cast(Any, None),
        node_id="node",
        policy=SessionPolicy(),
    )
    assert conn.last_seq == 0
    assert conn.advance_to(5) == "stream:5"
    assert conn.next_event_id() == "stream:6"
    assert conn.advance_to(3) == "stream:3"  # an older stored event keeps its own id
    assert conn.last_seq == 6
    assert conn.next_event_id() == "stream:7"
