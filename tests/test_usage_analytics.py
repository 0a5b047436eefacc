"""Usage an operator reads: real traffic from users of three tiers through a real node, then what
the admin API, `steward usage` and /metrics report, against the figures the test sent itself; a
quota refusal names its limit and its reset, the same on every node."""

from __future__ import annotations

import collections
import csv
import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors import Op
from server import Context, Steward
from tests.harness._steward import McpClient, SseReader, running_node, sign_in

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "usage-admin-secret"
STEWARD = [sys.executable, "-m", "server.cli"]
QUOTA = 4  # alice's free tier: tool calls a day
TIERS = [
    {"name": "free", "tool_call_quota": f"{QUOTA}/day"},
    {"name": "pro", "tool_call_quota": "1000/day"},
    {"name": "enterprise"},
]

app = Steward("usage-test")


@app.tool(scopes={"mcp:tools"})
async def echo(ctx: Context, text: str) -> str:
    """Echo."""
    return text


@app.tool(scopes={"mcp:tools"})
async def slow(ctx: Context) -> str:
    """Takes 0.3 s: in the 250-500 ms latency bucket."""
    await trio.sleep(0.3)
    return "done"


@app.tool(scopes={"mcp:tools"})
async def fail(ctx: Context) -> str:
    """Always fails (a tool result with isError)."""
    raise RuntimeError("broken on purpose")


# what each user calls: (tool, arguments) in order; "nope" is no tool of the application
PLAN: dict[str, list[str]] = {
    "alice": ["echo", "echo", "fail", "echo"],  # free: the whole quota of 4
    "bob": ["echo", "slow", "echo", "fail", "echo", "nope", "slow", "echo"],  # pro
    "carol": ["echo", "slow", "echo"],  # enterprise
}
TIER_OF = {"alice": "free", "bob": "pro", "carol": "enterprise"}
ARGS = {"echo": {"text": "x"}, "slow": {}, "fail": {}, "nope": {}}


def next_utc_midnight() -> str:
    today = datetime.datetime.now(datetime.UTC).date()
    return f"{today + datetime.timedelta(days=1)}T00:00:00Z"


async def drive(http: httpx.AsyncClient, node: Any) -> tuple[dict[str, McpClient], Any]:
    """Send PLAN; returns the clients and what was sent: (user, tool) -> [calls, errors] as the
    answers showed them (an error result or a JSON-RPC error)."""
    sent: collections.defaultdict[tuple[str, str], list[int]] = collections.defaultdict(
        lambda: [0, 0]
    )
    clients = {}
    for user, tools in PLAN.items():
        mcp = McpClient(http, node, (await sign_in(http, node, user))["access_token"])
        await mcp.initialize()
        clients[user] = mcp
        for tool in tools:
            body = await mcp.call("tools/call", {"name": tool, "arguments": ARGS[tool]})
            failed = "error" in body or body["result"].get("isError") is True
            counted = tool if tool in app.tools else "(other)"
            sent[(user, counted)][0] += 1
            sent[(user, counted)][1] += int(failed)
    return clients, sent


