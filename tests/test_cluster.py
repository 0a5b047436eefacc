"""Several nodes on one database: cross-node revocation, hydration anywhere, the janitor."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from examples.everything import WATCHED_URI
from examples.everything import app as everything
from server._introspection import StreamKind
from server._node import Node
from server.app._steward import Context, Steward
from tests.harness._pg import psql
from tests.harness._steward import McpClient, get_stream, running_node, sign_in, sse_stream
from tests.harness._wait import wait_until
from tests.test_mcp_transport import headers_2026, rpc_2026

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


# -- cross-node delivery through the outbox (server/cluster/_relay.py) -------------------------------------


@asynccontextmanager
async def two_nodes(
    dsn: str, app: Steward = everything
) -> AsyncIterator[tuple[Node, Node, httpx.AsyncClient]]:
    async with (
        running_node(dsn, app, public_url=PUBLIC, encryption_key=KEY) as a,
        running_node(dsn, app, public_url=PUBLIC, encryption_key=KEY) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        yield a, b, http


async def one_session_on_both(
    http: httpx.AsyncClient, a: Node, b: Node, user: str
) -> tuple[McpClient, McpClient]:
    """A transport session initialized on a, and a client of the same session on b."""
    tokens = await sign_in(http, a, user)
    on_a = McpClient(http, a, tokens["access_token"])
    await on_a.initialize()
    on_b = McpClient(http, b, tokens["access_token"])
    on_b.session_id = on_a.session_id
    return on_a, on_b


async def test_an_update_published_on_one_node_reaches_a_stream_on_another_exactly_once(
    fresh_db: str,
) -> None:
    """Subscribed through node a, streaming from node b, updated on a: one event each time, also
    when b's LISTEN connection was cut in between (b claims the row after reconnecting)."""
    async with two_nodes(fresh_db) as (a, b, http):
        tokens = await sign_in(http, a, "alice")
        on_a = McpClient(http, a, tokens["access_token"])
        await on_a.initialize()
        await on_a.call("resources/subscribe", {"uri": WATCHED_URI})
        on_b = McpClient(http, b, tokens["access_token"])
        on_b.session_id = on_a.session_id
        async with get_stream(on_b) as stream:
            priming = await stream.next()
            assert priming is not None
            assert a.notify_resource_updated(WATCHED_URI) == 0  # no stream on a
            with trio.fail_after(5):
                first = await stream.next_message()
            assert first is not None
            assert first["data"]["params"] == {"uri": WATCHED_URI}
            psql(
                fresh_db,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%steward_outbox%'",
            )
            a.notify_resource_updated(WATCHED_URI)
            with trio.fail_after(5):
                second = await stream.next_message()
            assert second is not None and second["data"]["method"].endswith("resources/updated")
            with trio.move_on_after(0.5) as nothing_more:
                await stream.next_message()
            assert nothing_more.cancelled_caught
        ids = [priming["id"], first["id"], second["id"]]
        seqs = [int(i.rpartition(":")[2]) for i in ids]
        assert len({i.rpartition(":")[0] for i in ids}) == 1 and seqs == sorted(set(seqs))
        assert b.relay.statistics().reconnects >= 1
        assert b.relay.statistics().delivered == 2
        metrics = (await http.get(f"{b.info.listen_url}/metrics")).text
        assert "steward_relay_delivered_total 2.0" in metrics
        assert psql(fresh_db, "SELECT count(*) FROM outbox") == "0"
        # stored with the claim: resuming on a replays both, once
        async with get_stream(on_a, **{"last-event-id": priming["id"]}) as resumed:
            with trio.fail_after(5):
                replayed = [await resumed.next(), await resumed.next()]
        assert [e["id"] if e else None for e in replayed] == ids[1:]


async def test_an_update_for_a_session_without_a_stream_waits_for_its_next_stream(
    fresh_db: str,
) -> None:
    async with two_nodes(fresh_db) as (a, b, http):
        tokens = await sign_in(http, a, "bob")
        on_b = McpClient(http, b, tokens["access_token"])
        await on_b.initialize()
        await on_b.call("resources/subscribe", {"uri": WATCHED_URI})
        assert a.notify_resource_updated(WATCHED_URI) == 0
        await a.store.write()  # committed
        assert psql(fresh_db, "SELECT count(*) FROM outbox") == "1"
        async with get_stream(on_b) as stream:
            with trio.fail_after(5):
                event = await stream.next_message()
            assert event is not None and event["data"]["params"] == {"uri": WATCHED_URI}
        assert psql(fresh_db, "SELECT count(*) FROM outbox") == "0"


