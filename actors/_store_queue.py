"""The store's queue of pending writes, and the journal it spills to (docs/store.md).

The queue is created outside the store actor's incarnations, so a crash loses nothing. Memory
holds at most ``memory_bound`` ops; past it, entries collect in a small spill buffer that is
appended to the journal file ``spill_batch`` ops at a time (one write, one fsync). Entries are
taken oldest first: memory, then the journal file, then the spill buffer. The file is read back
a batch at a time, so memory stays bounded however long the outage; the file itself is bounded
by ``journal_max_bytes``, past which a new entry is refused (``QueueFull``) and nothing queued
is ever dropped.
"""

from __future__ import annotations

import base64
import collections
import datetime
import decimal
import json
import os
import uuid
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import attrs
import structlog
import trio

from runtime import Unavailable

__all__ = ["Op", "QueueFull", "StoreUnavailable", "WriteQueue"]

log = structlog.get_logger("store")

JOURNAL_MODE = 0o600  # the journal and its temporary copy: the owner reads and writes, no one else


class StoreUnavailable(Unavailable):
    """The database cannot be reached now; answer 503 with Retry-After, never 401.

    A ``runtime.Unavailable``: an actor that raises it to its supervisor is restarted with
    backoff and never counted as a crash (docs/runtime.md)."""


class QueueFull(StoreUnavailable):
    """The write queue is at its bound (memory and journal full during a long outage): the new
    entry is refused, not queued; everything queued before stays."""


@attrs.frozen
class Op:
    """One idempotent SQL statement (an upsert, ON CONFLICT DO NOTHING, a conditional UPDATE)."""

    sql: str
    args: tuple[Any, ...] = ()
    # the same statement for many rows at once: each parameter an array of the rows' values
    # (``unnest``); a run of consecutive ops with this ``sql`` is sent as one execute of it
    # rather than an ``executemany`` of ``sql`` (the store, ``_execute_run``)
    many: str | None = None


Source = Literal["memory", "file", "spill"]


@attrs.define(eq=False)
class _Entry:
    """One ``write`` call: its ops commit together, in one transaction."""

    id: uuid.UUID
    ops: tuple[Op, ...]
    done: trio.Event | None = None
    error: BaseException | None = None
    source: Source = "memory"
    end: int = 0  # file entries: the offset just past their line
    # handed to the writer (or written to the journal file): from then on it may have been
    # applied, so it can no longer be withdrawn
    taken: bool = False
    key: Hashable | None = None  # coalescing key of a fire-and-forget entry (``put(key=)``)
    size: int = 0  # spill entries: the bytes of their journal line

    @property
    def journaled(self) -> bool:
        """Read back from the journal file: it may have been applied by an earlier run."""
        return self.source == "file"


