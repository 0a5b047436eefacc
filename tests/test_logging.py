"""No secret reaches a log line: not through a field, an exception's message, a traceback, an
exception object passed as a field, or a standard-library logger; in JSON and console lines."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator

import pytest
import structlog

from server.config._logging import configure_logging
from server.config._redact import REDACTED, RedactingFormatter


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


def secret_values() -> dict[str, str]:
    return {name: f"{name}{secrets.token_hex(12)}" for name in ("access", "code", "bearer",
            "password", "client_secret", "refresh", "basic")}  # fmt: skip


def failure_message(s: dict[str, str]) -> str:
    return (
        f"callback failed: GET https://mcp.example/callback?code={s['code']}&state=x "
        f"with Authorization: Bearer {s['bearer']} (access_token={s['access']}); "
        f"store postgresql://steward:{s['password']}@db.internal/steward; "
        f"client_secret={s['client_secret']}; body {{'refresh_token': '{s['refresh']}'}}; "
        f"Authorization: Basic {s['basic']}"
    )


def nested_failure(s: dict[str, str]) -> None:
    try:
        raise KeyError(f"code={s['code']}")
    except KeyError as inner:
        raise RuntimeError(failure_message(s)) from inner


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_secrets_inside_exceptions_and_tracebacks_are_redacted(
    as_json: bool, restore_structlog: None
) -> None:
    out = io.StringIO()
    configure_logging("info", json=as_json, stream=out, cache=False)
    log = structlog.get_logger("test")
    s = secret_values()
    try:
        nested_failure(s)
    except RuntimeError as exc:
        log.exception("request_failed", path="/callback")
        log.error("request_failed_again", exc_info=exc)
        log.warning("upstream_error", error=exc, detail=str(exc))
    text = out.getvalue()
    assert text.count("Traceback (most recent call last)") == 4  # two events, each chained
    assert "RuntimeError: callback failed" in text and "KeyError" in text
    for name, value in s.items():
        assert value not in text, f"the {name} secret reached the log:\n{text}"
    assert text.count(REDACTED) >= 3 * len(s)
    if as_json:
        lines = [json.loads(line) for line in text.splitlines()]  # still valid JSON
        assert [e["event"] for e in lines] == [
            "request_failed",
            "request_failed_again",
            "upstream_error",
        ]
        assert "postgresql://steward:[redacted]@db.internal" in lines[0]["exception"]


def test_standard_library_log_records_are_redacted() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(RedactingFormatter(logging.BASIC_FORMAT))
    logger = logging.getLogger("steward-test-stdlib")
    logger.addHandler(handler)
    logger.propagate = False
    s = secret_values()
    try:
        try:
            nested_failure(s)
        except RuntimeError:
            logger.exception("hypercorn saw %s", f"token={s['access']}")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    for name, value in s.items():
        assert value not in text, f"the {name} secret reached the log:\n{text}"
