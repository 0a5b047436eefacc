"""What an operator sees of a running node: the admin view and API, and Prometheus metrics."""

from __future__ import annotations

from server.ops._admin import AdminApi
from server.ops._metrics import NodeCollector, RequestCounter, new_registry, render_metrics

__all__ = ["AdminApi", "NodeCollector", "RequestCounter", "new_registry", "render_metrics"]
