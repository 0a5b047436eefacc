"""``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz``.

Everything but the request counter is read when scraped, so the request path pays one dict
increment and nothing else.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from actors import AuthService, SessionManager, Store, UsageMeter
from runtime import TreeNode, tree
from server.http import AddressLimiter
from server.ops._usage_metrics import tool_call_families

__all__ = ["NodeCollector", "Reporting", "RequestCounter", "new_registry", "render_metrics"]


class Reporting(Protocol):
    """A part of the edge that reports a statistics record (the streamable-HTTP transport, the
    relay); its fields are read by name (the tables below)."""

    def statistics(self) -> object: ...


class RequestCounter:
    """HTTP requests by route and status."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str, int]] = collections.Counter()

    def add(self, method: str, route: str, status: int) -> None:
        self.counts[(method, route, status)] += 1


def _restarts(node: TreeNode, out: collections.Counter[str]) -> None:
    for child in node.children:
        kind = (
            child.id
            if child.id.count("-") != 4
            else ("session" if node.id == "sessions" else "connection")
        )
        if child.restarts:
            out[kind] += child.restarts
        _restarts(child, out)


# McpHttpStatistics fields exported as gauges: (metric, help, field)
_MCP_GAUGES = (
    ("steward_mcp_live_exchanges", "requests being answered", "live_exchanges"),
    (
        "steward_mcp_parked_requests",
        "2026-era requests awaiting the client's input",
        "parked_requests",
    ),
    (
        "steward_mcp_pending_client_answers",
        "server requests awaiting the client's answer",
        "pending_client_answers",
    ),
    (
        "steward_mcp_resumable_streams",
        "live request streams resumable on this node",
        "resumable_streams",
    ),
    (
        "steward_stream_fast_path",
        "1 while idle streams may end in the caller's step (server/http/_stream_end.py), 0 once off",
        "stream_fast_path",
    ),
)

_MCP_COUNTERS = (
    (
        "steward_mcp_events_stored",
        "stream events handed to the store for resumption",
        "events_stored",
    ),
    (
        "steward_stream_ends_direct",
        "streams whose final event the fast path wrote in the caller's step",
        "stream_ends_direct",
    ),
    (
        "steward_stream_fast_path_fallbacks",
        "stream ends that raised in the fast path and went through ASGI",
        "stream_fast_path_fallbacks",
    ),
)
# RelayStatistics fields (cross-node delivery, server/cluster/_relay.py)
_RELAY_GAUGES = (
    (
        "steward_relay_waiting",
        "requests forwarded to another node, awaiting their answer here",
        "waiting",
    ),
)
_RELAY_COUNTERS = (
    ("steward_relay_delivered", "outbox messages delivered here", "delivered"),
    ("steward_relay_forwarded", "requests forwarded to another node", "forwarded"),
    ("steward_relay_served", "requests forwarded here from another node", "served"),
    ("steward_relay_reconnects", "reconnects of the relay's LISTEN connection", "reconnects"),
    ("steward_relay_wakes_dropped", "wake-ups past the relay's buffer", "wakes_dropped"),
    ("steward_relay_owners_lost", "forwarded requests whose node died as they ran", "owners_lost"),
)


