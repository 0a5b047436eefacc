"""The store: the persistence actor, the only code that talks to PostgreSQL (asyncpg).

Design (docs/store.md): the store actor owns a trio-asyncio loop and an asyncpg pool. Writes go
through a ``WriteQueue`` that lives outside the actor's incarnations, so a crash or a database
outage loses nothing; a writer task group-commits what is queued, one transaction per batch,
and wakes each waiter after the commit. Past a bound the queue spills to an append-only journal
that is replayed exactly once after recovery.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import asyncpg
import attrs
import structlog
import trio
import trio_asyncio

from actors._store_queue import Op, QueueFull, StoreUnavailable, WriteQueue, _Entry
from runtime import Backoff, ChildSpec, fault_point

__all__ = [
    "Conn",
    "Op",
    "QueueFull",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "StoreUnavailable",
    "WriteQueue",
    "WriteRejected",
    "run_ops",
    "store_child_spec",
]

log = structlog.get_logger("store")
T = TypeVar("T")


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


async def run_ops(conn: Conn, ops: Iterable[Op]) -> None:
    """Run ``ops`` in order on ``conn`` (inside a ``transact`` function): the ops a write would
    commit, committed with what the function does."""
    for op in ops:
        await conn.execute(op.sql, *op.args)


CONNECT_LOG_EVERY = 60.0  # seconds between two store_connect_failed lines of one outage
RECONNECT_BACKOFF = Backoff(min=0.05, max=2.0, jitter=0.2, reset_after=30.0)


@attrs.frozen
class StorePolicy:
    """The store's bounds and durations (seconds)."""

    batch_max: int = 500  # ops per transaction
    # extra wait for more ops to join a batch; 0: a batch is what queued during the previous
    # commit, which measured better than a fixed window (docs/store.md)
    batch_window: float = 0.0
    memory_bound: int = 20_000  # queued ops held in memory before spilling to the journal
    pool_min: int = 2
    pool_max: int = attrs.field(
        default=8
    )  # the writer holds one; reads and transact share the rest
    command_timeout: float = 10.0
    connect_timeout: float = 5.0
    read_wait: float = 1.0  # how long a read waits for a connected store before StoreUnavailable
    # how long ``write`` waits for its commit before StoreUnavailable (the setting db_wait): a
    # request that writes answers 503 within it, however long the outage
    write_wait: float = 5.0
    # how long a read or transact waits for its answer in all (read_wait included) before
    # StoreUnavailable, also when the connection hangs rather than fails (a black-holed
    # path); the node sets it to db_wait. None: only command_timeout bounds a call.
    # The migrations (schema_work) are never bounded by it.
    answer_wait: float | None = None
    # while connected and idle the store checks the connection this often, so an outage is seen
    # (readiness, listeners) even when nothing is written
    probe_interval: float = 2.0
    stop_drain: float = 2.0  # on stop, time given to commit what is queued before persisting it
    latency_window: int = 1024  # commit latencies kept for percentiles
    listen_buffer: int = 1000  # notifications buffered per listener (then dropped and counted)
    reconnect: Backoff = RECONNECT_BACKOFF

    @pool_max.validator
    def _check_pool_max(self, _attribute: object, value: int) -> None:
        if value < 2 or value < self.pool_min:
            msg = (
                f"pool_max must be at least 2 (the writer holds one connection) and at least "
                f"pool_min={self.pool_min}, got {value}"
            )
            raise ValueError(msg)


@attrs.frozen
class StoreStatistics:
    """A snapshot of the store: its queue, its commits, its connection."""

    queue_depth: int  # write entries waiting (memory, journal and spill buffer)
    journal_depth: int  # of which in the journal file
    batches_committed: int
    ops_committed: int
    mean_batch_size: float
    max_batch_size: int
    commit_latency_p50_ms: float  # over the last ``latency_window`` batches
    commit_latency_p99_ms: float
    connected: bool
    outage_since: float | None  # trio clock time the outage began, None when connected
    reconnects: int
    rejected_ops: int
    journal_spills: int = 0  # appends (each one fsync) to the journal
    incarnations: int = 0
    notifications_dropped: int = 0
    last_error: str | None = None  # why the last connection attempt failed (None: connected)
    recovered_at: float | None = None  # trio clock time the store last came back from an outage
    schema_ready: bool = True  # a gated store: the schema gate is open
    journal_bytes: int = 0  # the journal file and spill buffer, against journal_max_bytes
    writes_unacknowledged: int = 0  # write() calls that gave up after write_wait
    writes_withdrawn: int = 0  # of which taken back before the writer had them: never applied
    writes_refused: int = 0  # entries refused because the journal was full
    writes_coalesced: int = 0  # fire-and-forget entries folded into one already queued
    writes_dropped: int = 0  # fire-and-forget entries not queued because the journal was full
    connect_failures: int = 0  # connection attempts that failed, over the store's life


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)

