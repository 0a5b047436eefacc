"""What a user reads when a tier's limit refuses a request: which limit, its value, and when it
resets (docs/security.md, "Tiers"). A quota resets at the end of its UTC-aligned window, the same
instant on every node; a rate limit when this node's bucket holds a token again."""

from __future__ import annotations

import datetime
from typing import Any

from actors import QuotaExceeded, RateLimited

__all__ = ["refusal"]

_SENTENCES = {
    "requests_per_minute": "the {tier} tier allows {value} requests per minute per account",
    "initialize_per_minute": "the {tier} tier allows {value} new MCP sessions per minute per "
    "account",
}


def _instant(epoch: float) -> str:
    when = datetime.datetime.fromtimestamp(round(epoch), datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


def refusal(tier: str, exc: RateLimited) -> tuple[str, dict[str, Any]]:
    """The JSON-RPC error's message and data for ``exc``: ``limit`` (the tier's setting),
    ``value``, ``tier`` and ``resetsAt`` (UTC, ISO 8601); ``retryAfter`` is added by the caller."""
    resets = _instant(exc.resets_at)
    data: dict[str, Any] = {
        "limit": exc.limit,
        "value": exc.value,
        "tier": tier,
        "resetsAt": resets,
    }
    if isinstance(exc, QuotaExceeded):
        quota = exc.quota
        data["quota"] = str(quota)
        message = (
            f"tool-call quota of the {tier} tier ({quota}) used up: {quota.calls} tool calls per "
            f"{quota.unit} (tool_calls); it resets at {resets}, retry after {exc.retry_after}s"
        )
        return message, data
    sentence = _SENTENCES.get(exc.limit, "the {tier} tier's {limit} is {value}").format(
        tier=tier, limit=exc.limit, value=exc.value
    )
    message = (
        f"rate limit of the {tier} tier exceeded: {sentence} ({exc.limit}); "
        f"retry after {exc.retry_after}s, at {resets}"
    )
    return message, data