async def test_the_api_the_cli_and_metrics_report_the_traffic_the_test_sent(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, app=app, admin_token=TOKEN, tiers=TIERS) as node,
        httpx.AsyncClient(timeout=30) as http,
    ):
        clients, sent = await drive(http, node)
        # the quota is used up: the next call is refused, names the limit and its reset
        refused = await clients["alice"].post(
            "tools/call", {"name": "echo", "arguments": ARGS["echo"]}
        )
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        midnight = next_utc_midnight()
        assert error["data"]["limit"] == "tool_calls" and error["data"]["value"] == f"{QUOTA}/day"
        assert error["data"]["resetsAt"] == midnight and error["data"]["tier"] == "free"
        assert f"it resets at {midnight}" in error["message"]

        tools: collections.Counter[str] = collections.Counter()
        tool_errors: collections.Counter[str] = collections.Counter()
        by_user: collections.Counter[str] = collections.Counter()
        by_tier: collections.Counter[str] = collections.Counter()
        errors_by_tier: collections.Counter[str] = collections.Counter()
        for (user, tool), (calls, errors) in sent.items():
            tools[tool] += calls
            tool_errors[tool] += errors
            by_user[user] += calls
            by_tier[TIER_OF[user]] += calls
            errors_by_tier[TIER_OF[user]] += errors
        total = sum(tools.values())
        assert total == 15 and sum(tool_errors.values()) == 3  # fail x2 and nope

        # -- the admin API (what the view draws) --------------------------------------------------
        admin = {"authorization": f"Bearer {TOKEN}"}
        base = f"{node.info.listen_url}/admin/api"
        overview: dict[str, Any] = {}
        with trio.fail_after(20):  # usage is written behind the answers, in group commits
            while overview.get("totals", {}).get("calls") != total:
                r = await http.get(
                    f"{base}/usage", params={"method": "tools/call", "since": "1h"}, headers=admin
                )
                assert r.status_code == 200, r.text
                overview = r.json()
                await trio.sleep(0.1)
        assert overview["totals"]["errors"] == sum(tool_errors.values())
        assert overview["tiers"] == ["free", "pro", "enterprise"]
        assert {t["tool"]: (t["calls"], t["errors"]) for t in overview["tools"]} == {
            tool: (tools[tool], tool_errors[tool]) for tool in tools
        }
        shown = {t["tool"]: t for t in overview["tools"]}
        assert shown["fail"]["error_rate"] == 1.0 and shown["echo"]["error_rate"] == 0.0
        assert 250.0 <= shown["slow"]["p50_ms"] <= 500.0  # 0.3 s: its bucket
        assert 250.0 <= shown["slow"]["p99_ms"] <= 500.0
        assert [(u["user_name"], u["calls"]) for u in overview["users"]] == [
            ("bob", by_user["bob"]),
            ("alice", by_user["alice"]),
            ("carol", by_user["carol"]),
        ]
        points = overview["series"]["points"]
        assert overview["series"]["resolution"] == "minute"
        for tier in TIER_OF.values():
            assert sum(p["calls"] for p in points if p["tier"] == tier) == by_tier[tier]
            assert sum(p["errors"] for p in points if p["tier"] == tier) == errors_by_tier[tier]
        near = overview["near_quota"]
        assert (near[0]["user_name"], near[0]["used"], near[0]["quota"]) == ("alice", 4, "4/day")
        assert near[0]["fraction"] == 1.0
        assert near[0]["resets_at"].replace("+00:00", "Z") == midnight

        bob = (await http.get(f"{base}/usage/user", params={"user": "bob"}, headers=admin)).json()
        assert bob["tier"] == "pro" and bob["user_name"] == "bob"
        bob_tools = {(r["method"], r["name"]): r["calls"] for r in bob["tools"]}
        for (user, tool), (calls, _) in sent.items():
            if user == "bob":
                assert bob_tools[("tools/call", tool)] == calls
        pro_only = await http.get(f"{base}/usage", params={"tier": "pro"}, headers=admin)
        assert [(n["user_name"], n["tier"]) for n in pro_only.json()["near_quota"]] == [
            ("bob", "pro")
        ]
        assert [u["user_name"] for u in pro_only.json()["users"]] == ["bob"]
        billing = await http.get(
            f"{base}/usage/billing", params={"period": "day", "since": "1d"}, headers=admin
        )
        assert billing.status_code == 200, billing.text
        assert {
            (r["user_id"].rsplit("|", 1)[-1], r["tool"]): (r["calls"], r["errors"])
            for r in billing.json()["rows"]
        } == {key: (calls, errors) for key, (calls, errors) in sent.items()}
        bad = await http.get(f"{base}/usage", params={"since": "yesterday"}, headers=admin)
        assert bad.status_code == 400 and "90m, 24h, 7d" in bad.json()["error_description"]
        nobody = await http.get(f"{base}/usage/user", params={"user": "zed"}, headers=admin)
        assert nobody.status_code == 404
        assert (await http.get(f"{base}/usage")).status_code == 401  # the admin token

        # -- steward usage ---------------------------------------------------------------------
        def steward(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*STEWARD, "usage", *args, "--database-url", fresh_db],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )

        out = await trio.to_thread.run_sync(steward, "--by", "user,tool", "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["rows"]
        reported = {
            (r["user_id"].rsplit("|", 1)[-1], r["name"]): [r["calls"], r["errors"]]
            for r in rows
            if r["method"] == "tools/call"
        }
        assert reported == dict(sent)
        out = await trio.to_thread.run_sync(steward, "--tier", "pro", "--by", "tool", "--csv")
        assert out.returncode == 0, out.stderr
        table = list(csv.DictReader(io.StringIO(out.stdout)))
        pro = {r["name"]: int(r["calls"]) for r in table if r["method"] == "tools/call"}
        assert pro == {tool: n for (user, tool), (n, _) in sent.items() if user == "bob"}
        out = await trio.to_thread.run_sync(steward, "--user", "carol", "--tool", "echo")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[:5] == ["USER_ID", "METHOD", "NAME", "CALLS", "ERRORS"]
        assert len(lines) == 2 and lines[1].split()[1:4] == ["tools/call", "echo", "2"]
        out = await trio.to_thread.run_sync(steward, "--billing", "--period", "day", "--json")
        assert out.returncode == 0, out.stderr
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        billed = {
            (r["user_id"].rsplit("|", 1)[-1], r["tool"]): r["calls"]
            for r in json.loads(out.stdout)["rows"]
        }
        assert {r["period"] for r in json.loads(out.stdout)["rows"]} == {today}
        assert billed == {key: calls for key, (calls, _) in sent.items()}
        out = await trio.to_thread.run_sync(steward, "--quota", "--json")
        assert out.returncode == 0, out.stderr
        quota = {
            r["user_id"].rsplit("|", 1)[-1]: r["used"] for r in json.loads(out.stdout)["quota"]
        }
        assert quota["alice"] == QUOTA and quota["bob"] == by_user["bob"]
        out = await trio.to_thread.run_sync(steward, "--quota", "--tier", "pro", "--json")
        assert out.returncode == 0, out.stderr
        pro_quota = [
            (r["user_id"].rsplit("|", 1)[-1], r["tier"]) for r in json.loads(out.stdout)["quota"]
        ]
        assert pro_quota == [("bob", "pro")]
        out = await trio.to_thread.run_sync(steward, "--since", "last week")
        assert out.returncode == 2 and "90m, 24h, 7d" in out.stderr
        out = await trio.to_thread.run_sync(steward, "--user", "zed")
        assert out.returncode == 2 and "no user 'zed'" in out.stderr

        # -- /metrics ----------------------------------------------------------------------------
        text = (await http.get(f"{node.info.listen_url}/metrics")).text
        counted: dict[tuple[str, str, str], float] = {}
        buckets: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "steward_tool_calls_total":
                    key = (sample.labels["tool"], sample.labels["tier"], sample.labels["outcome"])
                    counted[key] = sample.value
                if sample.name == "steward_tool_call_duration_seconds_bucket":
                    key = (sample.labels["tool"], sample.labels["tier"], sample.labels["le"])
                    buckets[key] = sample.value
        expected: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for user, tools_called in PLAN.items():
            for tool in tools_called:
                outcome = {"fail": "tool_error", "nope": "error"}.get(tool, "ok")
                label = tool if tool in app.tools else "other"
                expected[(label, TIER_OF[user], outcome)] += 1
        assert counted == dict(expected)
        assert buckets[("slow", "pro", "0.25")] == 0 and buckets[("slow", "pro", "0.5")] == 2
        assert buckets[("slow", "pro", "+Inf")] == 2


async def test_a_quota_refusal_names_the_limit_and_the_same_reset_on_every_node(
    fresh_db: str,
) -> None:
    """alice uses her quota on node A; node A and node B both refuse her next call, each naming
    tool_calls, its value and the same reset (the end of the UTC day); bob's rate limit names
    requests_per_minute and its value."""
    import base64

    settings = {
        "public_url": "http://steward.test",
        "encryption_key": base64.b64encode(bytes(range(32))).decode(),
        "tiers": [
            {"name": "free", "tool_call_quota": "2/day"},
            {"name": "pro", "requests_per_minute": 60, "burst": 2},
            {"name": "enterprise"},
        ],
    }
    async with (
        httpx.AsyncClient(timeout=20) as http,
        running_node(fresh_db, app=app, **settings) as a,
        running_node(fresh_db, app=app, **settings) as b,
    ):
        alice = McpClient(http, a, (await sign_in(http, a, "alice"))["access_token"])
        await alice.initialize()
        for _ in range(2):
            assert (
                await alice.post("tools/call", {"name": "echo", "arguments": ARGS["echo"]})
            ).status_code == 200
        elsewhere = McpClient(http, b, alice.token)
        await elsewhere.initialize()
        seen = []
        with trio.fail_after(20):  # node B counts what node A committed
            while True:
                r = await elsewhere.post("tools/call", {"name": "echo", "arguments": ARGS["echo"]})
                if r.status_code == 429:
                    break
                await trio.sleep(0.1)
        seen.append(r.json()["error"])
        r = await alice.post("tools/call", {"name": "echo", "arguments": ARGS["echo"]})
        assert r.status_code == 429
        seen.append(r.json()["error"])
        midnight = next_utc_midnight()
        for error in seen:
            assert {k: error["data"][k] for k in ("limit", "value", "resetsAt", "tier")} == {
                "limit": "tool_calls",
                "value": "2/day",
                "resetsAt": midnight,
                "tier": "free",
            }
        assert (
            seen[0]["message"].split(", retry after")[0]
            == seen[1]["message"].split(", retry after")[0]
        )

        bob = McpClient(http, a, (await sign_in(http, a, "bob"))["access_token"])
        await bob.initialize()
        with trio.fail_after(10):
            while (r := await bob.post("prompts/list")).status_code != 429:
                pass
        error = r.json()["error"]
        assert error["data"]["limit"] == "requests_per_minute" and error["data"]["value"] == 60
        assert "60 requests per minute per account (requests_per_minute)" in error["message"]
        resets = datetime.datetime.fromisoformat(error["data"]["resetsAt"].replace("Z", "+00:00"))
        now = datetime.datetime.now(datetime.UTC)
        assert (
            now - datetime.timedelta(seconds=2)
            <= resets
            <= now + datetime.timedelta(seconds=int(r.headers["retry-after"]) + 2)
        )


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


async def test_the_usage_page_draws_the_traffic_and_follows_it_live_in_chromium(
    fresh_db: str, chromium: Path
) -> None:
    """The Usage page in Chromium: the chart's bars add up, per tier, to the calls and errors
    the test sent; the top tools, top users and quota tables show them; one more call made
    outside the page appears without a reload; bob's link opens bob's own usage."""
    async with (
        running_node(fresh_db, app=app, admin_token=TOKEN, tiers=TIERS) as node,
        httpx.AsyncClient(timeout=30) as http,
    ):
        clients, sent = await drive(http, node)
        tools: collections.Counter[str] = collections.Counter()
        by_tier: collections.Counter[str] = collections.Counter()
        errors_by_tier: collections.Counter[str] = collections.Counter()
        for (user, tool), (calls, errors) in sent.items():
            tools[tool] += calls
            by_tier[TIER_OF[user]] += calls
            errors_by_tier[TIER_OF[user]] += errors
        with trio.fail_after(20):
            while await node.store.fetchval("SELECT count(*) FROM usage_events") < sum(
                tools.values()
            ):
                await trio.sleep(0.05)
        bob_id = await node.store.fetchval("SELECT user_id FROM users WHERE subject = 'bob'")
        expected = {"calls": sum(tools.values()), "tools": dict(tools), "bob_id": bob_id}
        script = [
            sys.executable,
            "-m",
            "tests.admin_browser",
            "usage",
            node.info.listen_url,
            TOKEN,
            clients["carol"].token,
            json.dumps(expected),
        ]
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=120)
        )
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout)
    assert seen["errors"] == [] and seen["console"] == [] and seen["failed"] == []
    assert seen["page_overflow"] <= 0  # the page is no wider than a 1280x800 window
    calls_chart, errors_chart = seen["chart"]
    assert (calls_chart["field"], errors_chart["field"]) == ("calls", "errors")
    drawn: collections.Counter[str] = collections.Counter()
    for bar in calls_chart["bars"]:
        drawn[bar["tier"]] += bar["value"]
        assert bar["height"] > 0
    assert drawn == by_tier
    drawn_errors: collections.Counter[str] = collections.Counter()
    for bar in errors_chart["bars"]:
        drawn_errors[bar["tier"]] += bar["value"]
    assert drawn_errors == +errors_by_tier
    # a colour per tier, from the style sheet
    fills = {bar["tier"]: bar["fill"] for bar in calls_chart["bars"]}
    assert len(set(fills.values())) == 3, fills
    # the live call: carol's (enterprise) echo
    after: collections.Counter[str] = collections.Counter()
    for bar in seen["chart_after"][0]["bars"]:
        after[bar["tier"]] += bar["value"]
    assert after == by_tier + collections.Counter({"enterprise": 1})
    tools_table = {row[0]: row[1:3] for row in seen["tools"]}
    assert tools_table["fail"] == ["2", "2"] and tools_table["(other)"] == ["1", "1"]
    assert seen["users"] == ["bob", "alice", "carol"]
    assert seen["quota"][0][:3] == ["alice", "free", f"{QUOTA} / {QUOTA}/day"]
    bob_tools = {row[1]: row[2] for row in seen["bob_tools"] if row[0] == "tools/call"}
    assert bob_tools == {tool: str(n) for (user, tool), (n, _) in sent.items() if user == "bob"}


