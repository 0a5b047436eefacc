"""A long-lived stream outlives the access token that opened it by ``stream_token_grace`` at most;
then it ends with a final event that asks the client to reconnect (and an SSE ``retry``), and the
client resumes with a fresh token. Each stream keeps its own opening token's deadline."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import trio
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.harness._pg import psql
from tests.harness._sdk_storage import MemoryStorage
from tests.harness._steward import McpClient, get_stream, running_node, sign_in
from tests.harness._wait import wait_until
from tests.test_sdk_oauth import Browser, sdk_provider


async def test_a_stream_whose_opening_token_expired_ends_with_a_reconnect_hint_and_no_other(
    fresh_db: str,
) -> None:
    async with (
        running_node(fresh_db, access_token_ttl=2.0, stream_token_grace=0.5) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        first = await sign_in(http, node, "alice")
        tab1 = McpClient(http, node, first["access_token"])
        await tab1.initialize()
        async with get_stream(tab1) as s1:
            priming = await s1.next()
            assert priming is not None and priming["data"] is None
            # kept: time must pass for a second token of the same grant to be one second younger
            await trio.sleep(1.0)
            r = await http.post(
                f"{node.info.listen_url}/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": first["refresh_token"],
                    "client_id": first["client_id"],
                },
            )
            assert r.status_code == 200, r.text
            second = r.json()["access_token"]
            tab2 = McpClient(http, node, second)
            await tab2.initialize()
            async with get_stream(tab2) as s2:
                assert (await s2.next()) is not None
                with trio.fail_after(5):
                    hint = await s1.next()
                assert hint is not None and "id" not in hint  # resuming continues before it
                assert hint["retry"] == "1000"
                params = hint["data"]["params"]
                assert params["level"] == "warning"
                assert params["data"]["error"] == "token_expired"
                assert params["data"]["reconnect"] is True
                assert await s1.next() is None  # the stream ended
                # the younger token's stream of the same session is still open
                younger = node.stream(tab2.session_id or "")
                assert younger is not None and younger.open
                # the client comes back with its fresh token and resumes where it left off
                tab1.token = second
                async with get_stream(tab1, **{"last-event-id": priming["id"]}) as resumed:
                    assert node.notify_list_changed("tools") == 2
                    with trio.fail_after(5):
                        event = await resumed.next_message()
                    assert event is not None
                    assert event["data"]["method"] == "notifications/tools/list_changed"
                with trio.fail_after(5):  # s2 ends in turn, when its own token's grace is over
                    while (event := await s2.next()) is not None and event.get("data") is not None:
                        if event["data"].get("params", {}).get("level") == "warning":
                            break
                assert event is not None and event["data"]["params"]["data"]["error"] == (
                    "token_expired"
                )
        await node.store.write()
        closed = "SELECT count(*) FROM connections WHERE close_reason = 'token_expired'"
        assert psql(fresh_db, closed) == "2"


async def test_the_sdk_client_reconnects_its_get_stream_with_a_fresh_token(fresh_db: str) -> None:
    """The official SDK client: its GET stream ends with the reconnect hint, it reconnects after
    the hinted ``retry`` with Last-Event-ID and a refreshed token, and notifications reach it on
    the new stream."""
    async with running_node(fresh_db, access_token_ttl=2.0, stream_token_grace=0.5) as node:
        browser, storage = Browser(node, "bob"), MemoryStorage()
        send, received = trio.open_memory_channel[Any](16)

        async def on_message(message: Any) -> None:
            if not isinstance(message, Exception):
                send.send_nowait(message)

        async with (
            httpx2.AsyncClient(auth=sdk_provider(node, browser, storage), timeout=30) as http,
            streamable_http_client(f"{node.info.listen_url}/mcp", http_client=http) as (
                read,
                write,
                *_,
            ),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            await session.initialize()
            assert storage.tokens is not None
            opened_with = storage.tokens.access_token
            await wait_until(node.streams, what="the SDK's GET stream")
            (first,) = node.streams()

            def came_back() -> bool:  # the hint ends it, the client comes back on its own
                now = node.streams()
                return bool(now) and all(s.open and s.id != first.id for s in now)

            await wait_until(came_back, what="a new GET stream in place of the first")
            ended = f"SELECT close_reason FROM connections WHERE connection_id = '{first.id}'"
            await wait_until(
                lambda: psql(fresh_db, ended) == "token_expired", every=0.05, what=ended
            )
            assert storage.tokens.access_token != opened_with  # it refreshed before reconnecting
            hint = await received.receive()  # the SDK hands the hint to the application
            assert isinstance(hint, types.LoggingMessageNotification)
            assert hint.params.data["error"] == "token_expired"
            assert node.notify_list_changed("tools") == 1
            with trio.fail_after(5):
                note = await received.receive()
            assert isinstance(note, types.ToolListChangedNotification)
            assert browser.sign_ins == 1
