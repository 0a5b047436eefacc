"""Schema migrations: numbered SQL files applied in order, each in one transaction, recorded.

Part of the store: it runs its SQL through ``Store.transact`` (or a store of its own when given
a DSN). Concurrent runners (several nodes starting at once) are serialized by an advisory lock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import structlog
import trio

from actors._store import Conn, Store, StorePolicy

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "applied_migrations",
    "load_migrations",
    "migrate",
    "pending_migrations",
]

log = structlog.get_logger("migrations")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x5354_5741_5244  # advisory lock serializing concurrent migrators ("STWARD")


class MigrationError(Exception):
    """A migration file is malformed or failed, or an applied one was changed afterwards."""


@attrs.frozen
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str
    checksum: str  # SHA-256 of the file's bytes

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of ``folder`` in version order.

    Raises:
        MigrationError: a file is not named ``NNNN_name.sql``, or two share a version.
    """
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            msg = f"migration file {path.name!r} does not match NNNN_name.sql"
            raise MigrationError(msg)
        data = path.read_bytes()
        migrations.append(
            Migration(int(match[1]), match[2], data.decode(), hashlib.sha256(data).hexdigest())
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        msg = f"two migration files share a version number: {versions}"
        raise MigrationError(msg)
    return migrations


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _check(migration: Migration, checksum: str) -> None:
    if checksum != migration.checksum:
        msg = (
            f"migration {migration.filename} changed after it was applied (checksum "
            f"{checksum[:12]} in the database, {migration.checksum[:12]} on disk); "
            "add a new migration instead of editing an applied one"
        )
        raise MigrationError(msg)


async def _apply_one(store: Store, migration: Migration) -> bool:
    """Apply ``migration`` in its own transaction unless it is there; True if applied now."""

    async def apply(conn: Conn) -> bool:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOTSTRAP)
        checksum = await conn.fetchval(
            "SELECT checksum FROM schema_migrations WHERE version = $1", migration.version
        )
        if checksum is not None:
            _check(migration, checksum)
            return False
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
        return True

    try:
        return await store.transact(apply)
    except asyncpg.InsufficientPrivilegeError as exc:
        msg = (
            f"migration {migration.filename} failed and was rolled back: the database role lacks "
            f"a privilege ({exc}); it must be able to create tables in its schema: GRANT USAGE, "
            "CREATE ON SCHEMA public TO the role, or make it the owner of the database and "
            "schema (docs/operating.md, 'The database role'; `steward doctor` names the fix)"
        )
        raise MigrationError(msg) from exc
    except asyncpg.PostgresError as exc:
        msg = f"migration {migration.filename} failed and was rolled back: {exc}"
        raise MigrationError(msg) from exc


async def migrate(
    store_or_dsn: Store | str,
    folder: Path = MIGRATIONS_DIR,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Apply every pending migration in version order; returns the versions applied now.

    ``on_progress(files checked, files)`` is called after each file.

    Each file runs in its own transaction under an advisory lock, so concurrent runners apply
    each file once and a failed file leaves the ones before it applied.

    Raises:
        MigrationError: an applied file's checksum changed, or a file failed.
        StoreUnavailable: the database cannot be reached.
    """
    migrations = load_migrations(folder)
    if isinstance(store_or_dsn, Store):
        return await _apply_all(store_or_dsn, migrations, on_progress)
    # a short-lived store of our own, whose reads wait as long as a connection attempt may take;
    # the error leaves the nursery as itself, not wrapped in a group
    policy = StorePolicy(pool_min=1, pool_max=2)
    store = Store(store_or_dsn, policy=attrs.evolve(policy, read_wait=policy.connect_timeout))
    error: Exception | None = None
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        try:
            done = await _apply_all(store, migrations, on_progress)
        except Exception as exc:
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return done


async def _apply_all(
    store: Store,
    migrations: list[Migration],
    on_progress: Callable[[int, int], None] | None,
) -> list[int]:
    done = []
    for n, migration in enumerate(migrations, 1):
        if await _apply_one(store, migration):
            log.info("migration_applied", version=migration.version, name=migration.name)
            done.append(migration.version)
        if on_progress is not None:
            on_progress(n, len(migrations))
    return done


async def applied_migrations(store: Store) -> list[dict[str, Any]]:
    """The rows of ``schema_migrations`` (none before the first migration)."""
    exists = await store.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    return await store.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )


async def pending_migrations(store: Store, folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The files not applied yet (a changed applied file is ``migrate``'s error to report)."""
    applied = {r["version"] for r in await applied_migrations(store)}
    return [m for m in load_migrations(folder) if m.version not in applied]