async def test_a_nodes_janitor_keeps_usage_for_the_configured_retention(fresh_db: str) -> None:
    """usage_retention_days and usage_minute_retention_hours reach the node's janitor: its sweep
    deletes the hourly rollups older than the days and the minute rollups older than the hours,
    and keeps the younger ones."""
    async with running_node(
        fresh_db, app=app, usage_retention_days=3, usage_minute_retention_hours=30
    ) as node:
        for age in ("20 hours", "40 hours"):
            await node.store.write(
                Op(
                    "INSERT INTO usage_rollups (user_id, minute, method, calls) VALUES "
                    f"('u', date_trunc('minute', now() - interval '{age}'), 'tools/call', 1)",
                    (),
                )
            )
        for age in ("2 days", "4 days"):
            await node.store.write(
                Op(
                    "INSERT INTO usage_hourly (user_id, hour, method, calls) VALUES "
                    f"('u', date_trunc('hour', now() - interval '{age}'), 'tools/call', 1)",
                    (),
                )
            )
        await node.janitor.sweep()
        left = await node.store.fetch(
            "SELECT (SELECT count(*) FROM usage_rollups) AS minutes, "
            "(SELECT count(*) FROM usage_hourly) AS hours"
        )
    assert left == [{"minutes": 1, "hours": 1}]