_PROBE_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, trio.TooSlowError)

_MARK_APPLIED = (
    "INSERT INTO store_applied_ops (op_id) SELECT unnest($1::uuid[]) "
    "ON CONFLICT DO NOTHING RETURNING op_id"
)


def _is_rejection(exc: BaseException) -> bool:
    """A statement the database refused on its merits (retrying the same op cannot help)."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _CONNECTION_ERRORS)


# set while the schema is being made current: such calls pass a gated store's schema gate
_SCHEMA_WORK: contextvars.ContextVar[bool] = contextvars.ContextVar("schema_work", default=False)


class _AsyncioFault(Exception):
    """An exception the asyncio loop reported outside any call: the incarnation crashes."""


class Store:
    """The face of the store actor; stable across its restarts.

    Callers hold this object for the life of the process. Each incarnation of the store actor
    attaches its loop and pool; during an outage none is attached, writes queue up and reads
    raise ``StoreUnavailable``.

    ``gated``: reads, listens and the writer also wait for ``open_gate()`` (the node's schema
    child opens it once the migrations are applied); calls inside ``schema_work()`` pass.
    """

    def __init__(
        self,
        dsn: str,
        *,
        policy: StorePolicy | None = None,
        queue: WriteQueue | None = None,
        gated: bool = False,
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
        self._connect_failures = 0
        self._incarnations = 0
        self._rejected = 0
        self._dropped = 0
        self._connect_error: str | None = None  # why the last connection attempt failed
        self._gate: trio.Event | None = trio.Event() if gated else None
        self._suspect = trio.Event()  # a call saw a connection error: check the connection now
        self._listeners: set[trio.MemorySendChannel[str]] = set()
        self._unacknowledged = 0
        self._recovered_at: float | None = None
        self._dropped_writes = 0

    # -- the public API ------------------------------------------------------------------------

    async def write(self, *ops: Op, wait: float | None = None) -> None:
        """Queue ``ops`` (one transaction) and return after they committed (acknowledged).

        It waits at most ``wait`` seconds (default ``policy.write_wait``) for the commit. Past
        it the write is not acknowledged and ``StoreUnavailable`` says which of two things
        happened: the ops were withdrawn before the writer took them (never applied), or they
        had been taken already and may still commit (all together, once: docs/store.md). A
        caller that is cancelled does not withdraw its ops: they still commit.

        Raises:
            WriteRejected: the database refused them; nothing of them was applied.
            StoreUnavailable: not committed within ``wait``; ``QueueFull``: refused at once
                because the journal is at its bound (nothing queued).
        """
        entry = self.queue.put(ops, wait=True)
        assert entry.done is not None
        limit = self.policy.write_wait if wait is None else wait
        try:
            with trio.move_on_after(limit):
                await entry.done.wait()
        finally:
            if not entry.done.is_set():
                self.queue.abandon(entry)
        if not entry.done.is_set():
            self._unacknowledged += 1
            withdrawn = self.queue.withdraw(entry)
            outcome = (
                "withdrawn, never applied"
                if withdrawn
                else "already sent to the database: it may still commit"
            )
            msg = (
                f"the write was not acknowledged within write_wait={limit}s ({outcome}); "
                f"{self._why_unavailable()}"
            )
            raise StoreUnavailable(msg)
        if entry.error is not None:
            raise WriteRejected(str(entry.error)) from entry.error

    def write_nowait(self, *ops: Op, key: Hashable | None = None) -> None:
        """Queue ``ops`` and return at once; once queued they commit, never lost. Never blocks
        and never raises for the queue's sake.

        ``key`` coalesces a repeated write (a heartbeat: at most one per key waits in the
        queue). At the journal's bound the entry is not queued: it is dropped, counted
        (``writes_dropped``) and logged, while requests are refused up front (``check_room``)
        so that little is produced then (docs/store.md).
        """
        try:
            self.queue.put(ops, wait=False, key=key)
        except QueueFull:
            self._dropped_writes += 1
            if self._dropped_writes in (1, 10, 100) or self._dropped_writes % 1000 == 0:
                log.error("write_dropped", reason="journal full", dropped=self._dropped_writes)

    def check_room(self) -> None:
        """Raise ``QueueFull`` when new writes would be refused (a request refuses up front,
        before doing work whose record could not be kept)."""
        if self.queue.full:
            msg = (
                f"the write queue is full (journal at journal_max_bytes={self.queue.journal_max_bytes}); "
                f"{self._why_unavailable()}"
            )
            raise QueueFull(msg)

    @property
    def connected(self) -> bool:
        """Connected, and for a gated store with the gate open: reads and writes go through."""
        return self._attached.is_set() and (self._gate is None or self._gate.is_set())

    async def wait_connected(self) -> None:
        """Return once the store is connected (and, gated, its gate open). An actor that needs
        the database waits here inside its incarnation instead of crashing (docs/runtime.md)."""
        while True:
            if not self._attached.is_set():
                await self._attached.wait()
            elif not self._gate_passed():
                assert self._gate is not None
                await self._gate.wait()
            else:
                await trio.lowlevel.checkpoint()
                if self._attached.is_set() and self._gate_passed():
                    return

    def unready_reason(self) -> str | None:
        """Why reads and writes do not go through now, or None."""
        if not self._attached.is_set():
            return self._why_unavailable()
        if not self._gate_passed():
            return "the schema is not current yet (migrations pending)"
        return None

    def open_gate(self) -> None:
        """The schema is current: a gated store lets reads, listens and the writer through."""
        if self._gate is not None:
            self._gate.set()

    @contextlib.contextmanager
    def schema_work(self) -> Iterator[None]:
        """Calls made inside pass a gated store's gate (the migrations themselves)."""
        token = _SCHEMA_WORK.set(True)
        try:
            yield
        finally:
            _SCHEMA_WORK.reset(token)

    def _gate_passed(self) -> bool:
        return self._gate is None or self._gate.is_set() or _SCHEMA_WORK.get()

    def _why_unavailable(self) -> str:
        why = f" (last connection attempt: {self._connect_error})" if self._connect_error else ""
        return f"the database is unreachable{why}"

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
        """Run ``fn(conn)`` in one transaction on the store's loop and return its result.

        Not batched and not retried: after an ambiguous failure (``StoreUnavailable``) the
        caller may run it again only if ``fn`` is idempotent.
        """

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
        """Notifications on ``channel`` while the block runs, through a bounded channel (a full
        channel drops the newest and counts it). The channel ends when the listening connection
        is lost (the caller reconnects and catches up)."""
        await self._wait_attached()
        loop = self._loop
        send, receive = trio.open_memory_channel[str](self.policy.listen_buffer)
        self._listeners.add(send)

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                send.send_nowait(payload)
            except trio.WouldBlock:
                self._dropped += 1
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
            self._listeners.discard(send)
            self._suspect.set()
            msg = (
                f"cannot listen on {channel!r}: the database is unreachable ({type(exc).__name__})"
            )
            raise StoreUnavailable(msg) from exc
        try:
            async with receive:
                yield receive
        finally:
            self._listeners.discard(send)
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
            connect_failures=self._connect_failures,
            rejected_ops=self._rejected,
            journal_spills=self.queue.spills,
            incarnations=self._incarnations,
            notifications_dropped=self._dropped,
            last_error=self._connect_error,
            recovered_at=self._recovered_at,
            schema_ready=self._gate is None or self._gate.is_set(),
            journal_bytes=self.queue.journal_bytes,
            writes_unacknowledged=self._unacknowledged,
            writes_withdrawn=self.queue.withdrawn,
            writes_refused=self.queue.refused,
            writes_coalesced=self.queue.coalesced,
            writes_dropped=self._dropped_writes,
        )

    # -- internals -------------------------------------------------------------------------------

    async def _wait_attached(self) -> None:
        if not (self._attached.is_set() and self._gate_passed()):
            with trio.move_on_after(self.policy.read_wait):
                await self.wait_connected()
        if not self._attached.is_set() or self._pool is None:
            why = f"; last attempt: {self._connect_error}" if self._connect_error else ""
            msg = f"the database is unreachable (no connection within read_wait={self.policy.read_wait}s{why})"
            raise StoreUnavailable(msg)
        if not self._gate_passed():
            msg = f"the schema is not current yet (migrations pending after read_wait={self.policy.read_wait}s)"
            raise StoreUnavailable(msg)

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        limit = self.policy.answer_wait
        if limit is None or _SCHEMA_WORK.get():
            return await self._call_unbounded(fn)
        with trio.move_on_after(limit):
            return await self._call_unbounded(fn, detach=True)
        # no answer (a hung connection is not an error until command_timeout): the call was
        # cancelled through the bridge, and the connection is checked now
        self._suspect.set()
        msg = f"the database did not answer within answer_wait={limit}s; {self._why_unavailable()}"
        raise StoreUnavailable(msg)

    async def _call_unbounded(
        self, fn: Callable[[Any], Awaitable[T]], *, detach: bool = False
    ) -> T:
        await self._wait_attached()
        await fault_point("store.read")
        pool, loop = self._pool, self._loop
        try:
            if detach:
                result: T = await _run_detachable(loop, fn(pool))
            else:
                result = await loop.run_aio_coroutine(fn(pool))
        except _CONNECTION_ERRORS as exc:
            self._suspect.set()  # the store checks its connection now, not at the next probe
            msg = f"the database is unreachable: {type(exc).__name__}"
            raise StoreUnavailable(msg) from exc
        return result

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """One incarnation of the store actor.

        It reports ready at once (its face is stable), then connects, reconnecting with backoff
        while the database is away; queued writes wait in the queue meanwhile. Anything other
        than a lost connection crashes the incarnation, and the supervisor starts a new one
        with a new loop and pool. Stopped, it commits what it can within ``stop_drain`` and
        writes the rest to the journal.
        """
        self._incarnations += 1
        fault_box: list[BaseException] = []
        fault_seen = trio.Event()

        def on_asyncio_error(_loop: Any, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            log.warning(
                "asyncio_error",
                message=context.get("message"),
                error=type(exc).__name__ if exc else None,
            )
            if exc is not None and not isinstance(
                exc, (*_CONNECTION_ERRORS, asyncio.CancelledError)
            ):
                fault_box.append(exc)
                fault_seen.set()

        try:  # the queue outlives the incarnation; on a stop it also outlives the process
            async with trio_asyncio.open_loop() as loop, trio.open_nursery() as nursery:
                loop.set_exception_handler(on_asyncio_error)

                async def crash_on_asyncio_fault() -> None:
                    await fault_seen.wait()
                    msg = f"the asyncio loop reported {type(fault_box[0]).__name__}: {fault_box[0]}"
                    raise _AsyncioFault(msg) from fault_box[0]

                nursery.start_soon(crash_on_asyncio_fault)
                task_status.started(self)
                await self._connect_loop(loop)
        finally:
            self.queue.persist()

    async def _connect_loop(self, loop: Any) -> None:
        attempt = 0
        logged: tuple[str, float] | None = None  # the error last logged, and when
        while True:
            try:
                pool = await loop.run_aio_coroutine(self._create_pool())
            except _CONNECTION_ERRORS as exc:
                now = trio.current_time()
                if self._outage_since is None:
                    self._outage_since = now
                self._connect_error = f"{type(exc).__name__}: {exc}"
                delay = self.policy.reconnect.delay(attempt)
                attempt += 1
                self._connect_failures += 1
                # an outage of hours retries thousands of times: one line when the error changes,
                # then one a minute with the count of attempts, not one per attempt
                error = type(exc).__name__
                if logged is None or logged[0] != error or now - logged[1] >= CONNECT_LOG_EVERY:
                    logged = (error, now)
                    log.warning(
                        "store_connect_failed",
                        error=error,
                        attempts=attempt,
                        outage_s=round(now - self._outage_since, 1),
                        retry_in=round(delay, 3),
                    )
                await trio.sleep(delay)
                continue
            attempt = 0
            logged = None
            self._connect_error = None
            try:
                await self._attached_run(loop, pool)
            except* StoreUnavailable as group:
                self._reconnects += 1  # the connection was lost: reconnect
                self._connect_error = str(group.exceptions[0])

    async def _attached_run(self, loop: Any, pool: Any) -> None:
        self._loop, self._pool = loop, pool
        self._attached.set()
        if self._outage_since is not None:
            self._recovered_at = trio.current_time()
            log.info("store_recovered", outage_s=round(trio.current_time() - self._outage_since, 3))
        self._outage_since = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe, loop, pool)
                await self._writer(loop, pool)
        except (trio.Cancelled, BaseExceptionGroup) as exc:
            stopping = isinstance(exc, trio.Cancelled) or (
                isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None
            )
            # stopped: commit what is queued (nothing before the schema is current)
            if stopping and self._gate_passed():
                with trio.move_on_after(self.policy.stop_drain, shield=True):
                    await self._drain(loop, pool)
            raise
        finally:
            self._attached = trio.Event()
            self._pool = None
            if self._outage_since is None:
                self._outage_since = trio.current_time()
            for send in list(self._listeners):  # listeners reconnect and catch up
                send.close()
            with trio.move_on_after(self.policy.connect_timeout, shield=True):
                with contextlib.suppress(Exception):
                    await loop.run_aio_coroutine(pool.close())
            pool.terminate()

    async def _probe(self, loop: Any, pool: Any) -> None:
        """While attached: check the connection every ``probe_interval`` (or at once when a
        call saw a connection error); a failed check detaches, so an outage is seen even when
        nothing is written."""
        policy = self.policy
        while True:
            with trio.move_on_after(policy.probe_interval):
                await self._suspect.wait()
            self._suspect = trio.Event()
            try:
                with trio.fail_after(policy.connect_timeout + policy.command_timeout):
                    await loop.run_aio_coroutine(
                        pool.fetchval("SELECT 1", timeout=policy.connect_timeout)
                    )
            except _PROBE_ERRORS as exc:
                log.warning("store_probe_failed", error=type(exc).__name__)
                msg = f"the connection check failed: {type(exc).__name__}"
                raise StoreUnavailable(msg) from exc

    async def _drain(self, loop: Any, pool: Any) -> None:
        """On stop: commit what is queued (memory first) while the database answers."""
        committed = 0
        with contextlib.suppress(Exception):
            while self.queue.depth:
                batch = self.queue.peek(self.policy.batch_max)
                started = trio.current_time()
                await loop.run_aio_coroutine(self._commit_on(pool, batch))
                self._count(batch, trio.current_time() - started)
                self.queue.ack(batch)
                committed += len(batch)
        if committed or self.queue.depth:
            log.info("store_drained", committed=committed, left=self.queue.depth)

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
        """Group commit on one connection held for the incarnation's life (a pool release would
        cost a reset round trip per batch)."""
        try:
            conn = await loop.run_aio_coroutine(pool.acquire(timeout=self.policy.connect_timeout))
        except _CONNECTION_ERRORS as exc:
            msg = f"cannot acquire the writer's connection: {type(exc).__name__}"
            raise StoreUnavailable(msg) from exc
        try:
            if self._gate is not None:
                await self._gate.wait()  # nothing is committed before the schema is current
            while True:
                await self.queue.wait_work()
                if self.policy.batch_window > 0 and self.queue.depth < self.policy.batch_max:
                    await trio.sleep(self.policy.batch_window)
                else:
                    await trio.lowlevel.checkpoint()  # writers that are ready now join the batch
                batch = self.queue.peek(self.policy.batch_max)
                await fault_point("store.commit")
                started = trio.current_time()
                try:
                    await loop.run_aio_coroutine(self._commit(conn, batch))
                except _CONNECTION_ERRORS as exc:
                    # the batch stays queued and is retried after the reconnect (ops are
                    # idempotent; entries read back from the journal are deduplicated)
                    log.warning("store_commit_failed", error=type(exc).__name__, batch=len(batch))
                    msg = f"commit failed: {type(exc).__name__}"
                    raise StoreUnavailable(msg) from exc
                except asyncpg.PostgresError as exc:
                    if not _is_rejection(exc):
                        raise
                    await self._commit_one_by_one(loop, conn, batch)
                    continue
                self._count(batch, trio.current_time() - started)
                self.queue.ack(batch)
        finally:
            with trio.move_on_after(self.policy.connect_timeout, shield=True):
                with contextlib.suppress(Exception):
                    await loop.run_aio_coroutine(
                        pool.release(conn, timeout=self.policy.connect_timeout)
                    )

    def _count(self, batch: list[_Entry], elapsed: float) -> None:
        n = sum(len(e.ops) for e in batch)
        self._batches += 1
        self._ops += n
        self._max_batch = max(self._max_batch, n)
        self._latencies.append(elapsed)

    async def _commit_one_by_one(self, loop: Any, conn: Any, batch: list[_Entry]) -> None:
        """A batch the database refused: find the refused entries, commit the others."""
        for entry in batch:
            started = trio.current_time()
            try:
                await loop.run_aio_coroutine(self._commit(conn, [entry]))
            except asyncpg.PostgresError as exc:
                if not _is_rejection(exc):
                    raise
                self._rejected += len(entry.ops)
                log.error("store_op_rejected", error=type(exc).__name__, detail=str(exc)[:200])
                self.queue.ack([entry], error=exc)
                continue
            self._count([entry], trio.current_time() - started)
            self.queue.ack([entry])

    async def _commit_on(self, pool: Any, batch: list[_Entry]) -> None:
        async with pool.acquire(timeout=self.policy.connect_timeout) as conn:
            await self._commit(conn, batch)

    async def _commit(self, conn: Any, batch: list[_Entry]) -> None:
        """One transaction for the whole batch, run as one asyncio coroutine (the bridge is
        crossed once). Consecutive ops with the same statement, across entries, go to the
        server as one ``executemany``. A batch of one statement needs no BEGIN/COMMIT:
        ``executemany`` is atomic on its own (one Sync, asyncpg >= 0.22), so it commits in
        one round trip. Entries read back from the journal record their ids in
        ``store_applied_ops`` in the same transaction, and one already there is skipped: a
        replay applies once."""
        timeout = self.policy.command_timeout
        runs = _runs(op for e in batch for op in e.ops)
        journaled = [e.id for e in batch if e.journaled]
        if not journaled and len(runs) <= 1:
            if runs:
                await _execute_run(conn, runs[0], timeout)
            return
        async with conn.transaction():
            if journaled:
                rows = await conn.fetch(_MARK_APPLIED, journaled, timeout=timeout)
                fresh = {r["op_id"] for r in rows}
                if len(fresh) < len(journaled):  # some were applied before: leave them out
                    runs = _runs(
                        o for e in batch if not e.journaled or e.id in fresh for o in e.ops
                    )
            for run in runs:
                await _execute_run(conn, run, timeout)


