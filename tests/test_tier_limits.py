"""A tier's limits are keyed by user, so another session or a reconnect resets nothing: the request
rate, the long-lived streams held at once (counted across nodes from the connections table) and
the tool-call quota per period. Past each: 429 with Retry-After and a JSON-RPC error."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import trio

from tests.harness._pg import psql
from tests.harness._steward import McpClient, get_stream, running_node, sign_in
from tests.harness._wait import wait_until

PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()
ECHO = {"name": "echo", "arguments": {"text": "x"}}


def tiers(**free: Any) -> list[dict[str, Any]]:
    """The default tiers' names, with the free tier's limits replaced (alice is free, bob pro)."""
    return [
        {"name": "free", "requests_per_minute": 6000, "burst": 1000, **free},
        {"name": "pro"},
        {"name": "enterprise"},
    ]


async def client(http: httpx.AsyncClient, node: Any, user: str) -> McpClient:
    tokens = await sign_in(http, node, user)
    mcp = McpClient(http, node, tokens["access_token"])
    await mcp.initialize()
    return mcp


def assert_429(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    retry_after = int(r.headers["retry-after"])
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == -32600 and error["data"]["retryAfter"] == retry_after >= 1
    return error


async def test_the_rate_limit_is_reached_and_resets_for_the_user_not_the_session(
    fresh_db: str,
) -> None:
    """Scenario: alice (free: burst 3, 60 a minute) calls a tool three times; the fourth call is
    refused with 429, Retry-After and a JSON-RPC error; ping and tools/list still answer; a new
    sign-in of the same user is refused too (the bucket is the user's); bob is untouched; once
    the bucket refilled (the meter's clock moved a second), alice's calls succeed again."""
    async with (
        running_node(fresh_db, tiers=tiers(requests_per_minute=60, burst=3)) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        alice, bob = await client(http, node, "alice"), await client(http, node, "bob")
        for _ in range(3):
            assert (await alice.post("tools/call", ECHO)).status_code == 200
        error = assert_429(await alice.post("tools/call", ECHO))
        assert "rate limit of the free tier" in error["message"]
        assert (await alice.post("ping")).status_code == 200
        assert (await alice.post("tools/list")).status_code == 200
        again = await client(http, node, "alice")  # another grant, another transport session
        assert_429(await again.post("tools/call", ECHO))
        assert (await bob.post("tools/call", ECHO)).status_code == 200
        shift = error["data"]["retryAfter"]
        node.usage._clock = lambda: time.monotonic() + shift
        assert (await again.post("tools/call", ECHO)).status_code == 200
        assert node.usage.rejected == 2


async def test_the_tool_call_quota_is_per_user_and_period_and_resets_with_the_period(
    fresh_db: str,
) -> None:
    async with (
        running_node(fresh_db, tiers=tiers(tool_call_quota="3/day")) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        alice, bob = await client(http, node, "alice"), await client(http, node, "bob")
        for _ in range(2):
            assert (await alice.post("tools/call", ECHO)).status_code == 200
            assert (await alice.post("resources/list")).status_code == 200  # not a tool call
        again = await client(http, node, "alice")
        assert (await again.post("tools/call", ECHO)).status_code == 200  # the third, anywhere
        error = assert_429(await alice.post("tools/call", ECHO))
        assert error["data"]["quota"] == "3/day" and "quota" in error["message"]
        now = time.time()
        assert abs(error["data"]["retryAfter"] - (86400 - now % 86400)) <= 2  # midnight UTC
        assert_429(await again.post("tools/call", ECHO))
        assert (await alice.post("resources/list")).status_code == 200
        assert (await bob.post("tools/call", ECHO)).status_code == 200  # pro: its own quota
        node.usage._wall_clock = lambda: time.time() + 86400  # the next day (UTC)
        for _ in range(3):
            assert (await alice.post("tools/call", ECHO)).status_code == 200
        assert_429(await alice.post("tools/call", ECHO))
        assert node.usage.quota_rejected == 3


async def test_a_user_holds_at_most_the_tiers_streams_on_every_node_and_closing_one_frees_it(
    fresh_db: str,
) -> None:
    settings = {"public_url": PUBLIC, "encryption_key": KEY, "tiers": tiers(max_streams=2)}
    async with (
        running_node(fresh_db, **settings) as a,
        running_node(fresh_db, **settings) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        tabs = [await client(http, a, "alice") for _ in range(3)]
        bob = await client(http, a, "bob")
        async with get_stream(tabs[0]) as s1, get_stream(tabs[1]) as s2:
            for s in (s1, s2):
                assert (await s.next()) is not None
            r = await http.get(
                tabs[2].url, headers={**tabs[2].headers(), "accept": "text/event-stream"}
            )
            error = assert_429(r)
            assert "allows 2 open streams" in error["message"] and error["data"]["limit"] == 2
            legacy = await http.get(  # the legacy transport counts the same streams
                f"{a.info.listen_url}/sse",
                headers={"authorization": f"Bearer {tabs[2].token}", "accept": "text/event-stream"},
            )
            assert_429(legacy)
            await a.store.write()
            assert (
                psql(  # and the transport session made for the refused stream ended with it
                    fresh_db,
                    "SELECT count(*) FROM transport_sessions WHERE protocol_version = '2024-11-05' "
                    "AND ended_at IS NULL",
                )
                == "0"
            )
            async with get_stream(bob) as s3:  # another user: untouched
                assert (await s3.next()) is not None
            # on another node the connections table counts alice's two streams on the first
            await a.store.write()
            elsewhere = McpClient(http, b, tabs[2].token)
            elsewhere.session_id = tabs[2].session_id
            assert_429(
                await http.get(
                    elsewhere.url, headers={**elsewhere.headers(), "accept": "text/event-stream"}
                )
            )
        # both streams closed: their slots are free again
        await wait_until(lambda: not sum(a.sessions.open_streams.values()), within=5)
        async with get_stream(tabs[2]) as s4:
            assert (await s4.next()) is not None


async def wait_for_tool_calls(dsn: str, user: str, calls: int) -> None:
    """Until the user's tool calls are committed in the usage rollups (usage is written after
    each answer, without waiting)."""
    with trio.fail_after(10):
        sql = (
            "SELECT coalesce(sum(calls), 0) FROM usage_rollups JOIN users USING (user_id) "
            f"WHERE subject = '{user}' AND method = 'tools/call'"
        )
        while int(psql(dsn, sql)) < calls:
            await trio.sleep(0.05)


async def test_the_tool_call_quota_holds_on_every_node_and_across_a_restart(
    fresh_db: str,
) -> None:
    """Scenario: alice (free: 3 tool calls a day) calls twice on node A; node B, which has never
    seen her, reads her count from the usage rollups and admits one call, then refuses; a node
    started after both stopped (a restart) refuses too; bob is untouched. (Each node runs its own
    development IdP, so alice's token from A is used everywhere: one user.)"""
    settings = {
        "public_url": PUBLIC,
        "encryption_key": KEY,
        "tiers": tiers(tool_call_quota="3/day"),
    }
    async with httpx.AsyncClient(timeout=10) as http:
        async with running_node(fresh_db, **settings) as a, running_node(fresh_db, **settings) as b:
            alice, bob = await client(http, a, "alice"), await client(http, a, "bob")
            for _ in range(2):
                assert (await alice.post("tools/call", ECHO)).status_code == 200
            await wait_for_tool_calls(fresh_db, "alice", 2)
            elsewhere = McpClient(http, b, alice.token)
            await elsewhere.initialize()
            assert (await elsewhere.post("tools/call", ECHO)).status_code == 200
            error = assert_429(await elsewhere.post("tools/call", ECHO))
            assert error["data"]["quota"] == "3/day"
            await wait_for_tool_calls(fresh_db, "alice", 3)
        async with running_node(fresh_db, **settings) as restarted:
            again = McpClient(http, restarted, alice.token)
            await again.initialize()
            assert_429(await again.post("tools/call", ECHO))
            other = McpClient(http, restarted, bob.token)
            await other.initialize()
            assert (await other.post("tools/call", ECHO)).status_code == 200
            assert restarted.usage.quota_rejected == 1
            assert restarted.usage.quota_reads_skipped == 0
