"""The fault catalog. Each scenario injects one fault into a live Steward (real PostgreSQL, real
Hypercorn, real HTTP clients holding real streams) and asserts its blast radius exactly."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio.lowlevel

from actors import StorePolicy
from actors.sessions import SessionPolicy
from bench._servers import free_port, obtain_token
from runtime import Backoff, faults
from server._node import Node, bind_socket
from tests.faults._report import observe
from tests.harness._pg import Cluster, psql
from tests.harness._proxy import FaultProxy
from tests.harness._serve import steward_serve
from tests.harness._steward import McpClient, get_stream, running_node, sign_in
from tests.harness._wait import wait_until

pytestmark = pytest.mark.faults


async def client(http: httpx.AsyncClient, node: object, user: str) -> McpClient:
    tokens = await sign_in(http, node, user)  # type: ignore[arg-type]
    mcp = McpClient(http, node, tokens["access_token"])  # type: ignore[arg-type]
    await mcp.initialize()
    return mcp


async def is_open(stream: object, seconds: float = 0.3) -> bool:
    """A stream is open if nothing ends it within ``seconds`` (keep-alives are skipped)."""
    with trio.move_on_after(seconds):
        event = await stream.next()  # type: ignore[attr-defined]
        if event is None:
            return False
        data = event.get("data") or {}
        return not (isinstance(data, dict) and data.get("params", {}).get("level") == "error")
    return True


def user_id(db: str, name: str) -> str:
    return psql(db, f"SELECT user_id FROM users WHERE subject = '{name}'")


async def test_database_killed(pg_cluster: Cluster, fresh_db: str) -> None:
    """(c) PostgreSQL goes down while a stream is open: the PostgreSQL server is killed (SIGKILL)
    under a live node with Alice's GET stream open. Her stream stays open; five tool calls with
    her already verified token succeed while the database is away, each usage event queued in the
    store; PostgreSQL comes back, the store reconnects and commits the queue, the stream is still
    open, and all five usage events are in the database: nothing lost, the store not restarted."""
    with observe(
        "database killed",
        "SIGKILL the PostgreSQL postmaster, restart it",
        "the notifier reconnects; live streams stay, cached tokens work, writes queue",
    ) as obs:
        async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
            mcp = await client(http, node, "alice")
            async with get_stream(mcp) as stream:
                await stream.next()
                pg_cluster.kill()
                try:
                    for _ in range(5):  # each call's usage event queues in the store
                        r = await mcp.post(
                            "tools/call", {"name": "echo", "arguments": {"text": "x"}}
                        )
                        if r.status_code != 200:
                            obs.failed(r.status_code)
                    assert await is_open(stream)
                finally:
                    await pg_cluster.start()
                with trio.fail_after(20):
                    while (
                        node.store.statistics().queue_depth or not node.store.statistics().connected
                    ):
                        await trio.sleep(0.05)
                assert await is_open(stream)
            calls = int(
                psql(fresh_db, "SELECT count(*) FROM usage_events WHERE method = 'tools/call'")
            )
            obs.writes_lost = 5 - calls
    assert obs.failed_requests == {} and obs.writes_lost == 0
    assert not any(k.startswith("root/store") for k in obs.restarted)


async def test_database_unreachable(pg_cluster: Cluster, fresh_db: str) -> None:
    port = urlsplit(fresh_db).port
    assert port is not None
    async with FaultProxy.open("127.0.0.1", port) as proxy:
        dsn = fresh_db.replace(f":{port}/", f":{proxy.port}/")
        policy = StorePolicy(command_timeout=1.0, connect_timeout=1.0, read_wait=0.5)
        with observe(
            "database unreachable",
            "black-hole the TCP path to PostgreSQL",
            "uncached token reads: 503; nothing else",
        ) as obs:
            async with (
                running_node(dsn, store_policy=policy) as node,
                httpx.AsyncClient(timeout=20) as http,
            ):
                known = await client(http, node, "alice")
                stranger = await sign_in(http, node, "bob")
                proxy.blackhole()
                assert (await known.post("ping")).status_code == 200
                r = await McpClient(http, node, stranger["access_token"]).post("ping")
                obs.failed(r.status_code)
                assert r.status_code == 503 and r.headers["retry-after"]
                proxy.pass_through()
                late = McpClient(http, node, stranger["access_token"])
                with trio.fail_after(20):
                    while (await late.post("tools/list")).status_code == 503:
                        await trio.sleep(0.1)
    assert obs.failed_requests == {"503": 1}


async def test_database_slow(pg_cluster: Cluster, fresh_db: str) -> None:
    port = urlsplit(fresh_db).port
    assert port is not None
    async with FaultProxy.open("127.0.0.1", port) as proxy:
        dsn = fresh_db.replace(f":{port}/", f":{proxy.port}/")
        with observe(
            "database slow",
            "100 ms added to every packet to and from PostgreSQL",
            "none: requests slower, none failed",
        ) as obs:
            async with running_node(dsn) as node, httpx.AsyncClient(timeout=30) as http:
                mcp = await client(http, node, "alice")
                proxy.delay(0.1)
                for _ in range(3):
                    r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "x"}})
                    if r.status_code != 200:
                        obs.failed(r.status_code)
                other = await client(http, node, "bob")  # a sign-in through the slow database
                assert (await other.post("ping")).status_code == 200
                await node.store.write()
                assert node.store.statistics().commit_latency_p99_ms > 100
    assert obs.failed_requests == {} and obs.restarted == {}


async def _idp_fault(
    fresh_db: str, scenario: str, fault: str, mode: str, *, timeout: float | None = None
) -> None:
    # 1 s upstream tokens refreshed without the default 5 s floor between two attempts
    policy = SessionPolicy(keeper_backoff=Backoff(min=0.05, max=0.2, jitter=0.0), refresh_floor=0.1)
    with observe(
        scenario,
        fault,
        "this session's token keeper restarts with backoff; the session keeps serving",
    ) as obs:
        async with (
            running_node(fresh_db, session_policy=policy) as node,
            httpx.AsyncClient(timeout=20) as http,
        ):
            assert node.dev_idp is not None
            if timeout is not None:
                node.sessions.upstream._http.timeout = httpx.Timeout(timeout)
                node.dev_idp.slow_seconds = timeout * 3
            node.dev_idp.access_ttl = 1.0  # refresh at once
            node.dev_idp.fail_refreshes(mode, 2)
            mcp = await client(http, node, "alice")
            async with get_stream(mcp) as stream:
                await stream.next()
                await wait_until(
                    lambda: (
                        not (node.dev_idp.refresh_faults_left or node.dev_idp.calls["refresh"] < 3)
                    ),
                    within=15,
                    every=0.05,
                )
                assert (await mcp.post("ping")).status_code == 200
                assert await is_open(stream)
    assert obs.restarted.get("session/token_keeper", 0) >= 2
    assert obs.failed_requests == {}


async def test_idp_5xx(fresh_db: str) -> None:
    await _idp_fault(fresh_db, "IdP 5xx", "the next two upstream refreshes answer 503", "5xx")


async def test_idp_timeout(fresh_db: str) -> None:
    await _idp_fault(
        fresh_db,
        "IdP timeout",
        "the next two upstream refreshes hang past the client timeout",
        "slow",
        timeout=0.3,
    )


async def test_idp_invalid_grant(fresh_db: str) -> None:
    with observe(
        "IdP invalid_grant",
        "the upstream refresh answers invalid_grant",
        "this session: reauth_required, its streams closed; other sessions untouched",
    ) as obs:
        async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
            assert node.dev_idp is not None
            bob = await client(http, node, "bob")
            node.dev_idp.access_ttl = 1.0
            node.dev_idp.fail_refreshes("invalid_grant")
            carol = await client(http, node, "carol")
            with trio.fail_after(10):
                while (r := await carol.post("ping")).status_code != 401:
                    await trio.sleep(0.05)
            obs.failed(r.status_code)
            assert (await bob.post("ping")).status_code == 200
            obs.streams_closed = int(
                psql(
                    fresh_db,
                    "SELECT count(*) FROM connections WHERE close_reason = 'reauth_required'",
                )
            )
        assert psql(fresh_db, "SELECT string_agg(status, ',' ORDER BY status) FROM grants") in (
            "active,reauth_required",
            "reauth_required,active",
        )


async def test_user_revoked(fresh_db: str) -> None:
    with observe(
        "user revoked",
        "an operator revokes a user with two tabs open",
        "that user's streams closed with an error event; others untouched",
    ) as obs:
        async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
            tab1, tab2, other = (
                await client(http, node, "alice"),
                await client(http, node, "alice"),
                await client(http, node, "bob"),
            )
            async with get_stream(tab1) as s1, get_stream(tab2) as s2, get_stream(other) as s3:
                for s in (s1, s2, s3):
                    await s.next()
                await node.sessions.revoke_user(user_id(fresh_db, "alice"))
                for s in (s1, s2):
                    event = await s.next()
                    assert (
                        event is not None and event["data"]["params"]["data"]["error"] == "revoked"
                    )
                    obs.streams_closed += 1
                assert await is_open(s3)
            r = await tab1.post("ping")
            obs.failed(r.status_code)
            assert r.status_code == 401 and (await other.post("ping")).status_code == 200
    assert obs.streams_closed == 2


async def test_tier_downgraded_mid_stream(fresh_db: str) -> None:
    with observe(
        "tier downgraded mid-stream",
        "bob goes from pro to free while his stream is open",
        "pro-only tools answer with the tier sentence (isError); the stream stays and hears list_changed",
    ) as obs:
        async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
            bob = await client(http, node, "bob")
            assert (await bob.call("tools/call", {"name": "report", "arguments": {"topic": "t"}}))[
                "result"
            ]["isError"] is False
            async with get_stream(bob) as stream:
                await stream.next()
                await node.sessions.set_tier(user_id(fresh_db, "bob"), "free")
                r = await bob.post("tools/call", {"name": "report", "arguments": {"topic": "t"}})
                assert r.status_code == 200
                result = r.json()["result"]
                if result["isError"]:
                    obs.failed(403)  # refused for the tier, inside MCP
                assert result["isError"] is True
                assert "needs the pro tier or above; this account is free" in str(result["content"])
                assert await is_open(stream)
    assert obs.failed_requests == {"403": 1} and obs.restarted == {}


async def test_connection_actor_crash(fresh_db: str) -> None:
    with observe("connection actor crash", "one stream's actor raises", "that stream only") as obs:
        async with (
            running_node(fresh_db, session_policy=SessionPolicy(heartbeat=0.2)) as node,
            httpx.AsyncClient(timeout=20) as http,
        ):
            tokens = await sign_in(http, node, "alice")
            tab1, tab2 = (
                McpClient(http, node, tokens["access_token"]),
                McpClient(http, node, tokens["access_token"]),
            )
            await tab1.initialize()
            await tab2.initialize()
            faults.arm("connection.heartbeat", error=RuntimeError("crash"), times=1)
            try:
                async with get_stream(tab1) as s1, get_stream(tab2) as s2:
                    await s1.next()
                    await s2.next()
                    await wait_until(lambda: faults.hits("connection.heartbeat") != 0, within=5)
                    states = [await is_open(s, 0.5) for s in (s1, s2)]
                    obs.streams_closed = states.count(False)
            finally:
                faults.reset()
    assert obs.streams_closed == 1 and obs.restarted == {}


async def test_session_actor_crash(fresh_db: str) -> None:
    policy = SessionPolicy(idle_timeout=0.4, heartbeat=0.2)
    with observe(
        "session actor crash",
        "one user session's actor raises",
        "that session restarts and rehydrates; its streams close; others untouched",
    ) as obs:
        async with (
            running_node(fresh_db, session_policy=policy) as node,
            httpx.AsyncClient(timeout=20) as http,
        ):
            alice, bob = await client(http, node, "alice"), await client(http, node, "bob")
            async with get_stream(alice) as s1, get_stream(bob) as s2:
                await s1.next()
                await s2.next()
                faults.arm("session.tick", error=RuntimeError("session crash"), times=1)
                try:
                    await wait_until(lambda: faults.hits("session.tick") != 0, within=5)
                finally:
                    faults.reset()
                states = [await is_open(s, 0.5) for s in (s1, s2)]
                obs.streams_closed = states.count(False)
            for c in (alice, bob):
                assert (
                    await c.post("ping")
                ).status_code == 200  # both answer: the crashed one rehydrated
    assert obs.streams_closed == 1
    assert obs.restarted == {"sessions/session_or_connection": 1}


async def test_store_crash(fresh_db: str) -> None:
    with observe(
        "store crash",
        "the store actor raises in a commit",
        "the store restarts; queued writes commit; the notifier listens again on the new connection",
    ) as obs:
        async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
            mcp = await client(http, node, "alice")
            faults.arm("store.commit", error=RuntimeError("store crash"), times=1)
            try:
                for _ in range(5):
                    r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "x"}})
                    if r.status_code != 200:
                        obs.failed(r.status_code)
                await node.store.write()
            finally:
                faults.reset()
            obs.writes_lost = 5 - int(
                psql(fresh_db, "SELECT count(*) FROM usage_events WHERE method = 'tools/call'")
            )
    # a new incarnation is a new loop and pool: the LISTEN connection of the old one is closed
    # and the notifier listens again (before, it stayed on the closed loop and heard nothing)
    assert obs.restarted == {"root/store": 1, "root/notifier": 1}
    assert obs.writes_lost == 0 and obs.failed_requests == {}


async def test_token_keeper_crash_loop(fresh_db: str) -> None:
    policy = SessionPolicy(keeper_backoff=Backoff(min=0.01, max=0.02, jitter=0.0))
    with observe(
        "token keeper crash loop",
        "the token keeper raises on every refresh, past its session's restart intensity",
        "the session escalates and restarts once; others untouched",
    ) as obs:
        async with (
            running_node(fresh_db, session_policy=policy) as node,
            httpx.AsyncClient(timeout=20) as http,
        ):
            assert node.dev_idp is not None
            bob = await client(http, node, "bob")
            node.dev_idp.access_ttl = 1.0
            faults.arm("token_keeper.refresh", error=RuntimeError("keeper bug"), times=6)
            try:
                alice = await client(http, node, "alice")
                await wait_until(lambda: faults.hits("token_keeper.refresh") >= 6)
                await wait_until(
                    lambda: session_restarts(node) >= 1, what="alice's session restarted"
                )
            finally:
                faults.reset()
            assert (await alice.post("ping")).status_code == 200
            assert (await bob.post("ping")).status_code == 200
    assert obs.restarted.get("session/token_keeper") == 5
    assert obs.restarted.get("sessions/session_or_connection") == 1


async def test_slow_client_filling_its_outbox(fresh_db: str) -> None:
    policy = SessionPolicy(outbox_size=4)
    with observe(
        "slow client",
        "a client stops reading its stream while messages keep coming",
        "that stream closed as slow_client; others untouched",
    ) as obs:
        async with (
            running_node(fresh_db, session_policy=policy) as node,
            httpx.AsyncClient(timeout=20) as http,
        ):
            slow, fine = await client(http, node, "alice"), await client(http, node, "bob")
            async with get_stream(slow) as s1, get_stream(fine) as s2:
                await s1.next()
                await s2.next()
                big = {
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": "info", "data": "x" * 65536},
                }
                sent = 0
                # at most 26 MB (more than the socket buffers hold), until the stream is closed
                while sent < 400 and node.send_to_session(slow.session_id or "", big):
                    sent += 1
                    await trio.lowlevel.checkpoint()
                assert sent < 400, "the slow client's stream was never closed"
                closed = (
                    "SELECT close_reason FROM connections WHERE kind = 'get' "
                    f"AND session_id = '{slow.session_id}'"
                )
                await wait_until(
                    lambda: psql(fresh_db, closed) == "slow_client", every=0.05, what=closed
                )
                obs.streams_closed = 1
                node.notify_resource_updated("nothing")
                assert await is_open(s2)
    assert obs.restarted == {}


def session_restarts(node: Node) -> int:
    """Restarts of the sessions under the node's session supervisor, as its tree shows them."""
    assert node.root is not None
    (sessions,) = [c for c in node.root.tree().children if c.id == "sessions"]
    return sum(c.restarts for c in sessions.children)


