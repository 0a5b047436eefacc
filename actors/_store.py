"""The store: the persistence actor, the only code that talks to PostgreSQL (asyncpg).

Design (docs/store.md): the store actor owns a trio-asyncio loop and an asyncpg pool. Writes go
through a ``WriteQueue`` that lives outside the actor's incarnations, so a crash or a database
outage loses nothing; a writer task group-commits what is queued, one transaction per batch,
and wakes each waiter after the commit. Past a bound the queue spills to an append-only journal
that is replayed exactly once after recovery.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import attrs
import structlog
import trio
import trio_asyncio

from runtime import Backoff, ChildSpec, fault_point

__all__ = [
    "Conn",
    "Op",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "StoreUnavailable",
    "WriteQueue",
    "WriteRejected",
    "store_child_spec",
]

log = structlog.get_logger("store")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database cannot be reached now; answer 503 with Retry-After, never 401."""


class WriteRejected(Exception):
    """The database refused an op (a constraint or a malformed statement); it was not applied."""


class Conn(Protocol):
    """What a ``transact`` function may call on its connection."""

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...
    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...
    async def executemany(
        self, command: str, args: Any, *, timeout: float | None = None
    ) -> None: ...


@attrs.frozen
class Op:
    """One idempotent SQL statement (an upsert, ON CONFLICT DO NOTHING, a conditional UPDATE)."""

    sql: str
    args: tuple[Any, ...] = ()


RECONNECT_BACKOFF = Backoff(min=0.05, max=2.0, jitter=0.2, reset_after=30.0)


@attrs.frozen
class StorePolicy:
    """The store's bounds and durations (seconds)."""

    batch_max: int = 500  # ops per transaction
    batch_window: float = 0.0  # extra wait for more ops to join a batch (0: a batch is what queued during the previous commit)
    memory_bound: int = 20_000  # queued ops held in memory before spilling to the journal
    pool_min: int = 2
    pool_max: int = 8
    command_timeout: float = 10.0
    connect_timeout: float = 5.0
    read_wait: float = 1.0  # how long a read waits for a connected store before StoreUnavailable
    latency_window: int = 1024  # commit latencies kept for percentiles
    listen_buffer: int = 1000  # notifications buffered per listener (then dropped and counted)
    reconnect: Backoff = RECONNECT_BACKOFF


@attrs.frozen
class StoreStatistics:
    queue_depth: int
    journal_depth: int
    batches_committed: int
    ops_committed: int
    mean_batch_size: float
    max_batch_size: int
    commit_latency_p50_ms: float
    commit_latency_p99_ms: float
    connected: bool
    outage_since: float | None
    reconnects: int
    rejected_ops: int


@attrs.define(eq=False)
class _Entry:
    """One ``write`` call: its ops commit together, in one transaction."""

    id: uuid.UUID
    ops: tuple[Op, ...]
    done: trio.Event | None = None
    error: BaseException | None = None
    journaled: bool = False


# -- journal encoding: op args are JSON with tags for the types JSON lacks ---------------------


