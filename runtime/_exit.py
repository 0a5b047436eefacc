"""Exit records and the one function that classifies how an actor ended."""

from __future__ import annotations

import asyncio
import enum

import attrs
import trio

from runtime._errors import Shutdown, Unavailable

__all__ = ["Exit", "ExitKind", "classify_exit"]


class ExitKind(enum.Enum):
    NORMAL = "normal"  # the actor returned
    SHUTDOWN = "shutdown"  # it ended on purpose (Shutdown raised, or its own scope cancelled)
    UNAVAILABLE = "unavailable"  # it raised Unavailable: a dependency is away
    ERROR = "error"  # anything else


@attrs.frozen
class Exit:
    """How one incarnation of an actor ended."""

    kind: ExitKind
    reason: str | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)

    def describe(self) -> str:
        if self.kind in (ExitKind.ERROR, ExitKind.UNAVAILABLE) and self.error is not None:
            if self.kind is ExitKind.UNAVAILABLE:
                return f"unavailable: {self.error}"
            return f"error: {type(self.error).__name__}: {self.error}"
        if self.reason:
            return f"{self.kind.value}: {self.reason}"
        return self.kind.value


NORMAL = Exit(ExitKind.NORMAL)


def classify_exit(
    error: BaseException | None,
    *,
    own_cancel: bool = False,
    own_reason: str | None = None,
) -> Exit | None:
    """Classify how an actor ended (see docs/runtime.md, "Exit classification").

    Args:
        error: what the actor raised, or None when it returned (or its own scope absorbed a cancel).
        own_cancel: the actor's own per-incarnation scope was cancelled (a stop by its
            supervisor); a cancel that surfaces as ``asyncio.CancelledError`` is then ours.
        own_reason: the reason given to that cancel.

    Returns:
        The exit, or None when the actor was cancelled by an *enclosing* scope or the process is
        being interrupted: that is not an exit, the caller re-raises and never restarts.
    """
    if error is None:
        if own_cancel:
            return Exit(ExitKind.SHUTDOWN, own_reason or "shutdown")
        return NORMAL
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return None
    if isinstance(error, BaseExceptionGroup):
        interrupt, _ = error.split((KeyboardInterrupt, SystemExit))
        if interrupt is not None:
            return None
        _, rest = error.split(trio.Cancelled)
        if rest is None:
            return Exit(ExitKind.SHUTDOWN, own_reason or "shutdown") if own_cancel else None
        leaves = _leaves(rest)
        if own_cancel and all(isinstance(leaf, asyncio.CancelledError) for leaf in leaves):
            return Exit(ExitKind.SHUTDOWN, own_reason or "shutdown")
        reasons = [leaf.reason for leaf in leaves if isinstance(leaf, Shutdown)]
        if len(reasons) == len(leaves):
            return Exit(ExitKind.SHUTDOWN, "; ".join(reasons))
        first = leaves[0] if len(leaves) == 1 else rest
        if all(isinstance(leaf, Unavailable) for leaf in leaves):
            return Exit(ExitKind.UNAVAILABLE, None, first)
        return Exit(ExitKind.ERROR, None, first)
    if isinstance(error, trio.Cancelled):
        if own_cancel:
            return Exit(ExitKind.SHUTDOWN, own_reason or "shutdown")
        return None
    if isinstance(error, Shutdown):
        return Exit(ExitKind.SHUTDOWN, error.reason)
    if isinstance(error, Unavailable):
        return Exit(ExitKind.UNAVAILABLE, None, error)
    if isinstance(error, asyncio.CancelledError):
        # the asyncio bridge turns our own stop into an asyncio cancel: that is a shutdown;
        # one that leaked through the bridge on its own is not our cancel, so an error
        if own_cancel:
            return Exit(ExitKind.SHUTDOWN, own_reason or "shutdown")
        return Exit(ExitKind.ERROR, None, error)
    return Exit(ExitKind.ERROR, None, error)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