async def test_client_vanishes_without_fin(fresh_db: str) -> None:
    """A client's TCP path goes silent mid-stream (no FIN, no RST, nothing read): Steward's writes
    to it stay unacknowledged, the kernel drops the connection after the listening socket's
    TCP_USER_TIMEOUT, and that stream alone closes (its row closed)."""
    sock = bind_socket("127.0.0.1", 0, unacked_limit=0.5)
    with observe(
        "client vanishes without FIN",
        "a client's TCP path is black-holed mid-stream: no FIN, no RST, nothing acknowledged",
        "that stream closed once its writes stay unacknowledged; others untouched",
    ) as obs:
        async with (
            running_node(fresh_db, session_policy=SessionPolicy(heartbeat=0.05), sock=sock) as node,
            FaultProxy.open("127.0.0.1", sock.getsockname()[1], receive_buffer=4096) as proxy,
            httpx.AsyncClient(timeout=20) as http,
        ):
            vanishing = await client(http, node, "alice")
            vanishing.url = (
                f"http://127.0.0.1:{proxy.port}/mcp"  # its stream goes through the proxy
            )
            staying = await client(http, node, "bob")
            async with get_stream(vanishing) as s1, get_stream(staying) as s2:
                await s1.next()
                await s2.next()
                gone, other = vanishing.session_id or "", staying.session_id or ""
                proxy.blackhole()
                # On loopback the proxy's kernel still acknowledges what fits its receive buffer;
                # filling that buffer leaves the next writes unacknowledged (a zero window), the
                # state a vanished client leaves every write in.
                log = {"level": "info", "data": "x" * 8192}
                for _ in range(3):
                    assert node.send_to_session(
                        gone, {"jsonrpc": "2.0", "method": "notifications/message", "params": log}
                    )

                def closed() -> bool:
                    stream = node.stream(gone)
                    return stream is None or not stream.open

                await wait_until(closed, what="the vanishing client's stream closed")
                await node.store.write()
                closed = psql(
                    fresh_db,
                    "SELECT string_agg(close_reason, ',') FROM connections WHERE closed_at IS NOT NULL",
                )
                assert closed == "client_disconnected"
                obs.streams_closed = 1
                staying_stream = node.stream(other)
                assert staying_stream is not None and staying_stream.open and await is_open(s2)
                r = await staying.post("ping")
                if r.status_code != 200:
                    obs.failed(r.status_code)
    assert obs.streams_closed == 1 and obs.restarted == {} and obs.failed_requests == {}


