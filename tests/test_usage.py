"""Usage records: one event per request and its minute's rollup, written together."""

from __future__ import annotations

import uuid

import trio

from actors._sessions import UserContext
from actors._usage import UsageMeter
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
