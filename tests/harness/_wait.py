"""Waiting for an effect: poll its condition, bounded, instead of sleeping a fixed time."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

__all__ = ["wait_until"]

POLL = 0.02  # seconds between two looks at the condition


async def wait_until(
    condition: Callable[[], object] | Callable[[], Awaitable[object]],
    *,
    within: float = 10.0,
    every: float = POLL,
    what: str = "",
) -> None:
    """Return as soon as ``condition()`` (a function or a coroutine function) is truthy; raise
    ``trio.TooSlowError`` naming ``what`` if it is still false after ``within`` seconds."""
    try:
        with trio.fail_after(within):
            while True:
                result = condition()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await trio.sleep(every)
    except trio.TooSlowError:
        wanted = what or getattr(condition, "__qualname__", repr(condition))
        msg = f"still not true after {within} s: {wanted}"
        raise trio.TooSlowError(msg) from None