async def test_notifier_catches_up_after_its_connection_drops(fresh_db: str) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    with observe(
        "listen connection dropped",
        "the notifier's LISTEN backend is terminated while another node revokes",
        "none lost: the event is delivered after reconnecting",
    ) as obs:
        async with (
            running_node(fresh_db, public_url="http://steward.test", encryption_key=key) as a,
            running_node(fresh_db, public_url="http://steward.test", encryption_key=key) as b,
            httpx.AsyncClient(timeout=20) as http,
        ):
            tokens = await sign_in(http, a, "alice")
            on_b = McpClient(http, b, tokens["access_token"])
            await on_b.initialize()
            async with get_stream(on_b) as stream:
                await stream.next()
                psql(
                    fresh_db,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
                )
                await a.sessions.revoke_user(user_id(fresh_db, "alice"))
                with trio.fail_after(10):
                    event = await stream.next()
                assert event is not None and event["data"]["params"]["data"]["error"] == "revoked"
                obs.streams_closed = 1
    assert obs.restarted.get("root/notifier", 0) >= 1


def test_steward_killed_mid_batch_and_restarted(tmp_path: Path) -> None:
    """kill -9 while requests and their writes are in flight, restart on the same data folder:
    acknowledged writes survive, old session ids answer again."""
    with steward_serve("--port", str(free_port())) as server:
        doc = server.ready
        token = obtain_token(doc, "bob")
        headers = {
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        }
        sessions = []
        with httpx.Client(timeout=30) as http:
            for _ in range(20):
                r = http.post(
                    doc["mcp_url"],
                    headers=headers,
                    json={
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-11-25",
                            "capabilities": {},
                            "clientInfo": {"name": "t", "version": "1"},
                        },
                    },
                )
                assert r.status_code == 200
                sessions.append(r.headers["mcp-session-id"])
            for sid in sessions:  # in flight when the process dies
                http.post(
                    doc["mcp_url"],
                    headers={**headers, "mcp-session-id": sid},
                    json={
                        "jsonrpc": "2.0",
                        "id": 2,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": "x"}},
                    },
                )
            server.kill()
            # the embedded PostgreSQL outlives its parent: the restarted Steward finds and reuses it
            server.start()
            answered = 0
            for sid in sessions:
                r = http.post(
                    doc["mcp_url"],
                    headers={
                        **headers,
                        "mcp-session-id": sid,
                        "mcp-protocol-version": "2025-11-25",
                    },
                    json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                )
                answered += r.status_code == 200
    report = {
        "scenario": "Steward killed mid-batch",
        "fault": "kill -9 of the Steward process with requests in flight, then a restart",
        "blast_radius": "the process; acknowledged writes and every transport session survive",
        "restarted": {"process": 1},
        "streams_closed": 0,
        "failed_requests": {},
        "writes_lost": len(sessions) - answered,
        "tasks_leaked": 0,
    }
    from tests.faults._report import RESULTS

    with RESULTS.open("a") as f:
        f.write(json.dumps(report) + "\n")
    assert answered == len(sessions)
