"""The benchmark's load generator speaks correct HTTP and MCP to a live Steward (no timing asserted)."""

from __future__ import annotations

import httpx

from bench._loadgen import run_load
from tests.harness._steward import running_node, sign_in


async def test_the_load_generator_completes_sessions_without_errors(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "carol")
        port = int(node.info.mcp_url.rsplit(":", 1)[1].split("/")[0])
        result = await run_load("127.0.0.1", port, 2, 0.5, tokens["access_token"])
        assert result["errors"] == 0, result["error_kinds"]
        assert result["sessions_per_s"] > 0 and result["calls_per_s"] > 0
        assert result["calls_per_s"] >= 9 * result["sessions_per_s"]  # ten calls per session
