"""Operators see Steward: /metrics in Prometheus format, /healthz and /readyz."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.harness._pg import Cluster
from tests.harness._steward import McpClient, running_node, sign_in


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
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
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
