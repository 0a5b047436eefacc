"""Migrations (numbered SQL files, one transaction each, recorded with checksums) and retention."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from actors import (
    RETENTION_RULES,
    MigrationError,
    RetentionPolicy,
    RetentionRule,
    StoreUnavailable,
    load_migrations,
    migrate,
    pending_migrations,
    retention_sweep,
)
from tests.harness._pg import psql
from tests.harness._store import running_store


async def test_migrations_apply_once_in_order_and_are_recorded(fresh_db: str) -> None:
    files = load_migrations()
    async with running_store(fresh_db, migrated=False) as (store, _):
        assert [m.version for m in await pending_migrations(store)] == [m.version for m in files]
        applied = await migrate(store)
        assert applied == sorted(m.version for m in files)
        rows = await store.fetch(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        )
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in files
        ]
        assert all(r["applied_at"].tzinfo is not None for r in rows)
        assert await migrate(store) == []  # a rerun applies nothing
        assert await pending_migrations(store) == []
        assert await store.fetchval("SELECT count(*) FROM schema_migrations") == len(files)


async def test_migrate_takes_a_dsn_and_runs_its_own_short_lived_store(fresh_db: str) -> None:
    assert psql(fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
    applied = await migrate(fresh_db)
    assert applied == [m.version for m in load_migrations()]
    assert await migrate(fresh_db) == []
    assert psql(fresh_db, "SELECT to_regclass('grants') IS NOT NULL") == "t"


async def test_concurrent_migrators_apply_each_file_once(fresh_db: str, tmp_path: Path) -> None:
    # pg_sleep keeps the first runner inside the lock long enough for the others to queue on it
    (tmp_path / "0001_slow.sql").write_text(
        "CREATE TABLE counted (n int); SELECT pg_sleep(0.3); INSERT INTO counted VALUES (1);"
    )
    (tmp_path / "0002_next.sql").write_text("INSERT INTO counted VALUES (2);")
    results: list[list[int]] = []

    async def runner() -> None:
        results.append(await migrate(fresh_db, tmp_path))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(runner)
    assert sorted(v for r in results for v in r) == [1, 2]  # each file applied by one runner
    assert psql(fresh_db, "SELECT string_agg(n::text, ',' ORDER BY n) FROM counted") == "1,2"


async def test_a_changed_migration_is_an_error_naming_the_file(
    fresh_db: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (v int);")
    async with running_store(fresh_db, migrated=False) as (store, _):
        assert await migrate(store, tmp_path) == [1]
        (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (v bigint);")
        with pytest.raises(MigrationError, match=r"0001_first\.sql changed after it was applied"):
            await migrate(store, tmp_path)


async def test_a_failing_migration_is_rolled_back_and_named_and_earlier_ones_stay(
    fresh_db: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (v int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (v int); SELECT no_such_column;")
    async with running_store(fresh_db, migrated=False) as (store, _):
        with pytest.raises(MigrationError, match=r"0002_bad\.sql failed and was rolled back"):
            await migrate(store, tmp_path)
        assert await store.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
        assert await store.fetchval("SELECT to_regclass('half') IS NULL")
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (v int);")
        assert await migrate(store, tmp_path) == [2]


def test_a_misnamed_or_duplicate_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("")
    with pytest.raises(MigrationError, match=r"'1_first\.sql' does not match NNNN_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_first.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "0001_b.sql").write_text("")
    with pytest.raises(MigrationError, match="share a version number"):
        load_migrations(tmp_path)


async def test_migrate_on_an_unreachable_database_raises_store_unavailable(
    autojump_clock: trio.abc.Clock,
) -> None:
    with pytest.raises(StoreUnavailable):
        await migrate("postgresql://steward@127.0.0.1:1/none")


async def test_retention_deletes_rows_past_their_rule_and_keeps_the_rest(fresh_db: str) -> None:
    async with running_store(fresh_db) as (store, _):

        async def seed(conn: object) -> None:
            execute = conn.execute  # type: ignore[attr-defined]
            for age in ("2 hours", "1 minute"):
                for seq in range(3):
                    await execute(
                        "INSERT INTO stream_events (session_id, stream_id, seq, user_id, payload,"
                        " created_at) VALUES ($1, 's', $2, 'u', '{}', now() - $3::text::interval)",
                        age,
                        seq,
                        age,
                    )
            for age in ("100 days", "1 day"):
                await execute(
                    "INSERT INTO auth_events (event_id, kind, occurred_at) "
                    "VALUES ($1, 'sign_in', now() - $2::text::interval)",
                    uuid.uuid4(),
                    age,
                )

        await store.transact(seed)
        deleted = await retention_sweep(store, policy=RetentionPolicy(chunk=2, max_chunks=10))
        assert deleted["stream_events"] == 3  # in chunks of 2
        assert deleted["auth_events"] == 1
        assert set(deleted) == {r.table for r in RETENTION_RULES}
        assert await store.fetchval("SELECT count(*) FROM stream_events") == 3
        assert await store.fetchval("SELECT min(session_id) FROM stream_events") == "1 minute"
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 1


async def test_a_sweep_deletes_at_most_its_chunks_and_the_next_sweep_goes_on(
    fresh_db: str,
) -> None:
    rule = RetentionRule("auth_events", "occurred_at < now() - interval '90 days'")
    async with running_store(fresh_db) as (store, _):
        await store.fetch(
            "INSERT INTO auth_events (event_id, kind, occurred_at) "
            "SELECT gen_random_uuid(), 'sign_in', now() - interval '1 year' "
            "FROM generate_series(1, 7) RETURNING 1"
        )
        policy = RetentionPolicy(chunk=2, max_chunks=2)
        assert await retention_sweep(store, rules=(rule,), policy=policy) == {"auth_events": 4}
        assert await retention_sweep(store, rules=(rule,), policy=policy) == {"auth_events": 3}
        assert await store.fetchval("SELECT count(*) FROM auth_events") == 0


async def test_every_rule_names_a_table_and_column_of_the_schema(fresh_db: str) -> None:
    """Each rule's SQL runs against the migrated schema (a typo would fail here)."""
    async with running_store(fresh_db) as (store, _):
        deleted = await retention_sweep(store)
        assert deleted == {r.table: 0 for r in RETENTION_RULES}
