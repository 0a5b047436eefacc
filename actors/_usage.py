"""Usage: per-user rate limits by subscription tier, and usage events for analytics."""

from __future__ import annotations

import collections
import datetime
import time
import uuid
from collections.abc import Mapping

import attrs

from actors._sessions import UserContext
from actors._store import Op, Store

__all__ = ["RateLimited", "TierLimit", "UsageMeter"]


class RateLimited(Exception):
    """The user's tier allows no more requests now; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited; retry after {retry_after}s")
        self.retry_after = retry_after


@attrs.frozen
class TierLimit:
    requests_per_minute: int
    burst: int


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
    ) -> None:
        self.store = store
        self.limits = dict(limits)
        self.max_users = max_users
        self._clock = clock
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self.rejected = 0

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
                "INSERT INTO usage_events (event_id, user_id, grant_id, method, name, tier, outcome, duration_ms, occurred_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
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
                ),
            ),
            Op(
                "INSERT INTO usage_rollups (user_id, minute, method, calls, errors) VALUES ($1, $2, $3, 1, $4) "
                "ON CONFLICT (user_id, minute, method) DO UPDATE SET calls = usage_rollups.calls + 1, errors = usage_rollups.errors + EXCLUDED.errors",
                (user.user_id, minute, method, error),
            ),
        )