async def _run_detachable(loop: Any, coro: Awaitable[T]) -> T:
    """Run ``coro`` on the store's loop; a cancelled caller returns at once. The bridge's own
    ``run_aio_coroutine`` waits, once cancelled, until the asyncio task has finished cancelling,
    and asyncpg's clean-up of a connection that hangs (a black-holed path: the cancel request
    and the release wait for their timeouts) would hold the caller for seconds. Here the task is
    cancelled behind the caller and finishes on the loop; its outcome is retrieved so that the
    loop reports nothing."""
    task = asyncio.ensure_future(coro, loop=loop)
    task.add_done_callback(_retrieve)
    try:
        result: T = await trio_asyncio.run_aio_future(asyncio.shield(task))
    finally:
        if not task.done():
            task.cancel()
    return result


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _runs(ops: Iterable[Op]) -> list[list[Op]]:
    """Consecutive ops that share a statement, grouped."""
    runs: list[list[Op]] = []
    for op in ops:
        if runs and runs[-1][0].sql == op.sql:
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs


async def _execute_run(conn: Any, run: list[Op], timeout: float) -> None:
    """One statement for a run of ops that share a statement: the statement itself for one op,
    its ``many`` form with the rows' values as arrays (one Bind, one Execute), or else an
    ``executemany`` (a Bind and an Execute per op)."""
    first = run[0]
    if len(run) == 1:
        await conn.execute(first.sql, *first.args, timeout=timeout)
    elif first.many is not None:
        columns = [list(column) for column in zip(*(op.args for op in run), strict=True)]
        await conn.execute(first.many, *columns, timeout=timeout)
    else:
        await conn.executemany(first.sql, [op.args for op in run], timeout=timeout)


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
