"""The write queue's journal: bounded memory, fsynced spills, and exactly-once replay."""

from __future__ import annotations

import datetime
import decimal
import os
import stat
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from actors import Op, Store, StorePolicy, WriteQueue, migrate, store_child_spec
from runtime import Supervisor
from tests.harness._pg import Cluster
from tests.harness._wait import wait_until

INSERT = (
    "INSERT INTO auth_events (event_id, kind, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)


def event(user: str) -> Op:
    return Op(INSERT, (uuid.uuid4(), "sign_in", user))


def users_in_order(queue: WriteQueue) -> list[str]:
    """Take everything from the queue, oldest first, as a writer would."""
    taken = []
    while queue.depth:
        batch = queue.peek(3)
        taken += [str(e.ops[0].args[2]) for e in batch]
        queue.ack(batch)
    return taken


@asynccontextmanager
async def supervised(store: Store) -> AsyncIterator[Store]:
    """``store`` under a supervisor, migrated; stopped (as a process stops) on exit."""
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(Supervisor("root", [store_child_spec(store)]).run)
        try:
            await migrate(store)
            yield store
        finally:
            await sup.stop()


async def test_past_the_memory_bound_entries_spill_in_fsynced_batches(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    queue = WriteQueue(memory_bound=5, journal_path=journal, spill_batch=4)
    for i in range(12):
        queue.put([event(f"u{i}")], wait=False)
    assert queue.depth == 12
    assert queue.journal_depth == 4  # u5..u8 written in one append
    assert queue.spills == 1
    assert len(journal.read_bytes().splitlines()) == 4
    assert queue.memory_ops == 5 + 3  # the memory queue and the spill buffer (u9..u11)
    assert users_in_order(queue) == [f"u{i}" for i in range(12)]
    assert not journal.exists()  # removed once drained


async def test_memory_stays_bounded_however_many_entries_spill(tmp_path: Path) -> None:
    queue = WriteQueue(memory_bound=100, journal_path=tmp_path / "j", spill_batch=50)
    for i in range(5_000):
        queue.put([event(f"u{i}")], wait=False)
        assert queue.memory_ops <= 150
    assert queue.journal_depth >= 4_850
    batch = queue.peek(500)
    assert len(batch) == 100  # memory first, then the file a batch at a time
    queue.ack(batch)
    batch = queue.peek(500)
    assert [e.ops[0].args[2] for e in batch[:2]] == ["u100", "u101"]
    assert len(batch) == 500 and all(e.journaled for e in batch)
    assert len(queue._readahead) <= 500


async def test_an_applied_prefix_is_cut_off_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    queue = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1, compact_bytes=1_000)
    for i in range(40):
        queue.put([event(f"u{i}")], wait=False)
    full = journal.stat().st_size
    taken = []
    for _ in range(30):
        batch = queue.peek(1)
        taken.append(batch[0].ops[0].args[2])
        queue.ack(batch)
    assert journal.stat().st_size < full / 2
    assert taken + users_in_order(queue) == [f"u{i}" for i in range(40)]


async def test_persist_writes_the_whole_queue_oldest_first_for_the_next_process(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j"
    queue = WriteQueue(memory_bound=3, journal_path=journal, spill_batch=2)
    for i in range(8):  # u0..u2 in memory, u3..u6 in the file, u7 in the spill buffer
        queue.put([event(f"u{i}")], wait=False)
    assert queue.journal_depth == 4
    queue.ack(queue.peek(1))  # u0 committed
    queue.persist()
    assert queue.journal_depth == queue.depth == 7 and queue.memory_ops == 0
    later = WriteQueue(memory_bound=3, journal_path=journal)
    assert later.depth == 7
    assert users_in_order(later) == [f"u{i}" for i in range(1, 8)]


async def test_a_torn_last_line_is_cut_and_an_unreadable_line_skipped(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    queue = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1)
    for i in range(3):
        queue.put([event(f"u{i}")], wait=False)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"not json\n" + lines[1] + lines[2][:20])  # died mid-append
    later = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1)
    assert later.depth == 3
    later.put([event("u3")], wait=False)  # appended after the cut, not onto the torn line
    assert users_in_order(later) == ["u0", "u1", "u3"]


async def test_op_arguments_survive_the_journal_with_their_types(tmp_path: Path) -> None:
    args = (
        uuid.uuid4(),
        b"\x00\xffbytes",
        datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        datetime.date(2026, 1, 2),
        datetime.timedelta(seconds=90.5),
        decimal.Decimal("1.50"),
        {"$u": "a dict that looks like a tag", "n": [1, None]},
        ("a", "b"),
        None,
        True,
        3,
        2.5,
        "text",
    )
    journal = tmp_path / "j"
    queue = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1)
    queue.put([Op("SELECT 1", args)], wait=False)
    (entry,) = WriteQueue(journal_path=journal).peek(10)
    assert entry.ops[0].args == (*args[:7], ["a", "b"], *args[8:])  # a tuple comes back a list


async def test_an_ops_form_for_many_rows_survives_the_journal(tmp_path: Path) -> None:
    """A spilled op keeps the statement that writes many such ops at once (``Op.many``), so a
    replayed batch is sent the same way as one that never left memory."""
    journal = tmp_path / "j"
    queue = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1)
    queue.put([Op("SELECT $1", (1,), many="SELECT unnest($1::int[])"), event("u")], wait=False)
    (entry,) = WriteQueue(journal_path=journal).peek(10)
    assert [op.many for op in entry.ops] == ["SELECT unnest($1::int[])", None]