def _encode(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, datetime.datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"$j": value}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$u" in value:
            return uuid.UUID(value["$u"])
        if "$b" in value:
            return base64.b64decode(value["$b"])
        if "$t" in value:
            return datetime.datetime.fromisoformat(value["$t"])
        if "$j" in value:
            return value["$j"]
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class WriteQueue:
    """Pending writes, owned by the store's supervisor slot so that they outlive a crash.

    In memory up to ``memory_bound`` ops; past it, entries go to an append-only journal file
    (fsynced) and stay there, in order, until committed. Entries are never dropped.
    """

    def __init__(self, *, memory_bound: int = 20_000, journal_path: Path | None = None) -> None:
        self.memory_bound = memory_bound
        self.journal_path = journal_path
        self._memory: collections.deque[_Entry] = collections.deque()
        self._memory_ops = 0
        self._journal: collections.deque[_Entry] = collections.deque()  # loaded from the file
        self._journal_count = 0
        self._waiters: dict[uuid.UUID, _Entry] = {}
        self._has_work = trio.Event()
        if journal_path is not None and journal_path.exists():
            self._load_journal()

    def _load_journal(self) -> None:
        assert self.journal_path is not None
        for line in self.journal_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("journal_line_unreadable", path=str(self.journal_path))
                continue  # a torn last line from a crash mid-append
            ops = tuple(Op(o["sql"], tuple(_decode(a) for a in o["args"])) for o in record["ops"])
            self._journal.append(_Entry(uuid.UUID(record["id"]), ops, journaled=True))
        self._journal_count = len(self._journal)
        if self._journal:
            self._has_work.set()
            log.info("journal_loaded", entries=len(self._journal))

    def put(self, ops: Sequence[Op], *, wait: bool) -> _Entry:
        entry = _Entry(uuid.uuid4(), tuple(ops), trio.Event() if wait else None)
        spill = self.journal_path is not None and (
            self._journal_count > 0 or self._memory_ops + len(ops) > self.memory_bound
        )
        if spill:
            self._append_journal(entry)
        else:
            self._memory.append(entry)
            self._memory_ops += len(ops)
        if entry.done is not None:
            self._waiters[entry.id] = entry
        self._has_work.set()
        return entry

    def _append_journal(self, entry: _Entry) -> None:
        assert self.journal_path is not None
        record = {
            "id": str(entry.id),
            "ops": [{"sql": op.sql, "args": [_encode(a) for a in op.args]} for op in entry.ops],
        }
        with self.journal_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        entry.journaled = True
        self._journal.append(entry)
        self._journal_count += 1

    async def wait_work(self) -> None:
        while not (self._memory or self._journal):
            self._has_work = trio.Event()
            await self._has_work.wait()

    def peek(self, max_ops: int) -> list[_Entry]:
        """The oldest entries, up to ``max_ops`` ops (at least one entry): memory first."""
        source = self._memory if self._memory else self._journal
        batch: list[_Entry] = []
        count = 0
        for entry in source:
            if batch and count + len(entry.ops) > max_ops:
                break
            batch.append(entry)
            count += len(entry.ops)
        return batch

    def ack(self, batch: list[_Entry], *, error: BaseException | None = None) -> None:
        """Remove committed (or rejected) entries from the head and wake their waiters."""
        journaled = False
        for entry in batch:
            if entry.journaled:
                head = self._journal.popleft()
                journaled = True
            else:
                head = self._memory.popleft()
                self._memory_ops -= len(head.ops)
            assert head is entry
            waiter = self._waiters.pop(entry.id, None)
            if waiter is not None and waiter.done is not None:
                waiter.error = error
                waiter.done.set()
        if journaled:
            self._rewrite_journal()

    def _rewrite_journal(self) -> None:
        assert self.journal_path is not None
        self._journal_count = len(self._journal)
        if not self._journal:
            self.journal_path.unlink(missing_ok=True)
            return
        tmp = self.journal_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            for entry in self._journal:
                record = {
                    "id": str(entry.id),
                    "ops": [
                        {"sql": o.sql, "args": [_encode(a) for a in o.args]} for o in entry.ops
                    ],
                }
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.journal_path)

    @property
    def depth(self) -> int:
        return len(self._memory) + len(self._journal)

    @property
    def journal_depth(self) -> int:
        return self._journal_count


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)


