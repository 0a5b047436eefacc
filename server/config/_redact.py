"""Keeping secrets out of every log line: a structlog processor for the event's fields, and the
same masks for the final rendered text (tracebacks and exception messages included)."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["REDACTED", "RedactingFormatter", "redact_rendered", "redact_secrets", "redact_text"]

REDACTED = "[redacted]"

# field names whose values are secrets wherever they appear
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|cookie|code_verifier|verifier|^code$|csrf|api_key|apikey|dsn|database_url|key$)",
    re.IGNORECASE,
)
_SECRET_PARAMS = (
    r"access_token|refresh_token|id_token|code|code_verifier|client_secret|token|state|password"
)
# secrets embedded in free text: bearer tokens, URL credentials, query parameters and quoted
# key-value pairs carrying them. A value never takes a backslash or a quote, so that masking a
# JSON-rendered line keeps it valid JSON.
_IN_TEXT = [
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(basic\s+)[A-Za-z0-9+/=]{8,}"), r"\1" + REDACTED),
    (
        re.compile(rf"(?i)\b((?:{_SECRET_PARAMS})=)[^&\s\"'\\);,]+"),
        r"\1" + REDACTED,
    ),
    (
        re.compile(rf"(?i)(['\"](?:{_SECRET_PARAMS}|secret)['\"]\s*:\s*['\"])[^'\"\\]+"),
        r"\1" + REDACTED,
    ),
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s\"'\\]+:)[^@\s\"'\\/]+@"),
        r"\1" + REDACTED + "@",
    ),
]
_KEEP = frozenset({"token_kind", "event", "kind", "level", "timestamp", "logger"})


def redact_text(text: str) -> str:
    """``text`` with every secret the masks recognise replaced by ``[redacted]``."""
    for pattern, repl in _IN_TEXT:
        text = pattern.sub(repl, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return value
    if isinstance(value, BaseException):  # rendered with its message: mask that too
        value = repr(value)
    if isinstance(value, str):
        return redact_text(value)
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
    """Replace secret-named fields and secrets inside text with ``[redacted]``. Runs after
    ``format_exc_info``, so that the ``exception`` text (the traceback) is masked too."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def redact_rendered(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    """``renderer`` whose rendered line is masked once more: whatever reached the text by a
    path the field processor did not see is caught there."""

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        line = renderer(logger, method, event_dict)
        return redact_text(line) if isinstance(line, str) else line

    return render


class RedactingFormatter(logging.Formatter):
    """A ``logging`` formatter (for the standard library's loggers: Hypercorn, asyncpg) whose
    whole output, traceback included, is masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
