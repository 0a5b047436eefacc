"""Usage: per-user rate limits by subscription tier, and usage events for analytics."""

from __future__ import annotations

import collections
import datetime
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

import attrs
import structlog
import trio

from actors._store import Op, Store, StoreUnavailable
from actors._usage_stats import BUCKET_COLUMNS, BUCKETS, ToolCallStats, latency_bucket
from actors.sessions import UserContext

__all__ = [
    "OTHER_NAME",
    "Quota",
    "QuotaExceeded",
    "RateLimited",
    "TierLimit",
    "UsageMeter",
    "parse_quota",
    "strictest_limit",
]

log = structlog.get_logger("usage")

QUOTA_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


# a rollup row's name for a name the application does not serve (a tools/call of an unknown
# tool, say): the rollups hold the application's names only, whatever callers send
OTHER_NAME = "(other)"
NAME_LENGTH = 200  # the longest name a rollup keeps (a resource URI, say)


def _upsert(table: str, period: str, period_param: str) -> str:
    keys = f"user_id, {period}, method, name, tier"
    buckets = ", ".join(BUCKET_COLUMNS)
    flags = ", ".join(f"(($13)::int = {i})::int" for i in range(BUCKETS))
    adds = ", ".join(f"{b} = {table}.{b} + EXCLUDED.{b}" for b in BUCKET_COLUMNS)
    return (
        f"INSERT INTO {table} ({keys}, calls, errors, duration_ms, {buckets}) "
        f"VALUES ($2, {period_param}, $4, $12, $6, 1, $11, $8, {flags}) "
        f"ON CONFLICT ({keys}) DO UPDATE SET calls = {table}.calls + 1, "
        f"errors = {table}.errors + EXCLUDED.errors, "
        f"duration_ms = {table}.duration_ms + EXCLUDED.duration_ms, {adds}"
    )


# One statement per request (the event, its minute's rollup and its hour's), so that the requests
# of one group-commit batch are consecutive ops with the same SQL, which the store sends as one
# executemany; a data-modifying WITH runs exactly once whether or not its output is read.
_RECORD = (
    "WITH event AS (INSERT INTO usage_events (event_id, user_id, grant_id, method, name, tier, outcome, duration_ms, occurred_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING), "
    f"minute AS ({_upsert('usage_rollups', 'minute', '$10')}) "
    f"{_upsert('usage_hourly', 'hour', '$14')}"
)


# The same for the requests of one batch at once: every parameter an array (the rows' values,
# in the order of _RECORD's parameters), the events inserted as they are, and each rollup row's
# calls of the batch summed before its upsert (one statement may not update a row twice).
_RECORD_COLUMNS = (
    ("event_id", "uuid"),
    ("user_id", "text"),
    ("grant_id", "uuid"),
    ("method", "text"),
    ("name", "text"),
    ("tier", "text"),
    ("outcome", "text"),
    ("duration_ms", "float8"),
    ("occurred_at", "timestamptz"),
    ("minute", "timestamptz"),
    ("error", "int"),
    ("rollup_name", "text"),
    ("bucket", "int"),
    ("hour", "timestamptz"),
)


def _upsert_many(table: str, period: str) -> str:
    keys = f"user_id, {period}, method, name, tier"
    buckets = ", ".join(BUCKET_COLUMNS)
    sums = ", ".join(f"sum((bucket = {i})::int)" for i in range(BUCKETS))
    adds = ", ".join(f"{b} = {table}.{b} + EXCLUDED.{b}" for b in BUCKET_COLUMNS)
    return (
        f"INSERT INTO {table} ({keys}, calls, errors, duration_ms, {buckets}) "
        f"SELECT user_id, {period}, method, rollup_name, tier, count(*), sum(error), "
        f"sum(duration_ms), {sums} FROM r GROUP BY user_id, {period}, method, rollup_name, tier "
        f"ON CONFLICT ({keys}) DO UPDATE SET calls = {table}.calls + EXCLUDED.calls, "
        f"errors = {table}.errors + EXCLUDED.errors, "
        f"duration_ms = {table}.duration_ms + EXCLUDED.duration_ms, {adds}"
    )