def _is_rejection(exc: BaseException) -> bool:
    """A statement the database refused on its merits (retrying the same op cannot help)."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _CONNECTION_ERRORS)


class Store:
    """The face of the store actor; stable across its restarts.

    Callers hold this object for the life of the process. Each incarnation of the store actor
    attaches its loop and pool; during an outage none is attached, writes queue up and reads
    raise ``StoreUnavailable``.
    """

    def __init__(
        self, dsn: str, *, policy: StorePolicy | None = None, queue: WriteQueue | None = None
    ) -> None:
        self.dsn = dsn
        self.policy = policy or StorePolicy()
        self.queue = queue or WriteQueue(memory_bound=self.policy.memory_bound)
        self._loop: Any = None
        self._pool: Any = None
        self._attached = trio.Event()
        self._latencies: collections.deque[float] = collections.deque(
            maxlen=self.policy.latency_window
        )
        self._batches = 0
        self._ops = 0
        self._max_batch = 0
        self._outage_since: float | None = None
        self._reconnects = 0
        self._incarnations = 0
        self._rejected = 0

    # -- the public API ------------------------------------------------------------------------

    async def write(self, *ops: Op) -> None:
        """Queue ``ops`` (one transaction) and return after they committed.

        Raises:
            WriteRejected: the database refused them; nothing of them was applied.
        """
        entry = self.queue.put(ops, wait=True)
        assert entry.done is not None
        await entry.done.wait()
        if entry.error is not None:
            raise WriteRejected(str(entry.error)) from entry.error

    def write_nowait(self, *ops: Op) -> None:
        """Queue ``ops`` and return at once; they commit with the next batch, never lost."""
        self.queue.put(ops, wait=False)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        rows = await self._call(
            lambda pool: pool.fetch(sql, *args, timeout=self.policy.command_timeout)
        )
        return [dict(r) for r in rows]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = await self._call(
            lambda pool: pool.fetchrow(sql, *args, timeout=self.policy.command_timeout)
        )
        return None if row is None else dict(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call(
            lambda pool: pool.fetchval(sql, *args, timeout=self.policy.command_timeout)
        )

    async def transact(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn(conn)`` in one transaction on the store's loop and return its result."""

        async def run(pool: Any) -> T:
            async with (
                pool.acquire(timeout=self.policy.connect_timeout) as conn,
                conn.transaction(),
            ):
                return await fn(conn)

        result: T = await self._call(run)
        return result

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[trio.MemoryReceiveChannel[str]]:
        """Notifications on ``channel`` while the block runs. The channel ends when the listening
        connection is lost (the caller reconnects and catches up)."""
        await self._wait_attached()
        loop = self._loop
        send, receive = trio.open_memory_channel[str](self.policy.listen_buffer)

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                send.send_nowait(payload)
            except trio.WouldBlock:
                log.warning("notification_dropped", channel=channel)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        def on_close(_conn: Any) -> None:
            send.close()

        async def connect() -> Any:
            conn = await asyncpg.connect(self.dsn, timeout=self.policy.connect_timeout)
            await conn.add_listener(channel, on_notify)
            conn.add_termination_listener(on_close)
            return conn

        try:
            conn = await loop.run_aio_coroutine(connect())
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"cannot listen on {channel!r}: {exc}") from exc
        try:
            async with receive:
                yield receive
        finally:
            send.close()
            with trio.move_on_after(self.policy.connect_timeout, shield=True):
                with contextlib.suppress(Exception):
                    await loop.run_aio_coroutine(conn.close(timeout=self.policy.connect_timeout))

    async def notify(self, channel: str, payload: str) -> None:
        await self._call(
            lambda pool: pool.execute(
                "SELECT pg_notify($1, $2)", channel, payload, timeout=self.policy.command_timeout
            )
        )

    def statistics(self) -> StoreStatistics:
        lat = sorted(self._latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

        return StoreStatistics(
            queue_depth=self.queue.depth,
            journal_depth=self.queue.journal_depth,
            batches_committed=self._batches,
            ops_committed=self._ops,
            mean_batch_size=self._ops / self._batches if self._batches else 0.0,
            max_batch_size=self._max_batch,
            commit_latency_p50_ms=pct(0.5),
            commit_latency_p99_ms=pct(0.99),
            connected=self._attached.is_set(),
            outage_since=self._outage_since,
            reconnects=self._reconnects,
            rejected_ops=self._rejected,
        )

    # -- internals -------------------------------------------------------------------------------

    async def _wait_attached(self) -> None:
        if not self._attached.is_set():
            with trio.move_on_after(self.policy.read_wait):
                await self._attached.wait()
        if not self._attached.is_set():
            raise StoreUnavailable("the database is unreachable")

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        await self._wait_attached()
        await fault_point("store.read")
        pool, loop = self._pool, self._loop
        try:
            result: T = await loop.run_aio_coroutine(fn(pool))
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"the database is unreachable: {type(exc).__name__}") from exc
        except asyncpg.exceptions.InterfaceError as exc:  # pragma: no cover - pool closed under us
            raise StoreUnavailable(str(exc)) from exc
        return result

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """One incarnation of the store actor.

        It reports ready at once (its face is stable), then connects, reconnecting with backoff
        while the database is away; queued writes wait in the queue meanwhile. Anything other
        than a lost connection crashes the incarnation, and the supervisor starts a new one.
        """
        self._incarnations += 1
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_asyncio_error)
            task_status.started(self)
            attempt = 0
            while True:
                try:
                    pool = await loop.run_aio_coroutine(self._create_pool())
                except _CONNECTION_ERRORS as exc:
                    if self._outage_since is None:
                        self._outage_since = trio.current_time()
                    delay = self.policy.reconnect.delay(attempt)
                    attempt += 1
                    log.warning(
                        "store_connect_failed", error=type(exc).__name__, retry_in=round(delay, 3)
                    )
                    await trio.sleep(delay)
                    continue
                attempt = 0
                try:
                    await self._attached_run(loop, pool)
                except StoreUnavailable:
                    self._reconnects += 1  # the connection was lost: reconnect

    async def _attached_run(self, loop: Any, pool: Any) -> None:
        self._loop, self._pool = loop, pool
        self._attached.set()
        if self._outage_since is not None:
            log.info("store_recovered", outage_s=round(trio.current_time() - self._outage_since, 3))
        self._outage_since = None
        try:
            await self._writer(loop, pool)
        finally:
            self._attached = trio.Event()
            self._pool = None
            if self._outage_since is None:
                self._outage_since = trio.current_time()
            with trio.move_on_after(self.policy.connect_timeout, shield=True):
                with contextlib.suppress(Exception):
                    await loop.run_aio_coroutine(pool.close())
            pool.terminate()

    async def _create_pool(self) -> Any:
        async def init(conn: Any) -> None:
            for kind in ("json", "jsonb"):
                await conn.set_type_codec(
                    kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
                )

        return await asyncpg.create_pool(
            self.dsn,
            min_size=self.policy.pool_min,
            max_size=self.policy.pool_max,
            command_timeout=self.policy.command_timeout,
            timeout=self.policy.connect_timeout,
            init=init,
        )

    async def _writer(self, loop: Any, pool: Any) -> None:
        while True:
            await self.queue.wait_work()
            if self.policy.batch_window > 0 and self.queue.depth < self.policy.batch_max:
                await trio.sleep(self.policy.batch_window)
            else:
                await trio.lowlevel.checkpoint()  # let writers that are ready now join this batch
            batch = self.queue.peek(self.policy.batch_max)
            await fault_point("store.commit")
            started = trio.current_time()
            try:
                await loop.run_aio_coroutine(self._commit(pool, batch))
            except _CONNECTION_ERRORS as exc:
                # the batch stays queued; a new incarnation retries it (ops are idempotent)
                log.warning("store_commit_failed", error=type(exc).__name__, batch=len(batch))
                raise StoreUnavailable(f"commit failed: {type(exc).__name__}") from exc
            except asyncpg.PostgresError as exc:
                if not _is_rejection(exc):
                    raise
                await self._commit_one_by_one(loop, pool, batch)
                continue
            self._count(batch, trio.current_time() - started)
            self.queue.ack(batch)

    def _count(self, batch: list[_Entry], elapsed: float) -> None:
        n = sum(len(e.ops) for e in batch)
        self._batches += 1
        self._ops += n
        self._max_batch = max(self._max_batch, n)
        self._latencies.append(elapsed)

    async def _commit_one_by_one(self, loop: Any, pool: Any, batch: list[_Entry]) -> None:
        """A batch the database refused: find the refused entries, commit the others."""
        for entry in batch:
            try:
                await loop.run_aio_coroutine(self._commit(pool, [entry]))
            except asyncpg.PostgresError as exc:
                if not _is_rejection(exc):
                    raise
                self._rejected += len(entry.ops)
                log.error("store_op_rejected", error=type(exc).__name__, detail=str(exc)[:200])
                self.queue.ack([entry], error=exc)
                continue
            self._count([entry], 0.0)
            self.queue.ack([entry])

    async def _commit(self, pool: Any, batch: list[_Entry]) -> None:
        """One transaction for the whole batch. Consecutive ops with the same statement, across
        entries, go to the server as one ``executemany`` (one round trip, not one per op)."""
        timeout = self.policy.command_timeout
        async with pool.acquire(timeout=self.policy.connect_timeout) as conn, conn.transaction():
            ops: list[Op] = []
            for entry in batch:
                if entry.journaled:
                    fresh = await conn.fetchval(
                        "INSERT INTO store_applied_ops (op_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
                        entry.id,
                        timeout=timeout,
                    )
                    if not fresh:
                        continue  # applied before a crash lost the acknowledgement
                ops.extend(entry.ops)
            i = 0
            while i < len(ops):
                j = i + 1
                while j < len(ops) and ops[j].sql == ops[i].sql:
                    j += 1
                if j - i == 1:
                    await conn.execute(ops[i].sql, *ops[i].args, timeout=timeout)
                else:
                    await conn.executemany(
                        ops[i].sql, [op.args for op in ops[i:j]], timeout=timeout
                    )
                i = j


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.warning(
        "asyncio_error", message=context.get("message"), error=type(exc).__name__ if exc else None
    )


def store_child_spec(
    store: Store,
    *,
    backoff: Backoff | None = None,
    shutdown_grace: float = 5.0,
    start_grace: float = 30.0,
) -> ChildSpec:
    """The store as a supervised child: every incarnation shares the same face and queue."""
    return ChildSpec(
        id="store",
        start=store.run,
        backoff=backoff or Backoff(min=0.1, max=5.0, jitter=0.2, reset_after=30.0),
        shutdown_grace=shutdown_grace,
        start_grace=start_grace,
    )
