"""``/metrics`` for tool calls: ``steward_tool_calls_total{tool,tier,outcome}`` and the histogram
``steward_tool_call_duration_seconds{tool,tier}``, read from the usage meter's counts when scraped.
Label values are bounded: a tool the application does not serve, a tool past the bound of
distinct names, and a tier that is not configured count as ``other`` (actors/_usage_stats.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from actors import ToolCallStats

__all__ = ["tool_call_families"]


def tool_call_families(stats: ToolCallStats) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "steward_tool_calls",
        "tools/call requests by tool, tier and outcome (ok, error, …)",
        labels=["tool", "tier", "outcome"],
    )
    for (tool, tier, outcome), n in sorted(stats.calls.items()):
        calls.add_metric([tool, tier, outcome], n)
    yield calls
    durations = HistogramMetricFamily(
        "steward_tool_call_duration_seconds",
        "tools/call durations by tool and tier",
        labels=["tool", "tier"],
    )
    bounds = stats.bounds_seconds()
    for (tool, tier), hist in sorted(stats.durations.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, hist.buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", hist.count))
        durations.add_metric([tool, tier], buckets, sum_value=hist.seconds)
    yield durations
