"""Abuse limits: what an anonymous caller, or one user, can make Steward store is bounded.

Rate limits per client address on the anonymous endpoints (``/register``, ``/authorize``,
``/callback``, ``/consent``, ``/token``, ``/revoke``, the development IdP's sign-in), with a
node-wide ceiling for an attacker rotating addresses and a bounded table of addresses; a cap per
tier on a user's live transport sessions, counted from the database on every node, and a rate on
``initialize``; registered clients that never got a grant expire, so do idle transport sessions.
Every test runs over real HTTP against a live node on real PostgreSQL."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import attrs
import httpx
import trio

from tests.harness._pg import psql
from tests.harness._sdk_storage import MemoryStorage
from tests.harness._serve import steward_serve
from tests.harness._steward import (
    REDIRECT_URI,
    McpClient,
    get_stream,
    pkce,
    register,
    running_node,
    sign_in,
)
from tests.harness._wait import wait_until
from tests.test_sdk_oauth import Browser, sdk_provider

PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()
DEFAULTS: dict[str, Any] = {}  # [address_limits] as shipped


def tiers(**free: Any) -> list[dict[str, Any]]:
    """The default tiers, with the free tier's limits replaced (alice is free, bob pro)."""
    return [{"name": "free", **free}, {"name": "pro"}, {"name": "enterprise"}]


def count(dsn: str, sql: str) -> int:
    return int(psql(dsn, sql) or 0)


def assert_limited(r: httpx.Response) -> dict[str, Any]:
    """429, Retry-After, and an OAuth-style error body naming the limit."""
    assert r.status_code == 429, r.text
    retry_after = int(r.headers["retry-after"])
    body: dict[str, Any] = r.json()
    assert body["error"] == "temporarily_unavailable"
    assert body["retry_after"] == retry_after >= 1
    assert "per minute" in body["error_description"]
    return body