def _open_private(path: Path, flag: int) -> BinaryIO:
    """``path`` opened to write, created owner-only (``JOURNAL_MODE``): the journal holds the
    writes of an outage (user ids, email addresses, token hashes), which no other OS user may
    read, whatever the umask or the mode of a file left there before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flag, JOURNAL_MODE)
    try:
        os.fchmod(fd, JOURNAL_MODE)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


# -- journal encoding: op args as JSON, tagged for the types JSON lacks -----------------------


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$d": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"$s": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return {"$n": str(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"$j": value}  # a jsonb argument, kept as it is
    msg = f"an op argument of type {type(value).__name__} cannot be written to the journal"
    raise TypeError(msg)


_DECODERS: dict[str, Any] = {
    "$u": uuid.UUID,
    "$b": base64.b64decode,
    "$t": datetime.datetime.fromisoformat,
    "$d": datetime.date.fromisoformat,
    "$s": lambda s: datetime.timedelta(seconds=s),
    "$n": decimal.Decimal,
    "$j": lambda v: v,
}


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        ((tag, inner),) = value.items()
        return _DECODERS[tag](inner)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _line(entry: _Entry) -> bytes:
    record = {
        "id": str(entry.id),
        "ops": [
            {"sql": op.sql, "args": [_encode(a) for a in op.args]}
            | ({} if op.many is None else {"many": op.many})
            for op in entry.ops
        ],
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _parse(line: bytes) -> _Entry:
    record = json.loads(line)
    ops = tuple(
        Op(o["sql"], tuple(_decode(a) for a in o["args"]), o.get("many")) for o in record["ops"]
    )
    return _Entry(uuid.UUID(record["id"]), ops, source="file")


class WriteQueue:
    """Pending writes, owned by the store's supervisor slot so that they outlive a crash.

    Args:
        memory_bound: ops held in memory; past it, entries spill to the journal.
        journal_path: the journal file; without one the queue is memory only (and unbounded:
            only tests and one-shot commands run without a journal).
        spill_batch: spilled ops collected before one append and fsync of the journal.
        compact_bytes: an applied prefix of the journal larger than this (and than half the
            file) is cut off by rewriting the rest.
        journal_max_bytes: the journal file's bound (with the spill buffer); an entry that
            would pass it is refused with ``QueueFull``. None: no bound.
    """

    def __init__(
        self,
        *,
        memory_bound: int = 20_000,
        journal_path: Path | None = None,
        spill_batch: int = 1_000,
        compact_bytes: int = 16 * 1024 * 1024,
        journal_max_bytes: int | None = 1024 * 1024 * 1024,
    ) -> None:
        if memory_bound < 0 or spill_batch < 1:
            msg = f"memory_bound must be >= 0 and spill_batch >= 1 (got {memory_bound}, {spill_batch})"
            raise ValueError(msg)
        self.memory_bound = memory_bound
        self.journal_path = journal_path
        self.spill_batch = spill_batch
        self.compact_bytes = compact_bytes
        self.journal_max_bytes = journal_max_bytes
        self._file_bytes = 0  # the journal file's size
        self._spill_bytes = 0
        self._keyed: dict[Hashable, _Entry] = {}  # coalescable entries not yet taken
        self.refused = 0  # entries refused at the bound (QueueFull)
        self._at_bound = False  # an entry was refused and no room was made since
        self.coalesced = 0  # fire-and-forget entries folded into one already queued
        self.withdrawn = 0  # entries taken back by a writer that stopped waiting
        self._memory: collections.deque[_Entry] = collections.deque()
        self._memory_ops = 0
        self._spill: collections.deque[_Entry] = collections.deque()
        self._spill_ops = 0
        self._readahead: collections.deque[_Entry] = collections.deque()
        self._file_pending = 0  # entries in the file not yet committed (readahead included)
        self._read_pos = 0  # offset of the first uncommitted entry in the file
        self._scan_pos = 0  # offset just past the last entry read ahead
        self._waiters: dict[uuid.UUID, _Entry] = {}
        self._has_work = trio.Event()
        self.spills = 0  # appends to the journal (each one fsync)
        if journal_path is not None and journal_path.exists():
            self._open_existing()

    # -- putting ---------------------------------------------------------------------------------

    def put(self, ops: Sequence[Op], *, wait: bool, key: Hashable | None = None) -> _Entry:
        """Queue one entry. Never blocks; never drops what it queued.

        ``key`` (fire-and-forget entries only) coalesces: while an entry with the same key is
        queued and not yet taken by the writer, the new one is folded into it (its statements
        must then be the same, evaluated at commit time: a heartbeat's ``now()``).

        Raises:
            QueueFull: the journal is at ``journal_max_bytes``; nothing was queued.
            TypeError: an op argument the journal cannot hold, when the entry has to spill.
        """
        if key is not None:
            queued = self._keyed.get(key)
            if queued is not None and not queued.taken:
                self.coalesced += 1
                return queued
        entry = _Entry(uuid.uuid4(), tuple(ops), trio.Event() if wait else None, key=key)
        spilling = self.journal_path is not None and (
            self._file_pending > 0
            or self._spill
            or self._memory_ops + len(entry.ops) > self.memory_bound
        )
        if spilling:
            size = len(_line(entry))  # refuse what the journal cannot hold now, not at flush
            bound = self.journal_max_bytes
            if bound is not None and self._file_bytes + self._spill_bytes + size > bound:
                self.refused += 1
                self._at_bound = True
                msg = (
                    f"the write queue is full: the journal would pass journal_max_bytes={bound} "
                    f"({self._file_bytes + self._spill_bytes} bytes queued on disk); the write "
                    "was refused, nothing queued before it is dropped"
                )
                raise QueueFull(msg)
            entry.source = "spill"
            entry.size = size
            self._spill.append(entry)
            self._spill_ops += len(entry.ops)
            self._spill_bytes += size
            if self._spill_ops >= self.spill_batch:
                self._flush_spill()
        else:
            self._memory.append(entry)
            self._memory_ops += len(entry.ops)
        if entry.done is not None:
            self._waiters[entry.id] = entry
        if key is not None and not entry.taken:
            self._keyed[key] = entry
        self._has_work.set()
        return entry

    def withdraw(self, entry: _Entry) -> bool:
        """Take back an entry whose writer stopped waiting, if the writer has not taken it yet
        (then it is never applied); False when it may already have been (it then commits)."""
        self._waiters.pop(entry.id, None)
        if entry.taken:
            return False
        if entry.source == "memory":
            self._memory.remove(entry)
            self._memory_ops -= len(entry.ops)
        elif entry.source == "spill":
            self._spill.remove(entry)
            self._spill_ops -= len(entry.ops)
            self._spill_bytes -= entry.size
        else:
            return False
        self._unkey(entry)
        entry.taken = True
        self.withdrawn += 1
        return True

    def abandon(self, entry: _Entry) -> None:
        """The writer stopped waiting (cancelled) but its entry stays queued and commits."""
        self._waiters.pop(entry.id, None)

    def _unkey(self, entry: _Entry) -> None:
        if entry.key is not None and self._keyed.get(entry.key) is entry:
            del self._keyed[entry.key]

    def _take(self, entry: _Entry) -> None:
        entry.taken = True
        self._unkey(entry)

    @property
    def full(self) -> bool:
        """Whether the journal is at its bound: an entry was refused and no room was made since
        (the journal shrank: compacted, drained, or spilled entries committed)."""
        return self._at_bound

    def _flush_spill(self) -> None:
        """Append the spill buffer to the journal: one write and one fsync."""
        assert self.journal_path is not None
        if not self._spill:
            return
        data = b"".join(_line(e) for e in self._spill)
        with _open_private(self.journal_path, os.O_APPEND) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._file_bytes += len(data)
        for entry in self._spill:
            self._take(entry)  # in the file now: a reader of it may apply it
        self._file_pending += len(self._spill)
        self.spills += 1
        log.info("journal_spilled", entries=len(self._spill), ops=self._spill_ops)
        self._spill.clear()
        self._spill_ops = 0
        self._spill_bytes = 0

    # -- taking ----------------------------------------------------------------------------------

    async def wait_work(self) -> None:
        """Return when there is something to commit."""
        while not self.depth:
            self._has_work = trio.Event()
            await self._has_work.wait()

    def peek(self, max_ops: int) -> list[_Entry]:
        """The oldest entries, up to ``max_ops`` ops (at least one entry), from one source."""
        if self._memory:
            source: collections.deque[_Entry] = self._memory
        elif self._file_pending:
            self._read_ahead(max_ops)
            source = self._readahead
        else:
            source = self._spill
        batch: list[_Entry] = []
        count = 0
        for entry in source:
            if batch and count + len(entry.ops) > max_ops:
                break
            batch.append(entry)
            count += len(entry.ops)
            self._take(entry)
        return batch

    def _read_ahead(self, max_ops: int) -> None:
        assert self.journal_path is not None
        have = sum(len(e.ops) for e in self._readahead)
        if have >= max_ops or len(self._readahead) >= self._file_pending:
            return
        with self.journal_path.open("rb") as f:
            f.seek(self._scan_pos)
            while have < max_ops and len(self._readahead) < self._file_pending:
                line = f.readline()
                if not line:
                    break
                self._scan_pos += len(line)
                try:
                    entry = _parse(line)
                except (ValueError, KeyError, TypeError):
                    self._file_pending -= 1
                    log.error("journal_line_unreadable", offset=self._scan_pos - len(line))
                    continue
                entry.end = self._scan_pos
                self._readahead.append(entry)
                have += len(entry.ops)
        if not self._readahead:  # only unreadable lines were left
            self._file_pending = 0
            self._read_pos = self._scan_pos
            self._file_drained()

    def ack(self, batch: list[_Entry], *, error: BaseException | None = None) -> None:
        """Remove committed (or refused) entries from the head and wake their waiters."""
        from_file = False
        for entry in batch:
            if entry.source == "memory":
                head = self._memory.popleft()
                self._memory_ops -= len(head.ops)
            elif entry.source == "file":
                head = self._readahead.popleft()
                self._file_pending -= 1
                self._read_pos = head.end
                from_file = True
            else:
                head = self._spill.popleft()
                self._spill_ops -= len(head.ops)
                self._spill_bytes -= head.size
                self._at_bound = False
            assert head is entry, "acknowledged entries must be the oldest queued"
            waiter = self._waiters.pop(entry.id, None)
            if waiter is not None and waiter.done is not None:
                waiter.error = error
                waiter.done.set()
        if from_file:
            if self._file_pending == 0:
                self._file_drained()
            elif self._read_pos > self.compact_bytes and self._read_pos * 2 > self._file_size():
                self._compact()

    def _file_drained(self) -> None:
        assert self.journal_path is not None
        self.journal_path.unlink(missing_ok=True)
        self._file_bytes = 0
        self._at_bound = False
        self._read_pos = self._scan_pos = 0
        self._readahead.clear()
        log.info("journal_drained", path=str(self.journal_path))

    def _file_size(self) -> int:
        assert self.journal_path is not None
        try:
            return self.journal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _compact(self) -> None:
        """Cut the applied prefix off the journal: copy the rest, fsync, replace atomically."""
        assert self.journal_path is not None
        with self.journal_path.open("rb") as f:
            f.seek(self._read_pos)
            rest = f.read()
        self._replace_file(rest)
        shift = self._read_pos
        self._at_bound = False
        for entry in self._readahead:
            entry.end -= shift
        self._scan_pos -= shift
        self._read_pos = 0

    def _replace_file(self, data: bytes) -> None:
        assert self.journal_path is not None
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        with _open_private(tmp, os.O_TRUNC) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.journal_path)
        self._file_bytes = len(data)

    # -- persisting --------------------------------------------------------------------------------

    def persist(self) -> None:
        """Write everything queued to the journal, oldest first (on the store's stop), so that
        a later process replays what this one could not commit. Waiters keep waiting. It never
        drops: the file may pass ``journal_max_bytes`` by what memory held."""
        if self.journal_path is None or not (self._memory or self._spill):
            return
        for entry in (*self._memory, *self._spill):
            self._take(entry)
        head = b"".join(_line(e) for e in self._memory)
        rest = b""
        if self._file_pending:
            with self.journal_path.open("rb") as f:
                f.seek(self._read_pos)
                rest = f.read()
        tail = b"".join(_line(e) for e in self._spill)
        self._replace_file(head + rest + tail)
        self._file_pending += len(self._memory) + len(self._spill)
        log.info("journal_persisted", entries=self._file_pending)
        self._memory.clear()
        self._spill.clear()
        self._memory_ops = self._spill_ops = self._spill_bytes = 0
        self._readahead.clear()
        self._read_pos = self._scan_pos = 0

    def _open_existing(self) -> None:
        """Adopt a journal left by an earlier process: cut a torn last line, count the entries."""
        assert self.journal_path is not None
        os.chmod(self.journal_path, JOURNAL_MODE)  # one an older Steward left readable to all
        data = self.journal_path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            log.warning("journal_torn_line_cut", path=str(self.journal_path), bytes=len(data) - cut)
            with self.journal_path.open("r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        self._file_bytes = cut
        self._file_pending = data[:cut].count(b"\n")
        if self._file_pending:
            self._has_work.set()
            log.info("journal_loaded", path=str(self.journal_path), entries=self._file_pending)
        else:
            self._file_drained()

    # -- figures ---------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Entries queued: in memory, in the journal file, and in the spill buffer."""
        return len(self._memory) + self._file_pending + len(self._spill)

    @property
    def journal_bytes(self) -> int:
        """The journal file's size plus the spill buffer's, against ``journal_max_bytes``."""
        return self._file_bytes + self._spill_bytes

    @property
    def journal_depth(self) -> int:
        """Entries in the journal file not yet committed."""
        return self._file_pending

    @property
    def memory_ops(self) -> int:
        """Ops held in memory (the memory queue and the spill buffer)."""
        return self._memory_ops + self._spill_ops