class NodeCollector:
    """The metrics of one node, read from the services that hold them when scraped."""

    def __init__(
        self,
        requests: RequestCounter,
        *,
        sessions: SessionManager,
        auth: AuthService,
        usage: UsageMeter,
        store: Store,
        limiter: AddressLimiter | None,
        mcp: Reporting,
        relay: Reporting,
    ) -> None:
        self.requests = requests
        self.sessions = sessions
        self.auth = auth
        self.usage = usage
        self.store = store
        self.limiter = limiter
        self.mcp = mcp
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily(
            "steward_http_requests",
            "HTTP requests by method, route and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), n in self.requests.counts.items():
            req.add_metric([method, route, str(status)], n)
        yield req
        sessions = GaugeMetricFamily(
            "steward_live_sessions", "live user sessions on this node by tier", labels=["tier"]
        )
        streams = GaugeMetricFamily(
            "steward_live_streams",
            "live SSE streams on this node by tier and kind",
            labels=["tier", "kind"],
        )
        by_tier: collections.Counter[str] = collections.Counter()
        by_stream: collections.Counter[tuple[str, str]] = collections.Counter()
        for session in self.sessions.live():
            by_tier[session.context.tier] += 1
            for conn in session.connections():
                by_stream[(session.context.tier, conn.kind)] += 1
        for tier, n in by_tier.items():
            sessions.add_metric([tier], n)
        for (tier, kind), n in by_stream.items():
            streams.add_metric([tier, kind], n)
        yield sessions
        yield streams
        refreshes = CounterMetricFamily(
            "steward_upstream_refreshes", "upstream token refreshes by outcome", labels=["outcome"]
        )
        for refresh, n in self.sessions.refreshes.items():
            refreshes.add_metric([refresh], n)
        yield refreshes
        unmapped = CounterMetricFamily(
            "steward_tier_claim_unmapped",
            "identity provider tier claims that mapped to no tier (missing or unknown), by what "
            "followed (the default tier, or a refusal)",
            labels=["reason", "outcome"],
        )
        for (reason, outcome), n in self.auth.tier_unmapped.items():
            unmapped.add_metric([reason, outcome], n)
        yield unmapped
        rereads = CounterMetricFamily(
            "steward_tier_rereads",
            "tier re-reads after upstream refreshes, by outcome (ok, failed, skipped, refused)",
            labels=["outcome"],
        )
        for reread, n in self.sessions.tier_rereads.items():
            rereads.add_metric([reread], n)
        yield rereads
        yield CounterMetricFamily(
            "steward_tier_unknown_lookups",
            "limit lookups of a tier that is not configured (answered with the strictest limits)",
            value=self.usage.unknown_tier_lookups,
        )
        stats = self.store.statistics()
        yield GaugeMetricFamily(
            "steward_store_queue_depth", "writes waiting for a commit", value=stats.queue_depth
        )
        yield GaugeMetricFamily(
            "steward_store_journal_depth",
            "write groups spilled to the journal",
            value=stats.journal_depth,
        )
        yield CounterMetricFamily(
            "steward_store_batches",
            "transactions committed by the writer",
            value=stats.batches_committed,
        )
        yield CounterMetricFamily("steward_store_ops", "ops committed", value=stats.ops_committed)
        yield GaugeMetricFamily(
            "steward_store_batch_size_mean", "mean ops per transaction", value=stats.mean_batch_size
        )
        latency = GaugeMetricFamily(
            "steward_store_commit_latency_ms",
            "commit latency over the recent window",
            labels=["quantile"],
        )
        latency.add_metric(["0.5"], stats.commit_latency_p50_ms)
        latency.add_metric(["0.99"], stats.commit_latency_p99_ms)
        yield latency
        yield GaugeMetricFamily(
            "steward_store_connected",
            "1 when the store is connected to PostgreSQL",
            value=1 if stats.connected else 0,
        )
        restarts = CounterMetricFamily(
            "steward_actor_restarts", "restarts of live actors by kind", labels=["kind"]
        )
        counted: collections.Counter[str] = collections.Counter()
        for root in tree():
            _restarts(root, counted)
        for kind, n in counted.items():
            restarts.add_metric([kind], n)
        yield restarts
        yield CounterMetricFamily(
            "steward_rate_limited",
            "requests refused by tier rate limits",
            value=self.usage.rejected,
        )
        yield CounterMetricFamily(
            "steward_quota_exceeded",
            "tool calls refused by tier tool-call quotas",
            value=self.usage.quota_rejected,
        )
        yield from tool_call_families(self.usage.tool_stats)
        limiter = self.limiter
        if limiter is not None:
            limited = CounterMetricFamily(
                "steward_address_limited",
                "anonymous requests refused by the limits per client address, by kind",
                labels=["kind"],
            )
            for kind, n in limiter.refused.items():
                limited.add_metric([kind], n)
            yield limited
            yield GaugeMetricFamily(
                "steward_address_limit_entries",
                "client addresses remembered by the limits per address (bounded)",
                value=len(limiter),
            )
        mcp = self.mcp.statistics()
        yield from _families(mcp, _MCP_GAUGES, GaugeMetricFamily)
        yield from _families(mcp, _MCP_COUNTERS, CounterMetricFamily)
        relay = self.relay.statistics()
        yield from _families(relay, _RELAY_COUNTERS, CounterMetricFamily)
        yield from _families(relay, _RELAY_GAUGES, GaugeMetricFamily)


def _families(
    record: object,
    table: tuple[tuple[str, str, str], ...],
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
) -> Iterator[Metric]:
    """One metric per ``(metric, help, field)`` of ``table``, valued from ``record``'s field."""
    for name, help_text, field in table:
        yield family(name, help_text, value=getattr(record, field))


def render_metrics(registry: CollectorRegistry) -> bytes:
    out: bytes = generate_latest(registry)
    return out


def new_registry(collector: NodeCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
