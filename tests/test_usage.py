"""Usage records: one event per request and its minute's rollup, written together."""

from __future__ import annotations

import uuid

import pytest
import trio

from actors._usage import QuotaExceeded, TierLimit, UsageMeter, parse_quota
from actors.sessions import UserContext
from tests.harness._store import running_store


async def test_each_recorded_request_is_one_event_and_one_count_in_its_minute(
    fresh_db: str,
) -> None:
    async with running_store(fresh_db) as (store, _):
        meter = UsageMeter(store, {})
        alice = UserContext("idp|alice", uuid.uuid4(), "c1", "free", frozenset())
        bob = UserContext("idp|bob", uuid.uuid4(), "c1", "pro", frozenset())
        for outcome in ("ok", "ok", "error"):
            meter.record(alice, "tools/call", "echo", outcome, 0.002)
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
            "SELECT user_id, method, calls, errors FROM usage_rollups ORDER BY user_id, method"
        )

    assert [(e["user_id"], e["method"], e["name"], e["tier"], e["outcome"]) for e in events] == [
        ("idp|alice", "tools/call", "echo", "free", "error"),
        ("idp|alice", "tools/call", "echo", "free", "ok"),
        ("idp|alice", "tools/call", "echo", "free", "ok"),
        ("idp|alice", "tools/list", None, "free", "ok"),
        ("idp|bob", "tools/call", "echo", "pro", "ok"),
    ]
    assert {e["grant_id"] for e in events} == {alice.grant_id, bob.grant_id}
    assert rollups == [
        {"user_id": "idp|alice", "method": "tools/call", "calls": 3, "errors": 1},
        {"user_id": "idp|alice", "method": "tools/list", "calls": 1, "errors": 0},
        {"user_id": "idp|bob", "method": "tools/call", "calls": 1, "errors": 0},
    ]


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
