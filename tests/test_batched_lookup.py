"""actors._batched.BatchedLookup: lookups that arrive together are read in one query, bounded,
and a failed or cancelled leader never leaves its followers hanging or wrong; the transport
sessions a node does not hold in memory (after a restart) are read that way."""

from __future__ import annotations

import datetime
import uuid
from typing import Any, cast

import pytest
import trio
import trio.testing

from actors import Op, Principal, Store
from actors._batched import BatchedLookup
from actors._store import StoreUnavailable
from actors.sessions import TransportSessions, UserContext
from tests.harness._store import running_store


class Table:
    """A fake keyed read that records each query's keys and can be held or made to fail."""

    def __init__(self) -> None:
        self.queries: list[list[int]] = []
        self.release = trio.Event()
        self.hold = False
        self.fail: Exception | None = None

    async def fetch(self, keys: list[int]) -> dict[int, str]:
        self.queries.append(keys)
        if self.hold:
            await self.release.wait()
        await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        return {k: f"v{k}" for k in keys if k % 10 != 0}  # multiples of 10 do not exist


async def _get_all(lookup: BatchedLookup[int, str], keys: range) -> dict[int, str | None]:
    out: dict[int, str | None] = {}

    async def one(k: int) -> None:
        out[k] = await lookup.get(k)

    async with trio.open_nursery() as nursery:
        for k in keys:
            nursery.start_soon(one, k)
    return out


async def test_concurrent_lookups_share_one_query_each_batch_bounded() -> None:
    table = Table()
    lookup = BatchedLookup(table.fetch, max_keys=50)

    out = await _get_all(lookup, range(1, 201))

    assert out == {k: None if k % 10 == 0 else f"v{k}" for k in range(1, 201)}
    assert sum(len(q) for q in table.queries) == 200
    assert all(len(q) <= 50 for q in table.queries)
    assert len(table.queries) <= 5  # 200 keys at most 50 a query (one alone at first)


async def test_keys_arriving_during_a_read_join_the_next_one() -> None:
    table = Table()
    table.hold = True
    lookup = BatchedLookup(table.fetch, max_keys=500)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lookup.get, 1)
        await trio.testing.wait_all_tasks_blocked()
        for k in range(2, 102):
            nursery.start_soon(lookup.get, k)
        await trio.testing.wait_all_tasks_blocked()
        table.release.set()
    assert [sorted(q) for q in table.queries] == [[1], list(range(2, 102))]


async def test_a_store_failure_reaches_every_waiter_of_the_batch() -> None:
    table = Table()
    table.fail = StoreUnavailable("the database is unreachable")
    lookup = BatchedLookup(table.fetch, max_keys=500)
    errors: list[str] = []

    async def one(k: int) -> None:
        try:
            await lookup.get(k)
        except StoreUnavailable as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for k in range(1, 21):
            nursery.start_soon(one, k)
    assert errors == ["the database is unreachable"] * 20
    assert len(table.queries) == 1


async def test_a_cancelled_leader_leaves_its_followers_to_read_again() -> None:
    table = Table()
    table.hold = True
    lookup = BatchedLookup(table.fetch, max_keys=500)
    got: dict[int, str | None] = {}

    async def follower(k: int) -> None:
        got[k] = await lookup.get(k)

    leader_scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_in_scope, leader_scope, lookup)
        await trio.testing.wait_all_tasks_blocked()
        for k in (2, 3):
            nursery.start_soon(follower, k)
        await trio.testing.wait_all_tasks_blocked()
        table.hold = False
        leader_scope.cancel()  # the leader's client left while its read was held
        await trio.testing.wait_all_tasks_blocked()
        table.release.set()
    assert got == {2: "v2", 3: "v3"}


async def _in_scope(scope: trio.CancelScope, lookup: BatchedLookup[int, str]) -> None:
    with scope:
        await lookup.get(1)


def test_a_batch_of_no_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="max_keys must be at least 1, got 0"):
        BatchedLookup(Table().fetch, max_keys=0)


class CountingStore:
    """The real store, with the reads it was asked for counted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.reads += 1
        return await self.store.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        self.reads += 1
        return await self.store.fetchrow(sql, *args)


def _transports(store: Store | CountingStore) -> TransportSessions:
    return TransportSessions(
        cast(Store, store), touch_interval=3600.0, idle=3600.0, streams_of=lambda _grant: []
    )


async def test_transport_sessions_missing_from_memory_are_read_in_batches(fresh_db: str) -> None:
    """A node that holds none of 600 live sessions in memory (as after a restart) reads them
    back in two queries (at most 500 ids each), not 600; an ended session, an unknown id and
    another user's session are still answered as absent."""
    grant = uuid.uuid4()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    async with running_store(fresh_db) as (store, _):
        await store.write(
            Op(
                "INSERT INTO oauth_clients (client_id, redirect_uris, source) VALUES ('c', ARRAY['http://127.0.0.1/cb'], 'config')",
                (),
            ),
            Op("INSERT INTO users (user_id, issuer, subject) VALUES ('idp|u', 'idp', 'u')", ()),
            Op(
                "INSERT INTO grants (grant_id, user_id, client_id, resource, tier, scopes, expires_at) VALUES ($1, 'idp|u', 'c', 'r', 'free', ARRAY['mcp:tools'], $2)",
                (grant, later),
            ),
        )
        context = UserContext("idp|u", grant, "c", "free", frozenset({"mcp:tools"}))
        principal = Principal("idp|u", "c", grant, "idp", "u", frozenset(), "free", "r", 0.0)
        stranger = Principal("idp|v", "c", grant, "idp", "v", frozenset(), "free", "r", 0.0)
        before = _transports(store)
        ids: list[str] = []

        async def create() -> None:
            ids.append(
                await before.create(
                    context, protocol_version="2025-11-25", client_info={}, capabilities={}
                )
            )

        async with trio.open_nursery() as nursery:
            for _ in range(601):
                nursery.start_soon(create)
        ended = ids.pop()
        assert await before.end(principal, ended)

        counting = CountingStore(store)
        after = _transports(counting)
        found: dict[str, str | None] = {}

        async def lookup(session_id: str, who: Principal) -> None:
            ts = await after.lookup(who, session_id)
            found[session_id] = None if ts is None else ts.session_id

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for session_id in ids:
                    nursery.start_soon(lookup, session_id, principal)
        assert found == {session_id: session_id for session_id in ids}
        assert counting.reads == 2
        for absent, who in ((ended, principal), ("no-such-id", principal), (ids[0], stranger)):
            found.pop(absent, None)
            await lookup(absent, who)
            assert found[absent] is None
