"""A long-lived stream outlives the access token that opened it by ``stream_token_grace`` at most;
then it ends with a final event that asks the client to reconnect (and an SSE ``retry``), and the
client resumes with a fresh token. Each stream keeps its own opening token's deadline."""

from __future__ import annotations

import httpx
import trio

from tests.harness._pg import psql
from tests.harness._steward import McpClient, get_stream, running_node, sign_in


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
            await trio.sleep(1.0)  # a second token of the same grant, one second younger
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
                assert node.mcp.get_streams[tab2.session_id or ""].closed_reason is None
                # the client comes back with its fresh token and resumes where it left off
                tab1.token = second
                async with get_stream(tab1, **{"last-event-id": priming["id"]}) as resumed:
                    assert node.mcp.notify_list_changed("tools") == 2
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