async def test_a_listen_stream_on_another_node_gets_the_update_tagged(fresh_db: str) -> None:
    async with two_nodes(fresh_db) as (a, b, http):
        token = (await sign_in(http, a, "carol"))["access_token"]
        body = rpc_2026(
            "subscriptions/listen", {"notifications": {"resourceSubscriptions": [WATCHED_URI]}}
        )
        url = f"{b.info.listen_url}/mcp"
        headers = headers_2026(token, "subscriptions/listen")
        async with sse_stream(http, "POST", url, json=body, headers=headers) as reader:
            ack = await reader.next_message()
            assert ack is not None
            a.notify_resource_updated(WATCHED_URI)
            with trio.fail_after(5):
                update = await reader.next_message()
            assert update is not None and update["data"]["params"]["uri"] == WATCHED_URI
            meta = update["data"]["params"]["_meta"]
            assert meta == {"io.modelcontextprotocol/subscriptionId": body["id"]}


async def test_a_clients_answer_posted_to_another_node_reaches_the_waiting_handler(
    fresh_db: str,
) -> None:
    async with two_nodes(fresh_db) as (a, b, http):
        on_a, on_b = await one_session_on_both(http, a, b, "alice")
        on_a._id = 100
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}},
        }
        async with sse_stream(http, "POST", on_a.url, json=call, headers=on_a.headers()) as reader:
            with trio.fail_after(5):
                asked = await reader.next_message()
            assert asked is not None and asked["data"]["method"] == "sampling/createMessage"
            answer = {
                "jsonrpc": "2.0",
                "id": asked["data"]["id"],
                "result": {
                    "role": "assistant",
                    "content": {"type": "text", "text": "from b"},
                    "model": "m",
                },
            }
            r = await http.post(on_b.url, json=answer, headers=on_b.headers())
            assert r.status_code == 202
            with trio.fail_after(5):
                result = await reader.next_message()
            assert result is not None
            assert result["data"]["result"]["content"][0]["text"] == "LLM response: from b"
        assert a.relay.statistics().delivered == 1 and b.relay.statistics().delivered == 0


async def test_answers_no_server_request_awaits_are_dropped_or_bounded_per_user(
    fresh_db: str,
) -> None:
    """A response whose id no server request of Steward's could have is dropped (202, nothing
    stored); one that could be another node's waits in the outbox, at most ``max_replies`` per
    user: past that, 429 and nothing more stored, while another user's answers still travel."""
    async with two_nodes(fresh_db) as (a, b, http):
        _, on_b = await one_session_on_both(http, a, b, "alice")
        _, bob = await one_session_on_both(http, a, b, "bob")

        def answer(request_id: object) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": request_id, "result": {}}

        for junk in (1, "s-1", "x" * 200, "s-" + "0" * 17):
            r = await http.post(on_b.url, json=answer(junk), headers=on_b.headers())
            assert r.status_code == 202
        assert psql(fresh_db, "SELECT count(*) FROM outbox") == "0"

        limit = b.relay.policy.max_replies
        for n in range(limit):
            r = await http.post(on_b.url, json=answer(f"s-{n:016x}"), headers=on_b.headers())
            assert r.status_code == 202
        r = await http.post(on_b.url, json=answer("s-" + "f" * 16), headers=on_b.headers())
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "awaiting delivery" in r.json()["error"]["message"]
        r = await http.post(bob.url, json=answer("s-" + "e" * 16), headers=bob.headers())
        assert r.status_code == 202
        counts = psql(
            fresh_db,
            "SELECT string_agg(n::text, ',' ORDER BY n) FROM "
            "(SELECT count(*) AS n FROM outbox WHERE target LIKE 'reply:%' GROUP BY user_id) c",
        )
        assert counts == f"1,{limit}"


async def test_a_2026_retry_reaching_another_node_continues_the_parked_request(
    fresh_db: str,
) -> None:
    async with two_nodes(fresh_db) as (a, b, http):
        token = (await sign_in(http, a, "carol"))["access_token"]
        name = "test_input_required_result_elicitation"

        async def call(node: Any, extra: dict[str, Any]) -> httpx.Response:
            body = rpc_2026("tools/call", {"name": name, "arguments": {}, **extra})
            body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = {
                "elicitation": {}
            }
            headers = headers_2026(token, "tools/call", name)
            return await http.post(f"{node.info.listen_url}/mcp", json=body, headers=headers)

        first = (await call(a, {})).json()["result"]
        assert first["resultType"] == "input_required"
        answer = {"user_name": {"action": "accept", "content": {"name": "Ada"}}}
        r = await call(b, {"inputResponses": answer, "requestState": first["requestState"]})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["content"][0]["text"] == "Hello, Ada!"
        assert b.relay.statistics().forwarded == 1 and a.relay.statistics().served == 1
        assert a.statistics().endpoint.parked_requests == 0
        # a state naming node a that a never issued: a says so, through b
        forged = first["requestState"].partition(".")[0][:-1] + "x." + a.info.node_id
        r = await call(b, {"inputResponses": answer, "requestState": forged})
        assert r.status_code == 200 and r.json()["error"]["code"] == -32602


