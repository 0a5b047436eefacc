"""The node's read-only surface (server/_introspection.py): what it holds, as frozen values, and
the operator actions the tests and tools use instead of the endpoint's tables."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from actors import CloseReason
from server._introspection import StreamKind
from server.app import Context, Steward
from server.mcp._jsonrpc import REQUEST_TIMEOUT
from tests.harness._steward import McpClient, get_stream, running_node, sign_in, sse_messages
from tests.harness._wait import wait_until

NOTE = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": 1}}


async def test_the_node_shows_its_streams_and_subscribers_as_values(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        alice = McpClient(http, node, (await sign_in(http, node, "alice"))["access_token"])
        bob = McpClient(http, node, (await sign_in(http, node, "bob"))["access_token"])
        await alice.initialize()
        await bob.initialize()
        a, b = alice.session_id or "", bob.session_id or ""
        whoami = {"name": "whoami", "arguments": {}}
        alice_id = (await alice.call("tools/call", whoami))["result"]["structuredContent"]["user"]
        # no stream yet: nothing listed, nothing sent
        assert node.streams() == () and node.stream(a) is None
        assert node.send_to_session(a, NOTE) is False
        await alice.call("resources/subscribe", {"uri": "demo://readme"})
        assert node.subscribers("demo://readme") == {a}
        assert node.subscribers("demo://other") == frozenset()
        async with get_stream(alice) as s1, get_stream(bob) as s2:
            await s1.next()
            await s2.next()
            mine = node.stream(a)
            assert mine is not None and mine.kind is StreamKind.GET and mine.open
            assert mine.user_id == alice_id and mine.session_id == a
            assert {s.session_id for s in node.streams(kind=StreamKind.GET)} == {a, b}
            assert [s.session_id for s in node.streams(user_id=alice_id)] == [a]
            assert node.streams(kind=StreamKind.LEGACY_SSE) == ()
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                mine.closed_reason = CloseReason.ENDED  # type: ignore[misc]
            stats = node.statistics()
            assert stats.endpoint.get_streams == 2 and stats.endpoint.open_streams == 2
            assert stats.store.connected and stats.relay.forwarded == 0
            # the operator actions reach the streams they name
            assert node.send_to_session(a, NOTE) is True
            with trio.fail_after(5):
                event = await s1.next_message()
            assert event is not None and event["data"] == NOTE
            await wait_until(lambda: (s := node.stream(a)) is not None and s.events_sent > 0)
            assert node.notify_resource_updated("demo://readme") == 1  # alice's stream only
            assert node.notify_list_changed("tools") == 2
        # the clients left: their streams leave the node's tables
        await wait_until(lambda: node.streams() == (), what="every stream gone")
        assert node.statistics().endpoint.open_streams == 0


asking = Steward("asking")


@asking.tool()
async def ask_name(ctx: Context) -> str:
    """Asks the client a question its client never answers."""
    answer = await ctx.elicit("Your name?", {"type": "object"})
    return str(answer)


async def test_a_server_request_left_unanswered_fails_after_client_request_timeout(
    fresh_db: str,
) -> None:
    """The ``client_request_timeout`` setting bounds how long a tool waits for the client's
    answer to a server request: the call fails with -32001 naming the method and the bound."""
    async with (
        running_node(fresh_db, app=asking, client_request_timeout=0.5) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        mcp = McpClient(http, node, (await sign_in(http, node, "alice"))["access_token"])
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {}},
            "clientInfo": {"name": "t", "version": "1"},
        }
        r = await mcp.post("initialize", hello)
        mcp.session_id = r.headers["mcp-session-id"]
        started = trio.current_time()
        r = await mcp.post("tools/call", {"name": "ask_name", "arguments": {}})
        waited = trio.current_time() - started
        messages = sse_messages(r.text)
        assert messages[0]["method"] == "elicitation/create"
        error = messages[-1]["error"]
        assert error["code"] == REQUEST_TIMEOUT, messages
        assert "did not answer elicitation/create within 0.5s" in error["message"]
        assert 0.5 <= waited < 5
        assert node.statistics().endpoint.pending_client_answers == 0  # its slot is freed