_RECORD_MANY = (
    "WITH r AS (SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_RECORD_COLUMNS, 1))
    + ") AS r("
    + ", ".join(name for name, _ in _RECORD_COLUMNS)
    + ")), event AS (INSERT INTO usage_events (event_id, user_id, grant_id, method, name, tier, "
    "outcome, duration_ms, occurred_at) SELECT event_id, user_id, grant_id, method, name, tier, "
    "outcome, duration_ms, occurred_at FROM r ON CONFLICT DO NOTHING), "
    f"minute AS ({_upsert_many('usage_rollups', 'minute')}) "
    f"{_upsert_many('usage_hourly', 'hour')}"
)


class RateLimited(Exception):
    """The user's tier allows no more requests now; retry after ``retry_after`` seconds.

    ``limit`` names the tier's setting that refused (``requests_per_minute``,
    ``initialize_per_minute``, ``tool_calls``), ``value`` its value, and ``resets_at`` (UTC epoch
    seconds) is when a request is admitted again."""

    def __init__(
        self,
        retry_after: int,
        *,
        limit: str = "requests_per_minute",
        value: int | str | None = None,
        resets_at: float | None = None,
    ) -> None:
        super().__init__(f"rate limited ({limit}); retry after {retry_after}s")
        self.retry_after = retry_after
        self.limit = limit
        self.value = value
        self.resets_at = resets_at if resets_at is not None else time.time() + retry_after


class QuotaExceeded(RateLimited):
    """The user's tier allows no more tool calls in this quota period. ``resets_at`` is the end of
    the period, a fixed window aligned to UTC: every node computes the same instant."""

    def __init__(self, retry_after: int, quota: Quota, *, used: int = 0, resets_at: float) -> None:
        super().__init__(retry_after, limit="tool_calls", value=str(quota), resets_at=resets_at)
        self.quota = quota
        self.used = used


@attrs.frozen
class Quota:
    """``calls`` per ``unit`` (a fixed window aligned to UTC: a day quota resets at midnight UTC)."""

    calls: int
    unit: str

    @property
    def period(self) -> int:
        return QUOTA_PERIODS[self.unit]

    def __str__(self) -> str:
        return f"{self.calls}/{self.unit}"


def parse_quota(text: str) -> Quota:
    """``"1000/day"`` → Quota(1000, "day"); units: second, minute, hour, day.

    Raises:
        ValueError: not of the form N/unit with N ≥ 1.
    """
    calls, _, unit = text.strip().partition("/")
    if not calls.strip().isdigit() or int(calls) < 1 or unit.strip() not in QUOTA_PERIODS:
        msg = f"a quota is N/{'|'.join(QUOTA_PERIODS)} with N ≥ 1, got {text!r}"
        raise ValueError(msg)
    return Quota(int(calls), unit.strip())


@attrs.frozen
class TierLimit:
    requests_per_minute: int
    burst: int
    max_streams: int | None = None  # long-lived SSE streams held at once by one user
    tool_calls: Quota | None = None  # tools/call per period by one user
    max_sessions: int | None = None  # live transport sessions held at once by one user
    initialize_per_minute: int | None = None  # new transport sessions per minute (and at once)


# the limits of a meter with no tier at all: the floor of every limit
FLOOR = TierLimit(
    1, 1, max_streams=1, tool_calls=Quota(1, "day"), max_sessions=1, initialize_per_minute=1
)