async def test_an_argument_the_journal_cannot_hold_is_refused_when_it_would_spill(
    tmp_path: Path,
) -> None:
    queue = WriteQueue(memory_bound=0, journal_path=tmp_path / "j")
    with pytest.raises(TypeError, match="type object cannot be written to the journal"):
        queue.put([Op("SELECT $1", (object(),))], wait=False)
    assert queue.depth == 0


async def test_spilled_writes_during_an_outage_commit_once_after_recovery(
    pg_cluster: Cluster, fresh_db: str, tmp_path: Path
) -> None:
    journal = tmp_path / "store.journal"
    queue = WriteQueue(memory_bound=5, journal_path=journal, spill_batch=4)
    store = Store(fresh_db, policy=StorePolicy(read_wait=0.2), queue=queue)
    async with supervised(store):
        await pg_cluster.stop("immediate")
        try:
            for i in range(12):
                store.write_nowait(event(f"j{i}"))
            stats = store.statistics()
            assert stats.journal_depth >= 4 and stats.journal_spills >= 1
            assert journal.exists()
        finally:
            await pg_cluster.start()
        with trio.fail_after(30):
            await store.write(event("after"))
        users = await store.fetch("SELECT user_id FROM auth_events")
        assert sorted(r["user_id"] for r in users) == sorted(
            [f"j{i}" for i in range(12)] + ["after"]
        )
        assert not journal.exists()
        applied = await store.fetchval("SELECT count(*) FROM store_applied_ops")
        assert applied >= 4  # the entries read back from the file recorded their ids


async def test_a_new_store_replays_a_journal_left_by_a_dead_process_exactly_once(
    fresh_db: str, tmp_path: Path
) -> None:
    journal = tmp_path / "store.journal"
    queue = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1)
    for i in range(3):
        queue.put([event(f"dead{i}")], wait=False)
    # the process applied the first entry and died before it could acknowledge it
    first = queue.peek(1)[0]
    async with supervised(Store(fresh_db)) as store:
        await store.write(
            *first.ops, Op("INSERT INTO store_applied_ops (op_id) VALUES ($1)", (first.id,))
        )
        await store.write(Op("DELETE FROM auth_events WHERE user_id = 'dead0'"))
    replaying = Store(fresh_db, queue=WriteQueue(journal_path=journal))
    async with supervised(replaying) as store:
        await wait_until(lambda: not journal.exists(), within=20, every=0.01)
        users = await store.fetch("SELECT user_id FROM auth_events ORDER BY user_id")
        # dead0 was deleted after it was applied: a replay must not apply it again
        assert [r["user_id"] for r in users] == ["dead1", "dead2"]


async def test_a_store_stopped_during_an_outage_leaves_its_queue_for_the_next_process(
    pg_cluster: Cluster, fresh_db: str, tmp_path: Path
) -> None:
    journal = tmp_path / "store.journal"
    policy = StorePolicy(read_wait=0.2, stop_drain=0.2)
    first = Store(fresh_db, policy=policy, queue=WriteQueue(journal_path=journal))
    async with supervised(first):
        await first.write(event("before"))
        await pg_cluster.stop("immediate")
        for i in range(100):
            first.write_nowait(event(f"q{i}"))
    assert first.statistics().queue_depth == 100
    assert len(journal.read_bytes().splitlines()) == 100
    await pg_cluster.start()
    copy = journal.read_bytes()
    second = Store(fresh_db, queue=WriteQueue(journal_path=journal))
    async with supervised(second):
        await wait_until(lambda: not journal.exists(), within=30, every=0.01)
        assert await second.fetchval("SELECT count(*) FROM auth_events") == 101
    # the same journal found again (as after a crash before its removal) applies nothing twice
    journal.write_bytes(copy)
    third = Store(fresh_db, queue=WriteQueue(journal_path=journal))
    async with supervised(third):
        await wait_until(lambda: not journal.exists(), within=30, every=0.01)
        assert await third.fetchval("SELECT count(*) FROM auth_events") == 101


async def test_a_stopped_store_first_commits_what_is_queued(fresh_db: str, tmp_path: Path) -> None:
    journal = tmp_path / "store.journal"
    store = Store(fresh_db, queue=WriteQueue(journal_path=journal))
    async with supervised(store):
        for i in range(2_000):
            store.write_nowait(event(f"n{i}"))
    assert store.statistics().queue_depth == 0
    assert not journal.exists()
    async with supervised(Store(fresh_db)) as again:
        assert await again.fetchval("SELECT count(*) FROM auth_events") == 2_000


async def test_the_journal_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The journal holds the writes of an outage (user ids, email addresses, token hashes,
    encrypted upstream tokens): like the database folder (0700), no other OS user may read it,
    whatever the umask; one left by an earlier Steward is made owner-only when adopted."""
    journal = tmp_path / "j"
    before = os.umask(0o022)
    try:
        queue = WriteQueue(memory_bound=0, journal_path=journal, spill_batch=1)
        queue.put([event("u0")], wait=False)  # spilled: the file is created by an append
        assert queue.journal_depth == 1
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        queue.put([event("u1")], wait=False)
        queue.persist()  # rewritten whole through a temporary file
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert not journal.with_name("j.tmp").exists()

        journal.chmod(0o644)  # as an older Steward left it
        later = WriteQueue(memory_bound=0, journal_path=journal)
        assert later.depth == 2
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    finally:
        os.umask(before)
