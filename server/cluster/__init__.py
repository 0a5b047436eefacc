"""Across nodes: the relay that carries a request or an event to the node holding the stream."""

from __future__ import annotations

from server.cluster._relay import Relay, RelayStatistics

__all__ = ["Relay", "RelayStatistics"]