def strictest_limit(limits: Iterable[TierLimit]) -> TierLimit:
    """Every limit at its most restrictive over ``limits`` (a limit of None is no limit, so any
    other value is stricter); FLOOR when there are none."""
    limits = list(limits)
    if not limits:
        return FLOOR

    def least(values: Iterable[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    quotas = [q for q in (lim.tool_calls for lim in limits) if q is not None]
    return TierLimit(
        min(lim.requests_per_minute for lim in limits),
        min(lim.burst for lim in limits),
        max_streams=least(lim.max_streams for lim in limits),
        tool_calls=min(quotas, key=lambda q: q.calls / q.period) if quotas else None,
        max_sessions=least(lim.max_sessions for lim in limits),
        initialize_per_minute=least(lim.initialize_per_minute for lim in limits),
    )


@attrs.define
class _Bucket:
    tokens: float
    stamp: float


# The tool calls a user made in a quota window, on every node: each admitted call is one usage
# event of its minute's rollup (a refused call records none), committed within a batch.
_QUOTA_USED = (
    "SELECT coalesce(sum(calls), 0) FROM usage_rollups "
    "WHERE user_id = $1 AND method = 'tools/call' AND minute >= $2 AND minute < $3"
)


@attrs.define(slots=True)
class _QuotaWindow:
    """One user's tool calls in one quota window: ``base`` as committed in the database by every
    node at the last read (plus this node's calls then still running: a call's usage is recorded
    when it ends), and ``local``, admitted on this node since that read began."""

    window: int
    base: int = 0
    local: int = 0
    running: int = 0  # admitted here, usage not yet recorded
    read_at: float = -math.inf
    reading: bool = False


class UsageMeter:
    """Token buckets keyed by user (not by session, so reconnecting does not reset a limit), and
    usage events written without waiting. The bucket table is bounded (least recently used out)."""

    def __init__(
        self,
        store: Store,
        limits: Mapping[str, TierLimit],
        *,
        max_users: int = 100_000,
        clock: object = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        quota_reread: float = 10.0,
        quota_read_wait: float = 0.25,
        name_of: Callable[[str, str], str | None] | None = None,
        tool_stats: ToolCallStats | None = None,
    ) -> None:
        self.store = store
        self.limits = dict(limits)
        # a tier name that is not configured (a row written under another configuration, a
        # value from anywhere else) gets the most restrictive of every limit, never none
        self.strictest = strictest_limit(self.limits.values())
        self.unknown_tier_lookups = 0
        self.max_users = max_users
        self._clock = clock
        self._wall_clock = wall_clock  # quota windows are aligned to UTC
        # a user's count in the database is re-read at most every quota_reread seconds, and
        # waited for at most quota_read_wait
        self.quota_reread = quota_reread
        self.quota_read_wait = quota_read_wait
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        # user -> its initialize bucket; bounded like the request buckets
        self._initializes: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        # user -> its tool calls in the current quota window; bounded like the buckets
        self._tool_calls: collections.OrderedDict[str, _QuotaWindow] = collections.OrderedDict()
        self.quota_reads_skipped = 0
        # (method, name) -> the application's name for the rollups, None for one it does not
        # serve (given by the node from the application; without it, names are kept as given)
        self.name_of = name_of
        # tool calls for /metrics (the node gives the application's tool names)
        self.tool_stats = ToolCallStats(tiers=self.limits) if tool_stats is None else tool_stats
        self.rejected = 0
        self.quota_rejected = 0

    def limit(self, tier: str) -> TierLimit:
        """The tier's limits; for a tier that is not configured, the strictest (fails closed)."""
        found = self.limits.get(tier)
        if found is None:
            self.unknown_tier_lookups += 1
            if self.unknown_tier_lookups == 1 or self.unknown_tier_lookups % 1000 == 0:
                log.warning("tier_unknown", tier=tier[:64], lookups=self.unknown_tier_lookups)
            return self.strictest
        return found

    def max_streams(self, tier: str) -> int | None:
        return self.limit(tier).max_streams

    def max_sessions(self, tier: str) -> int | None:
        return self.limit(tier).max_sessions

    def check_initialize(self, user_id: str, tier: str) -> None:
        """Admit one new transport session of the user (``initialize_per_minute``, a minute's
        worth at once), or raise RateLimited. Counted in this node's memory, like the request
        rate (docs/scaling.md)."""
        limit = self.limit(tier)
        if limit.initialize_per_minute is None:
            return
        per_minute = limit.initialize_per_minute
        if not self._take(self._initializes, user_id, per_minute, per_minute):
            self.rejected += 1
            bucket = self._initializes[user_id]
            rate = per_minute / 60.0
            wait = max(1, math.ceil((1.0 - bucket.tokens) / rate))
            raise RateLimited(
                wait,
                limit="initialize_per_minute",
                value=per_minute,
                resets_at=self._wall_clock() + wait,
            )

    def _take(
        self,
        table: collections.OrderedDict[str, _Bucket],
        user_id: str,
        per_minute: int,
        burst: int,
    ) -> bool:
        now: float = self._clock()  # type: ignore[operator]
        bucket = table.get(user_id)
        if bucket is None:
            bucket = table[user_id] = _Bucket(float(burst), now)
            if len(table) > self.max_users:
                table.popitem(last=False)
        else:
            table.move_to_end(user_id)
        rate = per_minute / 60.0
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    async def check_tool_call(self, user_id: str, tier: str) -> None:
        """Admit one tools/call against the tier's quota, or raise QuotaExceeded.

        The count is the user's, on every node and across restarts: the calls committed in the
        window's usage rollups (read when the user is first seen in a window, then at most every
        ``quota_reread`` seconds) plus the calls admitted here since that read. The read waits at
        most ``quota_read_wait``; when the database does not answer, the node goes on counting
        on its own (docs/scaling.md). A quota per second is counted in memory only."""
        quota = self.limit(tier).tool_calls
        if quota is None:
            return
        now = self._wall_clock()
        window = int(now // quota.period)
        used = self._tool_calls.get(user_id)
        if used is None or used.window != window:
            used = self._tool_calls[user_id] = _QuotaWindow(window)
            if len(self._tool_calls) > self.max_users:
                self._tool_calls.popitem(last=False)
        self._tool_calls.move_to_end(user_id)
        since_read: float = self._clock() - used.read_at  # type: ignore[operator]
        if quota.period >= 60 and not used.reading and since_read >= self.quota_reread:
            await self._read_quota_window(user_id, quota, used)
        if used.base + used.local >= quota.calls:
            self.quota_rejected += 1
            resets = float((window + 1) * quota.period)
            raise QuotaExceeded(
                max(1, math.ceil(resets - now)),
                quota,
                used=used.base + used.local,
                resets_at=resets,
            )
        used.local += 1
        used.running += 1

    async def _read_quota_window(self, user_id: str, quota: Quota, used: _QuotaWindow) -> None:
        start = datetime.datetime.fromtimestamp(used.window * quota.period, datetime.UTC)
        end = start + datetime.timedelta(seconds=quota.period)
        before, running = used.local, used.running
        used.reading = True
        try:
            with trio.move_on_after(self.quota_read_wait):
                try:
                    count = await self.store.fetchval(_QUOTA_USED, user_id, start, end)
                except StoreUnavailable:
                    pass
                else:  # a call ending during the read may be counted twice: never too few
                    used.base = int(count) + running
                    used.local -= before
                    return
            self.quota_reads_skipped += 1
        finally:
            used.reading = False
            used.read_at = self._clock()  # type: ignore[operator]

    def check(self, user_id: str, tier: str) -> None:
        limit = self.limit(tier)
        now: float = self._clock()  # type: ignore[operator]
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(float(limit.burst), now)
            if len(self._buckets) > self.max_users:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user_id)
        rate = limit.requests_per_minute / 60.0
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            self.rejected += 1
            wait = max(1, int((1.0 - bucket.tokens) / rate + 0.999))
            raise RateLimited(
                wait,
                limit="requests_per_minute",
                value=limit.requests_per_minute,
                resets_at=self._wall_clock() + wait,
            )
        bucket.tokens -= 1.0

    def rollup_name(self, method: str, name: str | None) -> str:
        """The name a rollup row keeps: the application's name (``name_of``), OTHER_NAME for one it
        does not serve, '' for a method without a name; never longer than NAME_LENGTH."""
        if name is None:
            return ""
        if self.name_of is not None:
            known = self.name_of(method, name)
            return OTHER_NAME if known is None else known[:NAME_LENGTH]
        return name[:NAME_LENGTH]

    def record(
        self, user: UserContext, method: str, name: str | None, outcome: str, duration: float
    ) -> None:
        if method == "tools/call":
            used = self._tool_calls.get(user.user_id)
            if used is not None and used.running > 0:
                used.running -= 1
            self.tool_stats.add(name, user.tier, outcome, duration)
        now = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)
        minute = now.replace(second=0, microsecond=0)
        error = 0 if outcome == "ok" else 1
        duration_ms = duration * 1000.0
        self.store.write_nowait(
            Op(
                _RECORD,
                (
                    uuid.uuid4(),
                    user.user_id,
                    user.grant_id,
                    method,
                    # the event keeps the name as sent, cut like a rollup's: a caller's
                    # megabyte-long tool name or URI is not stored whole
                    None if name is None else name[:NAME_LENGTH],
                    user.tier,
                    outcome,
                    duration_ms,
                    now,
                    minute,
                    error,
                    self.rollup_name(method, name),
                    latency_bucket(duration_ms),
                    minute.replace(minute=0),
                ),
                _RECORD_MANY,
            )
        )
