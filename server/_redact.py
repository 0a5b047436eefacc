"""A structlog processor that keeps secrets out of every log event."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

__all__ = ["REDACTED", "redact_secrets"]

REDACTED = "[redacted]"

# field names whose values are secrets wherever they appear
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|cookie|code_verifier|verifier|^code$|csrf|api_key|apikey|dsn|database_url|key$)",
    re.IGNORECASE,
)
# secrets embedded in free text: bearer tokens, URL credentials, query parameters carrying them
_IN_TEXT = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (
        re.compile(
            r"(?i)\b((?:access_token|refresh_token|code|code_verifier|client_secret|token|state)=)[^&\s\"']+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@"), r"\1" + REDACTED + "@"),
]
_KEEP = frozenset({"token_kind", "event", "kind", "level", "timestamp", "logger"})


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return value
    if isinstance(value, str):
        for pattern, repl in _IN_TEXT:
            value = pattern.sub(repl, value)
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if _is_secret_key(k) else _scrub(v, depth + 1)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _KEEP and bool(_SECRET_KEYS.search(key))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace secret-named fields and secrets inside text with ``[redacted]``."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict
