"""Structured logging: structlog events, one JSON object (or a console line) per event.

Redaction runs after a traceback is formatted and again on the rendered line, so no token, code,
secret or cookie value reaches a log whatever a caller binds or an exception's message holds.
The standard library's loggers go through the same masks.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from server.config._redact import RedactingFormatter, redact_rendered, redact_secrets

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info",
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog for the process.

    Args:
        level: the lowest level logged (debug, info, warning, error).
        json: JSON lines (the default when the stream is not a terminal) or console lines.
        stream: where events go (standard error by default).
        cache: each logger keeps its configuration after first use (a process configures
            once; a test that configures, then restores, passes False so that no module's
            logger stays bound to its stream).
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # the traceback becomes text first,
            redact_secrets,  # so that the masks cover it,
            redact_rendered(renderer),  # and the final line once more
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(RedactingFormatter(logging.BASIC_FORMAT))
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), handlers=[handler])
