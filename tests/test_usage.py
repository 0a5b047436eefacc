"""Usage records: one event per request and its minute's rollup, written together."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
import trio

from actors import Op
from actors._usage import NAME_LENGTH, QuotaExceeded, TierLimit, UsageMeter, parse_quota
from actors.sessions import UserContext
from tests.harness._store import running_store


async def test_each_recorded_request_is_one_event_and_one_count_in_its_minute(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db) as (store, _):
        meter = UsageMeter(store, {})
        alice = UserContext("idp|alice", uuid.uuid4(), "c1", "free", frozenset())
        bob = UserContext("idp|bob", uuid.uuid4(), "c1", "pro", frozenset())
        for outcome, seconds in (("ok", 0.002), ("ok", 0.002), ("error", 0.020)):
            meter.record(alice, "tools/call", "echo", outcome, seconds)
        meter.record(alice, "tools/list", None, "ok", 0.001)
        meter.record(bob, "tools/call", "echo", "ok", 0.003)

        with trio.fail_after(10):
            while await store.fetchval("SELECT count(*) FROM usage_events") < 5:
                await trio.sleep(0.05)
        events = await store.fetch(
            "SELECT user_id, grant_id, method, name, tier, outcome FROM usage_events "
            "ORDER BY user_id, method, outcome"
        )
        rollups = await store.fetch(
            "SELECT user_id, method, name, tier, calls, errors FROM usage_rollups "
            "ORDER BY user_id, method"
        )
        hourly = await store.fetch(
            "SELECT user_id, method, name, tier, calls, errors FROM usage_hourly "
            "ORDER BY user_id, method"
        )
        timing = await store.fetchrow(
            "SELECT duration_ms, b0, b1, b2, b11 FROM usage_hourly "
            "WHERE user_id = 'idp|alice' AND method = 'tools/call'"
        )

    assert [(e["user_id"], e["method"], e["name"], e["tier"], e["outcome"]) for e in events] == [
        ("idp|alice", "tools/call", "echo", "free", "error"),
        ("idp|alice", "tools/call", "echo", "free", "ok"),
        ("idp|alice", "tools/call", "echo", "free", "ok"),
        ("idp|alice", "tools/list", None, "free", "ok"),
        ("idp|bob", "tools/call", "echo", "pro", "ok"),
    ]
    assert {e["grant_id"] for e in events} == {alice.grant_id, bob.grant_id}
    assert (
        rollups
        == hourly
        == [
            {
                "user_id": "idp|alice",
                "method": "tools/call",
                "name": "echo",
                "tier": "free",
                "calls": 3,
                "errors": 1,
            },
            {
                "user_id": "idp|alice",
                "method": "tools/list",
                "name": "",
                "tier": "free",
                "calls": 1,
                "errors": 0,
            },
            {
                "user_id": "idp|bob",
                "method": "tools/call",
                "name": "echo",
                "tier": "pro",
                "calls": 1,
                "errors": 0,
            },
        ]
    )
    # 2 ms, 2 ms and 20 ms: the duration sum and the buckets of 5 ms and 25 ms
    assert timing is not None and abs(timing["duration_ms"] - 24.0) < 1e-6
    assert (timing["b0"], timing["b1"], timing["b2"], timing["b11"]) == (2, 0, 1, 0)


async def test_a_batch_of_requests_is_written_by_one_statement_with_its_rollups_summed(
    fresh_db: str,
) -> None:
    """The requests queued together reach the database as one statement (one command of its
    transaction: every event row has the same ``cmin``), not one per request; each rollup row
    gets the batch's calls, errors, durations and buckets summed, exactly as one upsert per
    request would have left it."""
    async with running_store(fresh_db) as (store, _):
        meter = UsageMeter(store, {})
        alice = UserContext("idp|alice", uuid.uuid4(), "c1", "free", frozenset())
        bob = UserContext("idp|bob", uuid.uuid4(), "c1", "pro", frozenset())
        before = store.statistics()
        for i in range(40):  # queued before the writer runs: one batch
            meter.record(alice, "tools/call", "echo", "ok" if i % 4 else "error", 0.003)
        for _ in range(10):
            meter.record(bob, "tools/call", "echo", "ok", 0.030)
        with trio.fail_after(10):
            while await store.fetchval("SELECT count(*) FROM usage_events") < 50:
                await trio.sleep(0.05)
        after = store.statistics()
        commands = await store.fetchval("SELECT count(DISTINCT cmin::text) FROM usage_events")
        rows = await store.fetch(
            "SELECT user_id, calls, errors, round(duration_ms) AS ms, b0, b2, b3 FROM usage_rollups "
            "ORDER BY user_id"
        )
        hourly = await store.fetch(
            "SELECT user_id, calls, errors, round(duration_ms) AS ms, b0, b2, b3 FROM usage_hourly "
            "ORDER BY user_id"
        )
    assert after.batches_committed - before.batches_committed == 1
    assert after.ops_committed - before.ops_committed == 50
    assert commands == 1
    assert (
        rows
        == hourly
        == [
            {
                "user_id": "idp|alice",
                "calls": 40,
                "errors": 10,
                "ms": 120,
                "b0": 40,
                "b2": 0,
                "b3": 0,
            },
            {"user_id": "idp|bob", "calls": 10, "errors": 0, "ms": 300, "b0": 0, "b2": 0, "b3": 10},
        ]
    )


async def test_a_name_sent_a_megabyte_long_is_stored_cut_in_the_event_and_the_rollups(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db) as (store, _):
        meter = UsageMeter(store, {})
        alice = UserContext("idp|alice", uuid.uuid4(), "c1", "free", frozenset())
        meter.record(alice, "resources/read", "demo://" + "x" * 1_000_000, "error", 0.001)
        with trio.fail_after(10):
            while await store.fetchval("SELECT count(*) FROM usage_events") < 1:
                await trio.sleep(0.05)
        event = await store.fetchval("SELECT length(name) FROM usage_events")
        rollup = await store.fetchval("SELECT length(name) FROM usage_rollups")
    assert event == rollup == NAME_LENGTH


async def test_the_quota_counts_the_users_calls_in_the_database_and_those_still_running(
    fresh_db: str,
) -> None:
    """A meter that has never seen alice reads her tool calls of the window from the rollups
    (another node's, or this node's before a restart); calls it admitted whose usage is not
    recorded yet (still running) count too when it reads again, so a re-read never forgets them."""
    async with running_store(fresh_db) as (store, _):
        alice = UserContext("idp|alice", uuid.uuid4(), "c1", "free", frozenset())
        earlier = UsageMeter(store, {})
        for _ in range(2):  # two calls recorded by another node earlier today
            earlier.record(alice, "tools/call", "echo", "ok", 0.002)
        earlier.record(alice, "tools/list", None, "ok", 0.001)  # not a tool call
        with trio.fail_after(10):
            while await store.fetchval("SELECT count(*) FROM usage_events") < 3:
                await trio.sleep(0.05)

        limits = {"free": TierLimit(6000, 1000, tool_calls=parse_quota("5/day"))}
        meter = UsageMeter(store, limits, quota_reread=0.0)  # re-read before every call
        for _ in range(2):
            await meter.check_tool_call(alice.user_id, "free")  # running: not recorded
        await meter.check_tool_call(alice.user_id, "free")  # the fifth: 2 stored + 2 running
        with pytest.raises(QuotaExceeded):
            await meter.check_tool_call(alice.user_id, "free")
        assert meter.quota_rejected == 1 and meter.quota_reads_skipped == 0
        await meter.check_tool_call("idp|bob", "free")  # another user: a count of its own


def test_p50_and_p99_follow_from_the_buckets_like_histogram_quantile() -> None:
    from actors import LATENCY_BOUNDS_MS
    from actors._usage_query import latency_quantile

    assert latency_quantile([0] * 12, 0.5) is None
    buckets = [0] * 12
    buckets[5] = 100  # 100 durations in (100, 250] ms
    assert latency_quantile(buckets, 0.5) == 175.0  # halfway through the bucket
    assert latency_quantile(buckets, 0.99) == 248.5
    buckets[11] = 1  # one above the largest bound: p99 stays in (100, 250], p100 is the bound
    assert latency_quantile(buckets, 0.99) == 249.985
    assert latency_quantile(buckets, 1.0) == LATENCY_BOUNDS_MS[-1]


def test_metric_labels_are_bounded_and_unknown_names_fold_into_other() -> None:
    from actors import ToolCallStats

    stats = ToolCallStats({"echo", *(f"t{i}" for i in range(5))}, tiers=["free"], max_names=3)
    for name in ("echo", "t0", "t1", "t2", "t3", "made-up", None):
        stats.add(name, "free", "ok", 0.001)
    stats.add("echo", "gold", "ok", 0.001)  # a tier that is not configured
    assert stats.calls == {
        ("echo", "free", "ok"): 1,
        ("t0", "free", "ok"): 1,
        ("t1", "free", "ok"): 1,
        ("other", "free", "ok"): 4,  # t2 and t3 past the bound, an unknown name, no name
        ("echo", "other", "ok"): 1,
    }


async def test_usage_retention_is_configurable_minutes_and_hours_apart(fresh_db: str) -> None:
    """usage_rules: minute rollups past usage_minute_retention_hours and hourly rollups past
    usage_retention_days go; younger ones stay."""
    from actors import retention_sweep, usage_rules

    async with running_store(fresh_db) as (store, _):
        for age in ("1 hour", "30 hours", "3 days"):
            await store.write(
                Op(
                    "INSERT INTO usage_rollups (user_id, minute, method, calls) "
                    f"VALUES ('u', date_trunc('minute', now() - interval '{age}'), 'tools/call', 1)",
                    (),
                )
            )
        for age in ("1 day", "5 days", "11 days"):
            await store.write(
                Op(
                    "INSERT INTO usage_hourly (user_id, hour, method, calls) "
                    f"VALUES ('u', date_trunc('hour', now() - interval '{age}'), 'tools/call', 1)",
                    (),
                )
            )
        deleted = await retention_sweep(store, rules=usage_rules(days=10, minute_hours=25))
        assert (deleted["usage_rollups"], deleted["usage_hourly"]) == (2, 1)
        assert await store.fetchval("SELECT count(*) FROM usage_rollups") == 1
        assert await store.fetchval("SELECT count(*) FROM usage_hourly") == 2
    with pytest.raises(ValueError, match="usage_minute_retention_hours is 25"):
        usage_rules(days=10, minute_hours=24)


def test_the_usage_retention_settings_are_checked() -> None:
    from server.config import ConfigError, load_settings

    settings = load_settings(
        environ={"STEWARD_USAGE_RETENTION_DAYS": "30", "STEWARD_USAGE_MINUTE_RETENTION_HOURS": "72"}
    )
    assert (settings.usage_retention_days, settings.usage_minute_retention_hours) == (30, 72)
    with pytest.raises(ConfigError, match=r"usage_minute_retention_hours.*at least 25, got '24'"):
        load_settings(environ={"STEWARD_USAGE_MINUTE_RETENTION_HOURS": "24"})
    with pytest.raises(ConfigError, match=r"at most 24 x usage_retention_days \(24\), got 30"):
        load_settings(
            environ={
                "STEWARD_USAGE_RETENTION_DAYS": "1",
                "STEWARD_USAGE_MINUTE_RETENTION_HOURS": "30",
            }
        )


def test_the_csv_export_quotes_a_cell_a_spreadsheet_would_run_as_a_formula() -> None:
    """A user's name from the identity provider (``=HYPERLINK(…)``) or a tool's name reaches the
    operator's spreadsheet as text, never as a formula; numbers stay numbers."""
    from server.cli._usage import _csv

    rows = [
        {"user": '=HYPERLINK("http://evil.test","x")', "tool": "+cmd", "calls": 3},
        {"user": "@SUM(A1)", "tool": "-1+1", "calls": -2},
        {"user": "idp|bob", "tool": "echo", "calls": 5},
    ]
    table = list(csv.DictReader(io.StringIO(_csv(rows, ["user", "tool", "calls"]))))
    assert [(r["user"], r["tool"], r["calls"]) for r in table] == [
        ('\'=HYPERLINK("http://evil.test","x")', "'+cmd", "3"),
        ("'@SUM(A1)", "'-1+1", "-2"),
        ("idp|bob", "echo", "5"),
    ]