async def test_300_registrations_from_one_address_store_at_most_the_burst(fresh_db: str) -> None:
    """Scenario: a script registers 300 clients from one address against the shipped limits
    (10 a minute, a burst of 20). The first 20 are registered, the rest refused with 429 and
    Retry-After, and at most the burst plus what refilled meanwhile is stored. Another address
    (through a trusted proxy here) still registers."""
    async with (
        running_node(fresh_db, address_limits=DEFAULTS) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        url = f"{node.info.listen_url}/register"
        body = {"redirect_uris": [REDIRECT_URI], "client_name": "script"}
        statuses = [(await http.post(url, json=body)).status_code for _ in range(300)]
        assert statuses[:20] == [201] * 20
        assert statuses.count(201) <= 22 and statuses.count(429) >= 278
        refused = assert_limited(await http.post(url, json=body))
        assert "/register" in refused["error_description"]
        assert "10 per minute with a burst of 20" in refused["error_description"]
        stored = count(fresh_db, "SELECT count(*) FROM oauth_clients WHERE source = 'dynamic'")
        assert stored == statuses.count(201) <= 22
        metrics = (await http.get(f"{node.info.listen_url}/metrics")).text
        assert f'steward_address_limited_total{{kind="register"}} {statuses.count(429) + 1}.0' in (
            metrics
        )
        # X-Forwarded-For is ignored without a trusted proxy: a forged one changes nothing
        forged = await http.post(url, json=body, headers={"x-forwarded-for": "198.51.100.7"})
        assert_limited(forged)


async def test_the_address_table_is_bounded_and_a_node_ceiling_holds_for_rotating_addresses(
    fresh_db: str,
) -> None:
    """Scenario: behind a trusted proxy, an attacker rotates its address on every one of 300
    registrations. Each address is under its own limit, but the node-wide ceiling (40 a minute,
    a burst of 10) refuses all but the burst; the table of addresses never holds more than its
    bound (50). IPv6 addresses of one /64 share one bucket; another /64 has its own."""
    limits = {
        "register_per_minute": 1,
        "register_burst": 1,
        "register_node_per_minute": 40,
        "max_addresses": 50,
        "trusted_proxies": ["127.0.0.1"],
    }
    async with (
        running_node(fresh_db, address_limits=limits) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        limiter = node.asgi.limiter
        assert limiter is not None
        url = f"{node.info.listen_url}/register"
        body = {"redirect_uris": [REDIRECT_URI]}
        statuses = []
        largest = 0
        for i in range(300):
            xff = {"x-forwarded-for": f"203.0.113.9, 10.{i // 250}.{i % 250}.1"}
            statuses.append((await http.post(url, json=body, headers=xff)).status_code)
            largest = max(largest, len(limiter))
        assert statuses[:10] == [201] * 10
        assert statuses.count(201) <= 12, statuses.count(201)
        refused = [s for s in statuses if s != 201]
        assert set(refused) == {429}
        assert largest <= 50
        assert count(fresh_db, "SELECT count(*) FROM oauth_clients") == statuses.count(201)
        node_wide = await http.post(url, json=body, headers={"x-forwarded-for": "10.9.9.9"})
        assert "all addresses" in assert_limited(node_wide)["error_description"]

    ipv6 = {"register_per_minute": 1, "register_burst": 1, "trusted_proxies": ["127.0.0.1"]}
    async with (
        running_node(fresh_db, address_limits=ipv6) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        url = f"{node.info.listen_url}/register"

        async def from_(address: str) -> int:
            r = await http.post(url, json=body, headers={"x-forwarded-for": address})
            return r.status_code

        assert await from_("2001:db8:1:2::1") == 201
        assert await from_("2001:db8:1:2:ffff::9") == 429  # the same /64
        assert await from_("2001:db8:1:3::1") == 201  # another /64
        assert await from_("::ffff:192.0.2.1") == 201  # mapped IPv4, keyed as IPv4
        assert await from_("192.0.2.1") == 429


async def test_a_normal_sign_in_with_refreshes_never_meets_the_shipped_limits(
    fresh_db: str,
) -> None:
    """Scenario: with the shipped limits, the official SDK client signs in (discovery,
    registration, authorization, consent, token) and calls a tool; then five more full
    sign-ins of raw clients from the same address and ten refreshes follow within the minute.
    Nothing is refused, and the limiter did see every call."""
    async with (
        running_node(fresh_db, address_limits=DEFAULTS) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        import httpx2
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        browser, storage = Browser(node, "bob"), MemoryStorage()
        async with (
            httpx2.AsyncClient(auth=sdk_provider(node, browser, storage), timeout=30) as client,
            streamable_http_client(f"{node.info.listen_url}/mcp", http_client=client) as (
                read,
                write,
                *_,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert (await session.call_tool("echo", {"text": "hi"})).content
        assert browser.sign_ins == 1
        for user in ("alice", "bob", "carol", "alice", "bob"):
            tokens = await sign_in(http, node, user)
        for _ in range(10):
            r = await http.post(
                f"{node.info.listen_url}/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": tokens["client_id"],
                },
            )
            assert r.status_code == 200, r.text
            tokens = {**r.json(), "client_id": tokens["client_id"]}
        limiter = node.asgi.limiter
        assert limiter is not None and len(limiter) >= 4  # register, authorize, consent, token
        assert sum(limiter.refused.values()) == 0
        assert node.dev_idp is not None and node.dev_idp.limiter is not None
        assert sum(node.dev_idp.limiter.refused.values()) == 0


async def test_token_consent_and_the_dev_idp_sign_in_are_limited_per_address(
    fresh_db: str,
) -> None:
    """Scenario: with small limits, bad /token calls get their 400 until the burst is spent,
    then 429; so do forged /consent posts (403, then 429) and the development IdP's sign-in page
    (200, then 429). Each refusal carries Retry-After and an OAuth-style body."""
    limits = {
        "token_per_minute": 1,
        "token_burst": 3,
        "consent_per_minute": 1,
        "consent_burst": 2,
        "sign_in_per_minute": 1,
        "sign_in_burst": 2,
    }
    async with (
        running_node(fresh_db, address_limits=limits) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        base = node.info.listen_url
        token = [
            (await http.post(f"{base}/token", data={"grant_type": "password"})).status_code
            for _ in range(3)
        ]
        assert token == [400, 400, 400]
        assert_limited(await http.post(f"{base}/token", data={"grant_type": "password"}))
        assert_limited(await http.post(f"{base}/revoke", data={"token": "x"}))
        consent = [
            (await http.post(f"{base}/consent", data={"csrf": "x"})).status_code for _ in range(2)
        ]
        assert consent == [403, 403]
        assert_limited(await http.post(f"{base}/consent", data={"csrf": "x"}))
        assert node.info.dev_idp_url is not None
        _, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": "steward",
            "redirect_uri": REDIRECT_URI,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        sign_in_page = f"{node.info.dev_idp_url}/authorize"
        pages = [(await http.get(sign_in_page, params=params)).status_code for _ in range(2)]
        assert pages == [200, 200]
        assert_limited(await http.get(sign_in_page, params=params))


async def test_300_initialize_of_one_free_user_are_limited_and_store_few_rows(
    fresh_db: str,
) -> None:
    """Scenario: one free user sends 300 ``initialize`` in a row (shipped tiers: 30 a minute).
    At most the minute's worth are answered with a session; the rest get 429 with Retry-After
    and a JSON-RPC error naming initialize_per_minute and its value; at most that many
    transport session rows are stored. Another user is untouched."""
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=10) as http:
        alice = McpClient(http, node, (await sign_in(http, node, "alice"))["access_token"])
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x"}}
        replies = [await alice.post("initialize", params) for _ in range(300)]
        ok = [r for r in replies if r.status_code == 200]
        assert 30 <= len(ok) <= 31
        refused = replies[-1]
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["data"]["limit"] == "initialize_per_minute" and error["data"]["value"] == 30
        assert "30 new MCP sessions per minute" in error["message"]
        # and when it resets: this node's bucket holds a token again within Retry-After
        assert error["data"]["tier"] == "free"
        resets = datetime.datetime.fromisoformat(error["data"]["resetsAt"].replace("Z", "+00:00"))
        now = datetime.datetime.now(datetime.UTC)
        retry_after = int(refused.headers["retry-after"])
        assert now - datetime.timedelta(seconds=2) <= resets
        assert resets <= now + datetime.timedelta(seconds=retry_after + 2)
        assert f"at {error['data']['resetsAt']}" in error["message"]
        assert {r.status_code for r in replies} == {200, 429}
        assert count(fresh_db, "SELECT count(*) FROM transport_sessions") == len(ok)
        bob = McpClient(http, node, (await sign_in(http, node, "bob"))["access_token"])
        await bob.initialize()


async def test_a_users_live_sessions_are_capped_across_nodes_and_an_end_frees_one(
    fresh_db: str,
) -> None:
    """Scenario: the free tier allows 4 live transport sessions. Alice opens 2 on node A and 2
    on node B; a fifth on either node is refused (429, JSON-RPC error naming max_sessions and
    4) and nothing is stored. She ends one with DELETE and can open one again; a legacy /sse
    stream is a transport session too and is refused at the cap. Bob is untouched."""
    free = tiers(max_sessions=4, initialize_per_minute=1000)
    async with (
        running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY, tiers=free) as a,
        running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY, tiers=free) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        token = (await sign_in(http, a, "alice"))["access_token"]
        sessions = [McpClient(http, node, token) for node in (a, a, b, b)]
        for mcp in sessions:
            await mcp.initialize()
        for node in (a, b):
            extra = McpClient(http, node, token)
            r = await extra.post("initialize", {"protocolVersion": "2025-11-25"})
            assert r.status_code == 429, r.text
            assert r.json()["error"]["data"] == {
                "retryAfter": int(r.headers["retry-after"]),
                "limit": "max_sessions",
                "value": 4,
            }
            assert "4 live MCP sessions per account" in r.json()["error"]["message"]
        legacy = await http.get(
            f"{b.info.listen_url}/sse",
            headers={"authorization": f"Bearer {token}", "accept": "text/event-stream"},
        )
        assert legacy.status_code == 429, legacy.text
        live = "SELECT count(*) FROM transport_sessions WHERE ended_at IS NULL"
        assert count(fresh_db, live) == 4
        assert count(fresh_db, "SELECT count(*) FROM transport_sessions") == 4
        ended = await http.delete(sessions[0].url, headers=sessions[0].headers())
        assert ended.status_code in (200, 204), ended.text
        again = McpClient(http, b, token)
        await again.initialize()
        assert count(fresh_db, live) == 4
        bob = McpClient(http, a, (await sign_in(http, a, "bob"))["access_token"])
        await bob.initialize()


async def test_idle_transport_sessions_end_and_free_their_place(fresh_db: str) -> None:
    """Scenario: the free tier allows 2 live sessions; alice holds 2, one of them with an open
    GET stream. Both look idle for a day in the database; the janitor's sweep ends the one
    without a stream only, and alice can open a new session in its place. A session in use
    writes its last_seen_at (so it is not idle)."""
    free = tiers(max_sessions=2)
    async with running_node(fresh_db, tiers=free) as node, httpx.AsyncClient(timeout=10) as http:
        token = (await sign_in(http, node, "alice"))["access_token"]
        idle, streaming = McpClient(http, node, token), McpClient(http, node, token)
        await idle.initialize()
        await streaming.initialize()
        async with get_stream(streaming) as stream:
            await stream.next()
            with trio.fail_after(5):  # the stream's row is committed with its group
                while not count(
                    fresh_db, "SELECT count(*) FROM connections WHERE closed_at IS NULL"
                ):
                    await trio.sleep(0.02)
            psql(
                fresh_db,
                "UPDATE transport_sessions SET last_seen_at = now() - interval '2 days', "
                "created_at = now() - interval '2 days'",
            )
            assert (await McpClient(http, node, token).post("initialize")).status_code == 429
            result = await node.janitor.sweep()
            assert result["idle_transport_sessions"] == 1
            ended = psql(
                fresh_db, "SELECT session_id FROM transport_sessions WHERE ended_at IS NOT NULL"
            )
            assert ended == idle.session_id
            await McpClient(http, node, token).initialize()
        # a request on a session writes its last_seen_at (at most every touch_interval)
        psql(fresh_db, "UPDATE transport_sessions SET last_seen_at = now() - interval '2 days'")
        node.sessions.policy = attrs.evolve(node.sessions.policy, touch_interval=0.0)
        assert (await streaming.post("ping")).status_code == 200
        fresh = f"SELECT count(*) FROM transport_sessions WHERE session_id = '{streaming.session_id}' AND last_seen_at > now() - interval '1 minute'"
        await wait_until(lambda: count(fresh_db, fresh), within=5)


async def test_unused_clients_and_pending_requests_expire_while_used_clients_stay(
    fresh_db: str,
) -> None:
    """Scenario: three registered clients and one from the configuration, all registered two
    days ago; one got a grant (alice signed in with it), one has an authorization in flight;
    a fourth was registered just now. The janitor's sweep removes only the old client that never
    got a grant, and a pending authorization request past its expiry goes too. The removed
    client's /authorize is then refused as unknown."""
    configured = [{"client_id": "ops-console", "redirect_uris": [REDIRECT_URI]}]
    async with (
        running_node(fresh_db, clients=configured) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        unused = await register(http, node, "unused")
        used = (await sign_in(http, node, "alice"))["client_id"]
        pending = await register(http, node, "pending")
        _, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": pending,
            "redirect_uri": REDIRECT_URI,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        r = await http.get(f"{node.info.listen_url}/authorize", params=params)
        assert r.status_code == 302, r.text
        psql(fresh_db, "UPDATE oauth_clients SET created_at = now() - interval '2 days'")
        fresh = await register(http, node, "fresh")
        expired_request = await register(http, node, "expired request")
        r = await http.get(
            f"{node.info.listen_url}/authorize", params={**params, "client_id": expired_request}
        )
        assert r.status_code == 302, r.text
        psql(
            fresh_db,
            "UPDATE authorization_requests SET expires_at = now() - interval '1 second' "
            f"WHERE client_id = '{expired_request}'",
        )
        await node.janitor.sweep()
        left = set(psql(fresh_db, "SELECT client_id FROM oauth_clients").split())
        assert left == {used, pending, fresh, expired_request, "ops-console"}
        assert unused not in left
        requests = set(psql(fresh_db, "SELECT client_id FROM authorization_requests").split())
        assert pending in requests and expired_request not in requests
        r = await http.get(
            f"{node.info.listen_url}/authorize", params={**params, "client_id": unused}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_client"


async def test_steward_serve_with_workers_limits_its_dev_idp_and_every_worker(
    fresh_db: str,
) -> None:
    """Scenario: ``steward serve --workers 2`` with small limits from the environment. The
    development IdP, which the parent process serves, refuses the third sign-in page from one
    address; the workers refuse registrations past the burst (each worker counts its own)."""
    env = {
        "STEWARD_ADDRESS_LIMITS__SIGN_IN_PER_MINUTE": "1",
        "STEWARD_ADDRESS_LIMITS__SIGN_IN_BURST": "2",
        "STEWARD_ADDRESS_LIMITS__REGISTER_PER_MINUTE": "1",
        "STEWARD_ADDRESS_LIMITS__REGISTER_BURST": "1",
    }
    with steward_serve(
        "--workers", "2", "--port", "0", "--database-url", fresh_db, env=env
    ) as server:
        ready = server.ready
        async with httpx.AsyncClient(timeout=10) as http:
            _, challenge = pkce()
            params = {
                "response_type": "code",
                "client_id": "steward",
                "redirect_uri": REDIRECT_URI,
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
            page = f"{ready['dev_idp_url']}/authorize"
            pages = [(await http.get(page, params=params)).status_code for _ in range(3)]
            assert pages == [200, 200, 429]
            url = ready["mcp_url"].removesuffix("/mcp") + "/register"
            body = {"redirect_uris": [REDIRECT_URI]}
            statuses = []
            for _ in range(6):  # new connections: the kernel spreads them over the workers
                async with httpx.AsyncClient(timeout=10) as fresh:
                    statuses.append((await fresh.post(url, json=body)).status_code)
            assert statuses.count(201) <= 2 and statuses.count(429) >= 4, statuses