stuck = Steward("stuck")


@stuck.tool()
async def ask_then_hang(ctx: Context) -> str:
    """Asks a name, then never answers (its node dies before it does)."""
    await ctx.elicit("Your name?", {"type": "object"}, key="name")
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def test_a_forwarded_request_whose_node_dies_is_answered_503_not_left_waiting(
    fresh_db: str,
) -> None:
    """A 2026 retry forwarded from b to the parked request's node a, whose handler then hangs;
    a is marked dead (as a janitor does when its heartbeat lapses): b answers 503 with
    Retry-After at its next check instead of holding the client until it gives up."""
    async with two_nodes(fresh_db, stuck) as (a, b, http):
        b.relay.policy = attrs.evolve(b.relay.policy, owner_check=0.1)
        token = (await sign_in(http, a, "carol"))["access_token"]

        async def call(node: Node, extra: dict[str, Any]) -> httpx.Response:
            body = rpc_2026("tools/call", {"name": "ask_then_hang", "arguments": {}, **extra})
            body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = {
                "elicitation": {}
            }
            headers = headers_2026(token, "tools/call", "ask_then_hang")
            return await http.post(f"{node.info.listen_url}/mcp", json=body, headers=headers)

        first = (await call(a, {})).json()["result"]
        answer = {"name": {"action": "accept", "content": {"name": "Ada"}}}
        retried: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def retry() -> None:
                extra = {"inputResponses": answer, "requestState": first["requestState"]}
                retried.append(await call(b, extra))

            nursery.start_soon(retry)
            await wait_until(lambda: a.relay.statistics().served >= 1, within=5)
            # kept: time passes for b to check a at least twice (alive: b still waits)
            await trio.sleep(0.3)
            assert retried == []
            psql(fresh_db, f"UPDATE nodes SET status = 'dead' WHERE node_id = '{a.info.node_id}'")
        (r,) = retried
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert a.info.node_id in r.json()["error_description"]
        assert b.relay.statistics().owners_lost == 1


async def test_a_legacy_post_reaching_another_node_is_handled_by_the_streams_node(
    fresh_db: str,
) -> None:
    async with two_nodes(fresh_db) as (a, b, http):
        carol = {"authorization": f"Bearer {(await sign_in(http, a, 'carol'))['access_token']}"}
        bob = {"authorization": f"Bearer {(await sign_in(http, a, 'bob'))['access_token']}"}
        async with sse_stream(http, "GET", f"{a.info.listen_url}/sse", headers=carol) as reader:
            with trio.fail_after(5):
                endpoint = await reader.next()
            assert endpoint is not None
            post_url = f"{b.info.listen_url}{endpoint['data']}"
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            assert (await http.post(post_url, json=ping, headers=bob)).status_code == 404
            r = await http.post(post_url, json=ping, headers=carol)
            assert r.status_code == 202 and r.content == b""
            with trio.fail_after(5):
                reply = await reader.next()
            assert reply is not None and reply["data"] == {"jsonrpc": "2.0", "id": 1, "result": {}}
        assert b.relay.statistics().forwarded == 1
        # a notices the disconnect; its stream's row closes
        await wait_until(lambda: not a.streams(kind=StreamKind.LEGACY_SSE), within=5, every=0.01)
        await a.store.write()
        assert (await http.post(post_url, json=ping, headers=carol)).status_code == 404


def sse_events(text: str, *, with_ids: bool = True) -> list[dict[str, Any]]:
    """The events of a finished SSE body (those with an id, unless ``with_ids`` is False):
    ``id`` and ``data`` (parsed, or None)."""
    events = []
    for block in text.split("\n\n"):
        fields = [line.partition(":")[::2] for line in block.split("\n") if line.strip()]
        data = "".join(v.strip() for k, v in fields if k == "data")
        ids = [v.strip() for k, v in fields if k == "id"]
        if ids or (data and not with_ids):
            events.append(
                {"id": ids[0] if ids else None, "data": json.loads(data) if data else None}
            )
    return events


follow_app = Steward("follow")
gate: dict[str, trio.Event] = {}


@follow_app.tool()
async def ask_later(ctx: Context) -> str:
    """Sends a log message, closes its stream, waits for the test, then asks the client's model."""
    await ctx.log("info", "before")
    await ctx.close_stream()
    await gate["resumed"].wait()
    result = await ctx.sample([{"role": "user", "content": {"type": "text", "text": "hi"}}])
    return f"model said {result['content']['text']}"


