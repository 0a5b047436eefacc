"""Three Steward nodes in three processes on one machine and one PostgreSQL (steward serve --workers 3)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bench._servers import obtain_token, obtain_tokens
from tests.harness._pg import psql
from tests.harness._serve import steward_serve
from tests.harness._steward import SseReader, sse_stream

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "multi-admin"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture
def three_nodes(fresh_db: str) -> Iterator[dict[str, Any]]:
    with steward_serve(
        "--workers",
        "3",
        "--port",
        "0",
        "--database-url",
        fresh_db,
        env={"STEWARD_ADMIN_TOKEN": ADMIN},
    ) as server:
        yield server.ready


async def initialize(url: str, token: str) -> str:
    async with httpx.AsyncClient(timeout=20) as http:  # a fresh connection: any node may take it
        r = await http.post(
            url,
            headers={**HEADERS, "authorization": f"Bearer {token}"},
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
        assert r.status_code == 200, r.text
        return r.headers["mcp-session-id"]


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", "server.cli serve"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


async def test_three_nodes_spread_sessions_revoke_everywhere_and_survive_a_killed_node(
    three_nodes: dict[str, Any], fresh_db: str
) -> None:
    doc = three_nodes
    url = doc["mcp_url"]
    assert len(doc["node_id"]) == 3
    tokens = [await trio.to_thread.run_sync(obtain_token, doc, "alice") for _ in range(9)]
    session_ids = [await initialize(url, t) for t in tokens]
    readers: list[tuple[httpx.AsyncClient, Any, SseReader]] = []
    async with trio.open_nursery() as nursery:
        for token, sid in zip(tokens, session_ids, strict=True):
            http = httpx.AsyncClient(timeout=30)
            headers = {
                **HEADERS,
                "accept": "text/event-stream",
                "authorization": f"Bearer {token}",
                "mcp-session-id": sid,
                "mcp-protocol-version": "2025-11-25",
            }
            cm = http.stream("GET", url, headers=headers)
            response = await cm.__aenter__()
            assert response.status_code == 200
            reader = SseReader(response)
            nursery.start_soon(reader._pump)
            readers.append((http, cm, reader))
        for _, _, reader in readers:
            await reader.next()  # priming
        from tests.harness._pg import psql

        nodes = psql(
            fresh_db, "SELECT count(DISTINCT node_id) FROM connections WHERE closed_at IS NULL"
        )
        assert int(nodes) >= 2, "the kernel spread nine connections over fewer than two nodes"
        user_id = psql(fresh_db, "SELECT user_id FROM users WHERE subject = 'alice'")
        async with httpx.AsyncClient(timeout=20) as admin:
            started = trio.current_time()
            r = await admin.post(
                f"{doc['admin_url']}users/revoke",
                json={"user_id": user_id},
                headers={"authorization": f"Bearer {ADMIN}"},
            )
            assert r.status_code == 200
        with trio.fail_after(1.0):
            for _, _, reader in readers:
                event = await reader.next()
                assert event is not None and event["data"]["params"]["data"]["error"] == "revoked"
        assert trio.current_time() - started < 1.0
        nursery.cancel_scope.cancel()
    for http, cm, _ in readers:
        await cm.__aexit__(None, None, None)
        await http.aclose()


async def test_a_killed_nodes_clients_resume_on_another(
    three_nodes: dict[str, Any], fresh_db: str
) -> None:
    doc = three_nodes
    url = doc["mcp_url"]
    from tests.harness._pg import psql

    token = await trio.to_thread.run_sync(obtain_token, doc, "bob")
    sid = await initialize(url, token)
    headers = {
        **HEADERS,
        "authorization": f"Bearer {token}",
        "mcp-session-id": sid,
        "mcp-protocol-version": "2025-11-25",
    }
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "resources/subscribe",
                "params": {"uri": "demo://readme"},
            },
        )
        assert r.status_code == 200
    # which node holds the session's stream: open it, find the node from its row, kill that process
    async with (
        httpx.AsyncClient(timeout=20) as http,
        http.stream("GET", url, headers={**headers, "accept": "text/event-stream"}) as response,
    ):
        reader = SseReader(response)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader._pump)
            first = await reader.next()
            assert first is not None and first["id"]
            node = psql(
                fresh_db,
                "SELECT node_id FROM connections WHERE closed_at IS NULL AND kind = 'get' ORDER BY opened_at DESC LIMIT 1",
            )
            pid = int(
                psql(fresh_db, f"SELECT info->>'pid' FROM nodes WHERE node_id = '{node}'") or 0
            )
            assert pid, "the node row names its process"
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(10):
                assert await reader.next() is None  # the stream broke with its node
            nursery.cancel_scope.cancel()
    # the client reconnects (the kernel now sends it to a live node) and resumes
    async with (
        httpx.AsyncClient(timeout=20) as http,
        http.stream(
            "GET",
            url,
            headers={**headers, "accept": "text/event-stream", "last-event-id": first["id"]},
        ) as response,
    ):
        assert response.status_code == 200
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "still here"}},
            },
        )
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "still here"


def session_headers(token: str, session_id: str) -> dict[str, str]:
    return {
        **HEADERS,
        "authorization": f"Bearer {token}",
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-11-25",
    }


async def call_tool(url: str, headers: dict[str, str], name: str) -> dict[str, Any]:
    """tools/call on a fresh connection (the kernel picks the process); the JSON-RPC reply."""
    async with httpx.AsyncClient(timeout=20) as http:
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": name}}
        r = await http.post(url, headers=headers, json=body)
        assert r.status_code == 200, r.text
        reply: dict[str, Any] = r.json()
        return reply


async def test_an_update_published_in_one_process_reaches_a_stream_in_another_exactly_once(
    three_nodes: dict[str, Any], fresh_db: str
) -> None:
    """Eight touch_readme calls spread by the kernel over three processes, one GET stream: eight
    updates, no more, in id order; the outbox LISTEN connections are cut half way."""
    url = three_nodes["mcp_url"]
    [token] = await obtain_tokens(three_nodes, ["bob"])
    headers = session_headers(token, await initialize(url, token))
    async with httpx.AsyncClient(timeout=20) as http:
        subscribe = {"uri": "demo://readme"}
        body = {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": subscribe}
        assert (await http.post(url, headers=headers, json=body)).status_code == 200
        stream_headers = {**headers, "accept": "text/event-stream"}
        async with sse_stream(http, "GET", url, headers=stream_headers) as reader:
            priming = await reader.next()
            assert priming is not None
            told_here = []
            for i in range(8):
                if i == 4:  # every node's relay reconnects and claims what waited meanwhile
                    cut = psql(
                        fresh_db,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE query LIKE 'LISTEN%steward_outbox%'",
                    )
                    assert cut == "3"
                reply = await call_tool(url, headers, "touch_readme")
                text = reply["result"]["content"][0]["text"]
                told_here.append(int(text.split("told: ")[1].split()[0]))
            updates = []
            with trio.fail_after(20):
                while len(updates) < 8:
                    event = await reader.next_message()
                    assert event is not None
                    updates.append(event)
            with trio.move_on_after(1.0) as nothing_more:
                await reader.next_message()
            assert nothing_more.cancelled_caught, "an update arrived twice"
    assert {e["data"]["method"] for e in updates} == {"notifications/resources/updated"}
    seqs = [int(e["id"].rpartition(":")[2]) for e in [priming, *updates]]
    assert seqs == sorted(set(seqs))
    assert told_here.count(0) >= 1, (
        f"no call reached another process than the stream's: {told_here}"
    )
    assert psql(fresh_db, "SELECT count(*) FROM outbox") == "0"


async def test_an_expired_upstream_token_is_refreshed_once_for_a_session_live_in_three_processes(
    three_nodes: dict[str, Any], fresh_db: str
) -> None:
    doc = three_nodes
    url = doc["mcp_url"]

    async def control(action: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(
                f"{doc['dev_idp_url']}/_control/{action}",
                json=args or {},
                headers={"x-control-secret": doc["dev_idp_control_secret"]},
            )
            assert r.status_code == 200, r.text
            stats: dict[str, Any] = r.json()
            return stats

    await control("token_ttl", {"seconds": 2})
    # carol (enterprise): up to 30 streams may be opened before the kernel spreads them over the
    # three processes, more than the free tier's stream limit
    [token] = await obtain_tokens(doc, ["carol"])  # its upstream token expires in 2 s
    await control("token_ttl", {"seconds": 3600})
    # the refresh takes a while: every process that holds the session meanwhile wants one
    await control("fail_refresh", {"mode": "slow", "seconds": 4, "count": 1})
    async with contextlib.AsyncExitStack() as streams:
        readers = await streams.enter_async_context(trio.open_nursery())
        for _ in range(30):  # one GET stream per transport session, until every process holds one
            headers = session_headers(token, await initialize(url, token))
            http = await streams.enter_async_context(httpx.AsyncClient(timeout=20))
            response = await streams.enter_async_context(
                http.stream("GET", url, headers={**headers, "accept": "text/event-stream"})
            )
            assert response.status_code == 200, (await response.aread()).decode()
            reader = SseReader(response)
            readers.start_soon(reader._pump)
            await reader.next()
            held = psql(
                fresh_db,
                "SELECT count(DISTINCT node_id) FROM connections WHERE closed_at IS NULL",
            )
            if held == "3":
                break
        assert held == "3", "the kernel spread 30 streams over fewer than three processes"
        # the token is refreshed a quarter of its lifetime before it expires (0.5 s): wait for
        # the refresh to start, so that the tool calls below meet it under way
        with trio.fail_after(10):
            while (await control("stats"))["calls"].get("refresh", 0) == 0:
                await trio.sleep(0.05)
        results = []
        with trio.fail_after(30):
            for _ in range(9):  # tool calls that need the upstream token, on any process
                while True:
                    reply = await call_tool(url, headers, "profile")
                    if "result" in reply and not reply["result"].get("isError"):
                        break
                    assert reply["error"]["data"]["retryable"], reply  # the refresh is under way
                    await trio.sleep(0.2)
                results.append(reply["result"]["structuredContent"]["upstream_token_length"])
        readers.cancel_scope.cancel()
    assert all(length > 0 for length in results)
    stats = await control("stats")
    assert stats["calls"]["refresh"] == 1


async def test_every_worker_reads_the_configuration_files_tier_limits(fresh_db: str) -> None:
    """``steward serve --workers 2 --config F``: F's tiers hold in every worker, not the
    defaults. The free tier allows a burst of 2 tool calls per worker, so 10 calls, each on a
    new connection (either worker may take it), pass at most 4 times and the rest are refused
    with the free tier's 429; with the default tiers (burst 20) all 10 would pass."""
    config = (
        '[[tiers]]\nname = "free"\nrequests_per_minute = 1\nburst = 2\n\n'
        '[[tiers]]\nname = "pro"\n\n[[tiers]]\nname = "enterprise"\n'
    )
    with steward_serve(
        "--workers", "2", "--port", "0", "--database-url", fresh_db, config=config
    ) as server:
        doc = server.ready
        token = await trio.to_thread.run_sync(obtain_token, doc, "alice")
        sid = await initialize(doc["mcp_url"], token)
        headers = {
            **HEADERS,
            "authorization": f"Bearer {token}",
            "mcp-session-id": sid,
            "mcp-protocol-version": "2025-11-25",
        }
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}},
        }
        statuses: list[int] = []
        refusals: list[str] = []
        for _ in range(10):
            async with httpx.AsyncClient(timeout=20) as http:  # a new connection each time
                r = await http.post(doc["mcp_url"], headers=headers, json=call)
            statuses.append(r.status_code)
            if r.status_code == 429:
                refusals.append(r.json()["error"]["message"])
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) <= 4, statuses
    assert refusals and all("rate limit of the free tier" in m for m in refusals), refusals
