"""Operators see Steward: /metrics in Prometheus format, /healthz and /readyz."""

from __future__ import annotations

import json

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.harness._pg import Cluster
from tests.harness._steward import McpClient, running_node, sign_in
from tests.harness._wait import wait_until


async def test_metrics_health_and_readiness(pg_cluster: Cluster, fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        base = node.info.listen_url
        tokens = await sign_in(http, node, "bob")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        await mcp.call("tools/list")
        text = (await http.get(f"{base}/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        live = {tuple(s.labels.items()): s.value for s in families["steward_live_sessions"].samples}
        assert live == {(("tier", "pro"),): 1.0}
        requests = [
            s
            for s in families["steward_http_requests"].samples
            if s.labels.get("route") == "/mcp" and s.labels.get("status") == "200"
        ]
        assert requests and requests[0].value >= 2
        assert families["steward_store_connected"].samples[0].value == 1.0
        assert (
            "steward_store_commit_latency_ms" in families and "steward_actor_restarts" in families
        )
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok", "service": "steward"}
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["pending_migrations"] == []
        await pg_cluster.stop("immediate")
        try:
            down = await http.get(f"{base}/readyz")
            assert down.status_code == 503 and down.json()["database"] == "unreachable"
            assert (await http.get(f"{base}/healthz")).status_code == 200
        finally:
            await pg_cluster.start()


async def test_the_admin_api_lists_sessions_and_revokes_users(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, admin_token="admin-secret") as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        base = f"{node.info.listen_url}/admin/api"
        admin = {"authorization": "Bearer admin-secret"}
        assert (await http.get(f"{base}/sessions")).status_code == 401
        assert (
            await http.get(f"{base}/sessions", headers={"authorization": "Bearer wrong"})
        ).status_code == 401
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        sessions = (
            await http.get(f"{base}/sessions", params={"user": "alice"}, headers=admin)
        ).json()["sessions"]
        assert (
            len(sessions) == 1
            and sessions[0]["tier"] == "free"
            and sessions[0]["live_here"] is True
        )
        tree = (await http.get(f"{base}/tree", headers=admin)).json()
        root = next(t for t in tree["trees"] if t["id"] == "root")
        assert [c["id"] for c in root["children"]] == [
            "dev_idp",
            "store",
            "schema",
            "sessions",
            "notifier",
            "janitor",
            "revoker",
            "relay",
            "http",
        ]
        bad = await http.post(
            f"{base}/users/set-tier",
            json={"user_id": sessions[0]["user_id"], "tier": "platinum"},
            headers=admin,
        )
        assert bad.status_code == 400 and "tier must be one of" in bad.json()["error_description"]
        ok = await http.post(
            f"{base}/users/revoke", json={"user_id": sessions[0]["user_id"]}, headers=admin
        )
        assert ok.status_code == 200
        assert (await mcp.post("ping")).status_code == 401
        events = (await http.get(f"{base}/events", headers=admin)).json()["events"]
        assert "revoked" in {e["kind"] for e in events}
        assert (
            await http.post(f"{base}/users/revoke", content=b"[1]", headers=admin)
        ).status_code == 400


async def test_the_mcp_endpoint_reports_its_live_state_in_statistics_and_metrics(
    fresh_db: str,
) -> None:
    """McpHttp.statistics(): live exchanges, parked 2026 requests, server requests awaiting the
    client, resumable and long-lived streams, events stored; the same figures in /metrics."""
    from examples.everything import app as everything
    from tests.harness._steward import SseReader, get_stream

    async with (
        running_node(fresh_db, app=everything) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        idle = node.statistics().endpoint
        assert (idle.live_exchanges, idle.parked_requests, idle.open_streams) == (0, 0, 0)
        assert idle.max_inflight == 10_000 and idle.events_stored == 0
        token = (await sign_in(http, node, "carol"))["access_token"]
        name = "test_input_required_result_multi_round"
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        }
        r = await http.post(  # a 2026 request asks for input: it is parked until the retry
            node.info.mcp_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": name, "arguments": {}, "_meta": meta},
            },
            headers={
                "accept": "application/json, text/event-stream",
                "authorization": f"Bearer {token}",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": name,
            },
        )
        assert r.json()["result"]["resultType"] == "input_required"
        assert node.statistics().endpoint.parked_requests == 1
        mcp = McpClient(http, node, token)
        await mcp.initialize()
        async with get_stream(mcp) as stream:
            await stream.next()
            assert (
                node.statistics().endpoint.get_streams
                == node.statistics().endpoint.open_streams
                == 1
            )
            body = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}},
            }
            async with http.stream("POST", mcp.url, json=body, headers=mcp.headers()) as reply:
                reader = SseReader(reply)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader._pump)
                    asked = await reader.next_message()
                    assert asked is not None and asked["data"]["method"] == "sampling/createMessage"
                    busy = node.statistics().endpoint
                    # the parked 2026 request still runs and awaits its input too
                    assert busy.live_exchanges == 2 and busy.pending_client_answers == 2
                    assert busy.resumable_streams == 1 and busy.events_stored >= 1
                    answer = {
                        "jsonrpc": "2.0",
                        "id": asked["data"]["id"],
                        "result": {
                            "role": "assistant",
                            "content": {"type": "text", "text": "hello"},
                            "model": "m",
                        },
                    }
                    assert (
                        await http.post(mcp.url, json=answer, headers=mcp.headers())
                    ).status_code == 202
                    done = await reader.next_message()
                    assert done is not None and "LLM response: hello" in json.dumps(done["data"])
                    nursery.cancel_scope.cancel()
        # the server sees the GET stream's client leave
        await wait_until(lambda: not node.statistics().endpoint.open_streams, within=5)
        after = node.statistics().endpoint
        assert (after.live_exchanges, after.pending_client_answers) == (1, 1)
        assert after.resumable_streams == 0
        assert after.events_stored == busy.events_stored + 1  # the response, stored too
        text = (await http.get(f"{node.info.listen_url}/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["steward_mcp_parked_requests"].samples[0].value == 1.0
        assert families["steward_mcp_events_stored"].samples[0].value == after.events_stored
        assert families["steward_mcp_pending_client_answers"].samples[0].value == 1.0
        assert families["steward_mcp_live_exchanges"].samples[0].value == 1.0