async def test_a_request_stream_resumed_on_another_node_follows_the_running_request(
    fresh_db: str,
) -> None:
    """The handler runs on a; its client resumes the stream on b, gets the sampling request
    there, answers on b, and gets the result on b: each event once, ids continuing a's."""
    gate["resumed"] = trio.Event()
    async with two_nodes(fresh_db, follow_app) as (a, b, http):
        on_a, on_b = await one_session_on_both(http, a, b, "alice")
        r = await on_a.post("tools/call", {"name": "ask_later", "arguments": {}})
        events = sse_events(r.text)
        assert [e["data"]["params"]["data"] for e in events if e["data"]] == ["before"]
        async with get_stream(on_b, **{"last-event-id": events[-1]["id"]}) as resumed:
            gate["resumed"].set()
            with trio.fail_after(5):
                asked = await resumed.next()
            assert asked is not None and asked["data"]["method"] == "sampling/createMessage"
            answer = {
                "jsonrpc": "2.0",
                "id": asked["data"]["id"],
                "result": {"role": "assistant", "content": {"type": "text", "text": "yes"}},
            }
            assert (
                await http.post(on_b.url, json=answer, headers=on_b.headers())
            ).status_code == 202
            with trio.fail_after(5):
                result = await resumed.next()
                end = await resumed.next()
        assert result is not None and result["data"]["result"]["content"][0]["text"] == (
            "model said yes"
        )
        assert end is None  # the stream ends with the response
        ids = [e["id"] for e in [*events, asked, result]]
        assert len({i.rpartition(":")[0] for i in ids}) == 1
        seqs = [int(i.rpartition(":")[2]) for i in ids]
        assert seqs == list(range(1, len(ids) + 1))


@follow_app.tool()
async def greet_slowly(ctx: Context) -> str:
    """Asks a name, then logs before answering: its reply to the retry is an SSE stream."""
    answer = await ctx.elicit("Your name?", {"type": "object"}, key="name")
    await ctx.log("info", "thinking")
    return f"hello {answer['content']['name']}"


async def test_a_2026_retry_answered_as_a_stream_is_relayed_from_the_parked_node(
    fresh_db: str,
) -> None:
    async with two_nodes(fresh_db, follow_app) as (a, b, http):
        token = (await sign_in(http, a, "carol"))["access_token"]

        async def call(node: Node, extra: dict[str, Any]) -> httpx.Response:
            body = rpc_2026("tools/call", {"name": "greet_slowly", "arguments": {}, **extra})
            meta = body["params"]["_meta"]
            meta["io.modelcontextprotocol/clientCapabilities"] = {"elicitation": {}}
            meta["io.modelcontextprotocol/logLevel"] = "info"
            headers = headers_2026(token, "tools/call", "greet_slowly")
            return await http.post(f"{node.info.listen_url}/mcp", json=body, headers=headers)

        first = (await call(a, {})).json()["result"]
        answer = {"name": {"action": "accept", "content": {"name": "Ada"}}}
        r = await call(b, {"inputResponses": answer, "requestState": first["requestState"]})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        messages = [e["data"] for e in sse_events(r.text, with_ids=False) if e["data"]]
        assert [m.get("method") for m in messages] == ["notifications/message", None]
        assert messages[1]["result"]["content"][0]["text"] == "hello Ada"
        assert b.relay.statistics().forwarded == 1 and a.relay.statistics().served == 1


async def test_an_unsubscribe_through_another_node_stops_the_updates_everywhere(
    fresh_db: str,
) -> None:
    async with two_nodes(fresh_db) as (a, b, http):
        on_a, on_b = await one_session_on_both(http, a, b, "carol")
        await on_a.call("resources/subscribe", {"uri": WATCHED_URI})
        async with get_stream(on_a) as stream:
            await stream.next()
            assert a.notify_resource_updated(WATCHED_URI) == 1
            with trio.fail_after(5):
                assert await stream.next_message() is not None
            await on_b.call("resources/unsubscribe", {"uri": WATCHED_URI})
            # a, holding the stream, re-reads the session's rows
            await wait_until(lambda: not a.subscribers(WATCHED_URI), within=5, every=0.01)
            assert a.notify_resource_updated(WATCHED_URI) == 0
            assert b.notify_resource_updated(WATCHED_URI) == 0
            await a.store.write()
            await b.store.write()
            with trio.move_on_after(0.5) as nothing:
                await stream.next_message()
            assert nothing.cancelled_caught
        assert psql(fresh_db, "SELECT count(*) FROM outbox") == "0"
