"""actors._batched.BatchedLookup: lookups that arrive together are read in one query, bounded,
and a failed or cancelled leader never leaves its followers hanging or wrong."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors._batched import BatchedLookup
from actors._store import StoreUnavailable


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
