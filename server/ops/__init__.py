"""What an operator sees of a running node: the admin view and API (with its usage routes), and
Prometheus metrics (with the tool calls' counts and durations)."""

from __future__ import annotations

from server.ops._admin import AdminApi
from server.ops._metrics import NodeCollector, RequestCounter, new_registry, render_metrics
from server.ops._usage_api import UsageApi

__all__ = [
    "AdminApi",
    "NodeCollector",
    "RequestCounter",
    "UsageApi",
    "new_registry",
    "render_metrics",
]
