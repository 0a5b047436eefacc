"""Tool calls counted in this node's memory for ``/metrics``: calls by tool, tier and outcome, and
a duration histogram by tool and tier, with the label values bounded (names past the bound, and
names the application does not serve, count as ``other``)."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable

import attrs

__all__ = [
    "BUCKETS",
    "BUCKET_COLUMNS",
    "LATENCY_BOUNDS_MS",
    "OTHER_LABEL",
    "ToolCallStats",
    "latency_bucket",
]

OTHER_LABEL = "other"
# A request's duration falls in the first bucket whose bound (ms) it does not pass, or in the last
# one (b11, above 10 s). Fixed, so that buckets of any rows add up: p50 and p99 of any window
# (actors/_usage_query.py). Changing them needs a migration of the rollup tables.
LATENCY_BOUNDS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
BUCKETS = len(LATENCY_BOUNDS_MS) + 1
BUCKET_COLUMNS = tuple(f"b{i}" for i in range(BUCKETS))


def latency_bucket(duration_ms: float) -> int:
    """The index of the bucket a duration in milliseconds falls in (0 … BUCKETS - 1)."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, duration_ms)


@attrs.define
class _Histogram:
    buckets: list[int] = attrs.field(factory=lambda: [0] * BUCKETS)
    count: int = 0
    seconds: float = 0.0


class ToolCallStats:
    """Counts of the tool calls of one node. ``known`` are the names the application serves; at
    most ``max_names`` distinct tool names and ``max_tiers`` tiers get a label of their own."""

    def __init__(
        self, known: Iterable[str] = (), *, tiers: Iterable[str] = (), max_names: int = 100
    ) -> None:
        self.known = frozenset(known)
        self.tiers = frozenset(tiers)
        self.max_names = max_names
        self.calls: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self._names: set[str] = set()

    def label(self, name: str | None) -> str:
        """The tool's label: its name when the application serves it and the bound allows."""
        if name is None or (self.known and name not in self.known):
            return OTHER_LABEL
        if name in self._names:
            return name
        if len(self._names) >= self.max_names:
            return OTHER_LABEL
        self._names.add(name)
        return name

    def tier_label(self, tier: str) -> str:
        return tier if not self.tiers or tier in self.tiers else OTHER_LABEL

    def add(self, name: str | None, tier: str, outcome: str, seconds: float) -> None:
        tool, tier = self.label(name), self.tier_label(tier)
        self.calls[(tool, tier, outcome)] += 1
        hist = self.durations.get((tool, tier))
        if hist is None:
            hist = self.durations[(tool, tier)] = _Histogram()
        hist.buckets[latency_bucket(seconds * 1000.0)] += 1
        hist.count += 1
        hist.seconds += seconds

    @staticmethod
    def bounds_seconds() -> tuple[float, ...]:
        return tuple(b / 1000.0 for b in LATENCY_BOUNDS_MS)
