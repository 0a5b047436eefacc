"""What is durable before the answer (docs/store.md): a deleted transport session never answers
again, even when the node and its PostgreSQL crash right after the DELETE answered; a session
whose initialize answered is in PostgreSQL, so it survives a crash of the node."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from bench._servers import UNLIMITED_ADDRESSES, free_port, obtain_token
from server import EmbeddedPostgres
from tests.harness._serve import StewardProcess, steward_serve

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
SESSIONS = 20


def _session_headers(token: str, sid: str) -> dict[str, str]:
    return {
        **HEADERS,
        "authorization": f"Bearer {token}",
        "mcp-session-id": sid,
        "mcp-protocol-version": "2025-11-25",
    }


async def _initialize(http: httpx.AsyncClient, url: str, token: str) -> str:
    r = await http.post(url, headers={**HEADERS, "authorization": f"Bearer {token}"}, json=INIT)
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


async def _tools_list(http: httpx.AsyncClient, url: str, token: str, sid: str) -> int:
    r = await http.post(
        url,
        headers=_session_headers(token, sid),
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    )
    return r.status_code


async def _crash_postgres(server: StewardProcess) -> None:
    """An immediate stop: no checkpoint, no flush of what is in PostgreSQL's WAL buffers."""
    cluster = EmbeddedPostgres(server.folder / "data" / "postgres")
    await cluster.stop("immediate")


def _config() -> str:
    return (
        UNLIMITED_ADDRESSES + '[[tiers]]\nname = "enterprise"\nrequests_per_minute = 100000\n'
        "burst = 100000\nmax_sessions = 100000\ninitialize_per_minute = 100000\n"
    )


async def _deleted_then_crashed(server: StewardProcess) -> tuple[list[int], list[int]]:
    token = await trio.to_thread.run_sync(obtain_token, server.ready, "carol")
    url = server.ready["mcp_url"]
    async with httpx.AsyncClient(timeout=20) as http:
        kept = [await _initialize(http, url, token) for _ in range(SESSIONS)]
        deleted = [await _initialize(http, url, token) for _ in range(SESSIONS)]
        for sid in deleted:
            r = await http.delete(url, headers=_session_headers(token, sid))
            assert r.status_code in (200, 202, 204), r.text
    server.kill()  # right after the last DELETE answered
    await _crash_postgres(server)
    doc: dict[str, Any] = await trio.to_thread.run_sync(server.start)
    async with httpx.AsyncClient(timeout=20) as http:
        after_kept = [await _tools_list(http, doc["mcp_url"], token, sid) for sid in kept]
        after_deleted = [await _tools_list(http, doc["mcp_url"], token, sid) for sid in deleted]
    return after_kept, after_deleted


async def test_a_deleted_session_never_answers_again_after_the_node_and_postgresql_crash() -> None:
    # a fixed port: the token names the resource URL, which must be the same after the restart
    with steward_serve("--port", str(free_port()), config=_config()) as server:
        after_kept, after_deleted = await _deleted_then_crashed(server)
    assert after_deleted == [404] * SESSIONS
    assert after_kept == [200] * SESSIONS


async def test_an_initialized_session_answers_after_the_node_is_killed_right_after() -> None:
    # a fixed port: the token names the resource URL, which must be the same after the restart
    with steward_serve("--port", str(free_port()), config=_config()) as server:
        token = await trio.to_thread.run_sync(obtain_token, server.ready, "carol")
        async with httpx.AsyncClient(timeout=20) as http:
            sids = [
                await _initialize(http, server.ready["mcp_url"], token) for _ in range(SESSIONS)
            ]
        server.kill()  # right after the last initialize answered: PostgreSQL has every row
        doc: dict[str, Any] = await trio.to_thread.run_sync(server.start)
        async with httpx.AsyncClient(timeout=20) as http:
            statuses = [await _tools_list(http, doc["mcp_url"], token, sid) for sid in sids]
    assert statuses == [200] * SESSIONS
