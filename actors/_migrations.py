"""Schema migrations: numbered SQL files applied in order, each in one transaction, recorded.

Part of the store: it runs its SQL through ``Store.transact``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import attrs
import structlog

from actors._store import Conn, Store

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "applied_migrations",
    "migrate",
    "pending_migrations",
]

log = structlog.get_logger("migrations")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x5354_5741_5244  # advisory lock serializing concurrent migrators ("STWARD")


class MigrationError(Exception):
    """A migration file is malformed, or an applied one was changed afterwards."""


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            msg = f"migration file {path.name!r} does not match NNNN_name.sql"
            raise MigrationError(msg)
        sql = path.read_text()
        migrations.append(
            Migration(int(match[1]), match[2], sql, hashlib.sha256(sql.encode()).hexdigest())
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


async def migrate(store: Store, folder: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply every pending migration; returns the versions applied now.

    Raises:
        MigrationError: an applied file's checksum changed.
    """
    migrations = load_migrations(folder)

    async def apply(conn: Conn) -> list[int]:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOTSTRAP)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        done = []
        for m in migrations:
            row = applied.get(m.version)
            if row is not None:
                if row["checksum"] != m.checksum:
                    msg = (
                        f"migration {m.version:04d}_{m.name}.sql changed after it was applied "
                        f"(checksum {row['checksum'][:12]} in the database, {m.checksum[:12]} on disk)"
                    )
                    raise MigrationError(msg)
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
            done.append(m.version)
        return done

    # all pending files in one transaction: a failure leaves the schema as it was
    done = await store.transact(apply)
    for version in done:
        log.info("migration_applied", version=version)
    return done


async def applied_migrations(store: Store) -> list[dict[str, Any]]:
    exists = await store.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    return await store.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )


async def pending_migrations(store: Store, folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    applied = {r["version"] for r in await applied_migrations(store)}
    return [m for m in load_migrations(folder) if m.version not in applied]