async def test_the_legacy_sse_transport_counts_a_failed_tool_and_names_the_refused_quota(
    fresh_db: str,
) -> None:
    """Over the 2024-11-05 transport (/sse and /messages), as over /mcp: a tool that fails is a
    ``tool_error`` in the usage events, a prompt keeps its name, and the call past the quota is
    refused on the stream with the limit, its value, the tier and the reset (the end of the UTC
    day); the refused call records nothing."""
    tiers = [{"name": "free", "tool_call_quota": "2/day"}, {"name": "pro"}, {"name": "enterprise"}]
    async with (
        running_node(fresh_db, app=app, tiers=tiers) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        token = (await sign_in(http, node, "alice"))["access_token"]
        headers = {"authorization": f"Bearer {token}"}
        async with http.stream("GET", f"{node.info.listen_url}/sse", headers=headers) as r:
            reader = SseReader(r)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader._pump)
                with trio.fail_after(5):
                    endpoint = await reader.next()
                assert endpoint is not None and endpoint["event"] == "endpoint"
                post_url = f"{node.info.listen_url}{endpoint['data']}"

                async def ask(request_id: int, method: str, params: dict[str, Any]) -> Any:
                    message = {"jsonrpc": "2.0", "id": request_id, "method": method}
                    posted = await http.post(
                        post_url, json={**message, "params": params}, headers=headers
                    )
                    assert posted.status_code == 202
                    with trio.fail_after(5):
                        reply = await reader.next()
                    assert reply is not None and reply["data"]["id"] == request_id
                    return reply["data"]

                failed = await ask(1, "tools/call", {"name": "fail", "arguments": {}})
                assert failed["result"]["isError"] is True
                echoed = await ask(2, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
                assert echoed["result"].get("isError") is not True
                prompt = await ask(3, "prompts/get", {"name": "nothing-here"})
                assert "error" in prompt
                refused = await ask(4, "tools/call", {"name": "echo", "arguments": {"text": "y"}})
                error = refused["error"]
                assert {k: error["data"][k] for k in ("limit", "value", "resetsAt", "tier")} == {
                    "limit": "tool_calls",
                    "value": "2/day",
                    "resetsAt": next_utc_midnight(),
                    "tier": "free",
                }
                assert error["data"]["retryAfter"] >= 1
                assert f"resets at {next_utc_midnight()}" in error["message"]
                nursery.cancel_scope.cancel()
        with trio.fail_after(10):
            while True:
                rows = await node.store.fetch(
                    "SELECT method, name, outcome FROM usage_events ORDER BY method, name"
                )
                if len(rows) >= 3:
                    break
                await trio.sleep(0.05)
        assert [(r["method"], r["name"], r["outcome"]) for r in rows] == [
            ("prompts/get", "nothing-here", "error"),  # its name as sent, in the event
            ("tools/call", "echo", "ok"),
            ("tools/call", "fail", "tool_error"),
        ]
