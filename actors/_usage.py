"""Usage: per-user rate limits by subscription tier, and usage events for analytics."""

from __future__ import annotations

import collections
import datetime
import math
import time
import uuid
from collections.abc import Callable, Mapping

import attrs

from actors._sessions import UserContext
from actors._store import Op, Store

__all__ = ["Quota", "QuotaExceeded", "RateLimited", "TierLimit", "UsageMeter", "parse_quota"]

QUOTA_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


# One statement per request (the event and its minute's rollup), so that the requests of one
# group-commit batch are consecutive ops with the same SQL, which the store sends as one
# executemany; a data-modifying WITH runs exactly once whether or not its output is read.
_RECORD = (
    "WITH event AS (INSERT INTO usage_events (event_id, user_id, grant_id, method, name, tier, outcome, duration_ms, occurred_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING) "
    "INSERT INTO usage_rollups (user_id, minute, method, calls, errors) VALUES ($2, $10, $4, 1, $11) "
    "ON CONFLICT (user_id, minute, method) DO UPDATE SET calls = usage_rollups.calls + 1, errors = usage_rollups.errors + EXCLUDED.errors"
)


class RateLimited(Exception):
    """The user's tier allows no more requests now; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited; retry after {retry_after}s")
        self.retry_after = retry_after


class QuotaExceeded(RateLimited):
    """The user's tier allows no more tool calls in this quota period (until ``retry_after``)."""

    def __init__(self, retry_after: int, quota: Quota) -> None:
        super().__init__(retry_after)
        self.quota = quota


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


@attrs.define
class _Bucket:
    tokens: float
    stamp: float


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
    ) -> None:
        self.store = store
        self.limits = dict(limits)
        self.max_users = max_users
        self._clock = clock
        self._wall_clock = wall_clock  # quota windows are aligned to UTC
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        # user -> (window index, tool calls admitted in it); bounded like the buckets
        self._tool_calls: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self.rejected = 0
        self.quota_rejected = 0

    def max_streams(self, tier: str) -> int | None:
        limit = self.limits.get(tier)
        return None if limit is None else limit.max_streams

    def check_tool_call(self, user_id: str, tier: str) -> None:
        """Admit one tools/call against the tier's quota, or raise QuotaExceeded. Counted per user
        on this node (docs/scaling.md says what holds across nodes)."""
        limit = self.limits.get(tier)
        quota = None if limit is None else limit.tool_calls
        if quota is None:
            return
        now = self._wall_clock()
        window = int(now // quota.period)
        seen, used = self._tool_calls.get(user_id, (window, 0))
        if seen != window:
            used = 0
        if used >= quota.calls:
            self.quota_rejected += 1
            raise QuotaExceeded(max(1, math.ceil((window + 1) * quota.period - now)), quota)
        self._tool_calls[user_id] = (window, used + 1)
        self._tool_calls.move_to_end(user_id)
        if len(self._tool_calls) > self.max_users:
            self._tool_calls.popitem(last=False)

    def check(self, user_id: str, tier: str) -> None:
        limit = self.limits.get(tier)
        if limit is None:
            return
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
            raise RateLimited(max(1, int((1.0 - bucket.tokens) / rate + 0.999)))
        bucket.tokens -= 1.0

    def record(
        self, user: UserContext, method: str, name: str | None, outcome: str, duration: float
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        minute = now.replace(second=0, microsecond=0)
        error = 0 if outcome == "ok" else 1
        self.store.write_nowait(
            Op(
                _RECORD,
                (
                    uuid.uuid4(),
                    user.user_id,
                    user.grant_id,
                    method,
                    name,
                    user.tier,
                    outcome,
                    duration * 1000.0,
                    now,
                    minute,
                    error,
                ),
            )
        )
