"""A session the client ends (its own DELETE) closes its open stream quietly: the official SDK
client logs no error and no exception on exit (the README's quick start used to end in
``Error parsing SSE message … ClosedResourceError``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import httpx2
import trio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.harness._pg import psql
from tests.harness._steward import running_node, sign_in
from tests.harness._wait import wait_until


@contextmanager
def client_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record the client's libraries log at WARNING or above (or with an exception)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING or record.exc_info:
                records.append(record)

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


async def test_the_sdk_client_ending_its_session_logs_no_error(fresh_db: str) -> None:
    async with running_node(fresh_db) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "bob")
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        with client_logs() as records, trio.fail_after(30):
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as client,
                streamable_http_client(node.info.mcp_url, http_client=client) as (read, write, *_),
            ):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.call_tool("echo", {"text": "bye"})
                    assert result.content[0].text == "bye"  # type: ignore[union-attr]
                    # the SDK opens its GET stream in the background: the DELETE meets it open
                    await wait_until(node.streams, what="the SDK's GET stream")
            # the client sent its DELETE on exit: the session ended, its stream closed
            await wait_until(lambda: not node.streams(), what="no stream left")
        problems = [
            f"{r.name} {r.levelname}: {r.getMessage()[:300]}"
            for r in records
            if r.name.split(".")[0] in ("mcp", "httpx2", "httpx", "anyio")
        ]
        assert problems == []
        ended = psql(fresh_db, "SELECT count(*) FROM transport_sessions WHERE ended_at IS NOT NULL")
        assert ended == "1"
        reason = psql(fresh_db, "SELECT close_reason FROM connections WHERE kind = 'get'")
        assert reason == "session_deleted"
