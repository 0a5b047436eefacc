"""Rotation of the upstream-token encryption key (``steward keys rotate``).

The key file holds every key the ring knows, the current one last (``KeyRing.load``). A rotation:

1. adds a new key to the file and makes it current; the old keys stay, so everything stored
   still decrypts (a file with more than one key is a rotation in progress: run again, it
   resumes instead of adding yet another key);
2. tells the running nodes (a ``keys_rotated`` cluster event: each node's notifier reloads the
   key file and records the key id it now encrypts with in its ``nodes`` row) and waits until
   every live node encrypts with the new key, so no node writes under an old key afterwards;
3. re-encrypts every stored ciphertext under an older key, in bounded batches, one transaction
   per batch (an interrupted rotation loses nothing: rows done stay done);
4. once no row is left under an old key, retires the old keys from the file and tells the
   nodes again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio
from cryptography.exceptions import InvalidTag

from actors._cluster import KEYS_ROTATED, cluster_event_ops
from actors._crypto import KeyRing
from actors._store import Conn, Store
from runtime import fault_point

__all__ = ["KEYS_ROTATED", "RotationBlocked", "RotationReport", "rotate_keys"]

log = structlog.get_logger("keys")


class RotationBlocked(Exception):
    """Live nodes did not take up the new key in time; nothing was re-encrypted yet."""


@attrs.frozen
class _Table:
    """A table with ciphertexts: its primary key (also their associated data) and the columns."""

    name: str
    key: str
    columns: tuple[str, ...]
    key_type: str

    def aad(self, key: Any) -> bytes:
        return key.bytes if self.key_type == "uuid" else bytes(key)


TABLES = (
    _Table("upstream_tokens", "grant_id", ("access_ciphertext", "refresh_ciphertext"), "uuid"),
    _Table(
        "authorization_requests",
        "request_hash",
        ("verifier_ciphertext", "upstream_ciphertext"),
        "bytea",
    ),
)


@attrs.frozen
class RotationReport:
    """What a rotation did: the current key, the rows it re-encrypted per table, and what is left."""

    key_id: str
    resumed: bool
    reencrypted: dict[str, int]
    batches: int
    remaining: int  # rows still under an old key (undecryptable ones): the old keys are kept
    retired: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def count_stale(store: Store, current: str) -> int:
    """Rows whose ciphertexts are under another key than ``current``."""
    total = 0
    for t in TABLES:
        total += int(
            await store.fetchval(f"SELECT count(*) FROM {t.name} WHERE key_id <> $1", current)
        )
    return total


async def live_nodes_behind(store: Store, key_id: str, *, dead_after: float = 90.0) -> list[str]:
    """Live nodes (a heartbeat within ``dead_after`` seconds) that do not encrypt with ``key_id``."""
    rows = await store.fetch(
        "SELECT node_id FROM nodes WHERE status = 'alive' AND heartbeat_at > now() - make_interval(secs => $1) "
        "AND coalesce(info->>'key_id', '') <> $2 ORDER BY node_id",
        dead_after,
        key_id,
    )
    return [r["node_id"] for r in rows]


async def rotate_keys(
    store: Store,
    path: Path,
    *,
    default_id: str = "k1",
    batch: int = 500,
    wait: float = 30.0,
    origin: str = "cli",
    on_progress: Callable[[int, int], None] | None = None,
) -> RotationReport:
    """Rotate the key ring of the key file at ``path`` and re-encrypt the stored ciphertexts.

    Args:
        batch: rows per transaction.
        wait: how long live nodes get to reload the key file before the rotation gives up.
        on_progress: called with (rows done, rows to do) after each batch.

    Raises:
        RotationBlocked: live nodes still encrypt with an old key after ``wait`` seconds.
    """
    if batch < 1:
        msg = f"batch must be at least 1, got {batch}"
        raise ValueError(msg)
    ring = KeyRing.load(path, default_id)
    resumed = len(ring.key_ids) > 1
    if not resumed:
        ring = ring.rotated()
        ring.save(path)
        log.info("key_added", key_id=ring.current)
    await _announce(store, ring.current, origin)
    behind = await _wait_for_nodes(store, ring.current, wait)
    if behind:
        msg = (
            f"the nodes {', '.join(behind)} still encrypt with an old key after {wait:g}s: they did "
            f"not reload {str(path)!r} (a node on another machine needs a copy of the file, or a "
            f"node with encryption_key set inline a restart with the new key); nothing was "
            f"re-encrypted; run `steward keys rotate` again to resume"
        )
        raise RotationBlocked(msg)

    total = await count_stale(store, ring.current)
    done = 0
    batches = 0
    counts = {t.name: 0 for t in TABLES}
    if on_progress is not None:
        on_progress(0, total)
    for table in TABLES:
        after: Any = None
        while True:

            async def one_batch(conn: Conn, table: _Table = table, after: Any = after) -> Any:
                return await _reencrypt_batch(conn, table, ring, after, batch)

            changed, last = await store.transact(one_batch)
            if last is None:
                break
            after = last
            batches += 1
            counts[table.name] += changed
            done += changed
            if on_progress is not None:
                on_progress(done, max(total, done))
            await fault_point("keys.batch")
    remaining = await count_stale(store, ring.current)
    retired: tuple[str, ...] = ()
    if remaining == 0 and len(ring.key_ids) > 1:
        retired = tuple(k for k in ring.key_ids if k != ring.current)
        ring.only_current().save(path)
        await _announce(store, ring.current, origin)
    log.info("keys_rotated", key_id=ring.current, rows=done, remaining=remaining, retired=retired)
    return RotationReport(ring.current, resumed, counts, batches, remaining, retired)


async def _announce(store: Store, key_id: str, origin: str) -> None:
    await store.write(*cluster_event_ops(KEYS_ROTATED, origin=origin, payload={"key_id": key_id}))


async def _wait_for_nodes(store: Store, key_id: str, wait: float) -> list[str]:
    behind = await live_nodes_behind(store, key_id)
    with trio.move_on_after(wait):
        while behind:
            await trio.sleep(0.1)
            behind = await live_nodes_behind(store, key_id)
    return behind


async def _reencrypt_batch(
    conn: Conn, table: _Table, ring: KeyRing, after: Any, limit: int
) -> tuple[int, Any]:
    """Re-encrypt up to ``limit`` rows past ``after`` that are under an old key; returns how
    many changed and the last key seen (None: no rows were left)."""
    columns = ", ".join(table.columns)
    rows = await conn.fetch(
        f"SELECT {table.key}, key_id, {columns} FROM {table.name} "
        f"WHERE key_id <> $1 AND ($2::{table.key_type} IS NULL OR {table.key} > $2) "
        f"ORDER BY {table.key} LIMIT $3 FOR UPDATE",
        ring.current,
        after,
        limit,
    )
    if not rows:
        return 0, None
    sets = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(table.columns))
    updates = []
    for row in rows:
        aad = table.aad(row[table.key])
        try:
            plain = [
                None if row[c] is None else _decrypt_any(ring, row["key_id"], row[c], aad)
                for c in table.columns
            ]
        except (InvalidTag, KeyError):
            log.warning("key_rotation_row_undecryptable", table=table.name)
            continue
        updates.append(
            (
                row[table.key],
                ring.current,
                *(None if p is None else ring.encrypt(p, aad=aad)[1] for p in plain),
            )
        )
    if updates:
        await conn.executemany(
            f"UPDATE {table.name} SET key_id = $2, {sets} WHERE {table.key} = $1", updates
        )
    return len(updates), rows[-1][table.key]


def _decrypt_any(ring: KeyRing, key_id: str, blob: bytes, aad: bytes) -> str:
    """Decrypt with the row's key, else with any other key of the ring (an authorization
    request's verifier stays under the key it was first written with)."""
    for candidate in [key_id, *(k for k in ring.key_ids if k != key_id)]:
        with contextlib.suppress(InvalidTag, KeyError):
            return ring.decrypt(candidate, blob, aad=aad)
    msg = f"no key of the ring {ring.key_ids} decrypts this ciphertext"
    raise KeyError(msg)
