"""Bounded mailboxes and actor handles: send, send_nowait, ask, wait_exited."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

import attrs
import trio

from runtime._errors import ActorExited
from runtime._exit import Exit, ExitKind, classify_exit

__all__ = ["ActorHandle", "Mailbox", "MailboxStatistics", "Reply", "open_mailbox"]

Msg = TypeVar("Msg")
T = TypeVar("T")


@attrs.frozen
class MailboxStatistics:
    name: str
    queued: int
    capacity: int
    sent: int
    rejected: int  # send_nowait calls refused because the mailbox was full
    exited: bool


class Reply(Generic[T]):
    """The answer slot of one ``ask``: the actor calls ``set(value)`` or ``fail(error)`` once."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()


class ActorHandle(Generic[Msg]):
    """The public face of an actor with a mailbox."""

    def __init__(self, name: str, send: trio.MemorySendChannel[Msg], capacity: int) -> None:
        self.name = name
        self._send = send
        self._capacity = capacity
        self._sent = 0
        self._rejected = 0
        self._exited = trio.Event()
        self._exit: Exit | None = None

    async def send(self, msg: Msg) -> None:
        """Deliver ``msg``, waiting for room. Raises ActorExited if the actor is gone."""
        if self._exited.is_set():
            await trio.lowlevel.checkpoint()
            raise ActorExited(f"actor {self.name!r} has exited")
        try:
            await self._send.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorExited(f"actor {self.name!r} has exited") from None
        self._sent += 1

    def send_nowait(self, msg: Msg) -> None:
        """Deliver ``msg`` now. Raises trio.WouldBlock when the mailbox is full."""
        if self._exited.is_set():
            raise ActorExited(f"actor {self.name!r} has exited")
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            self._rejected += 1
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorExited(f"actor {self.name!r} has exited") from None
        self._sent += 1

    async def ask(self, make_msg: Callable[[Reply[T]], Msg]) -> T:
        """Send a request built around a reply slot and wait for the answer.

        Raises:
            ActorExited: the actor exited before answering.
        """
        reply: Reply[T] = Reply()
        await self.send(make_msg(reply))
        async with trio.open_nursery() as nursery:

            async def watch_exit() -> None:
                await self._exited.wait()
                reply.fail(ActorExited(f"actor {self.name!r} exited before answering"))

            nursery.start_soon(watch_exit)
            await reply._event.wait()
            nursery.cancel_scope.cancel()
        if reply._error is not None:
            raise reply._error
        return reply._value  # type: ignore[return-value]

    async def wait_exited(self) -> Exit:
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def statistics(self) -> MailboxStatistics:
        stats = self._send.statistics()
        return MailboxStatistics(
            self.name,
            stats.current_buffer_used,
            self._capacity,
            self._sent,
            self._rejected,
            self._exited.is_set(),
        )

    def _mark_exited(self, exit: Exit) -> None:
        if not self._exited.is_set():
            self._exit = exit
            self._exited.set()


class Mailbox(Generic[Msg]):
    """``with open_mailbox(name, capacity) as (handle, inbox):`` around an actor's life.

    Leaving the block closes the mailbox and resolves ``handle.wait_exited()`` with how the
    block was left (a cancel counts as a shutdown). An actor that gives ``handle`` to
    ``task_status.started`` without the block is covered by its supervisor instead, which
    resolves ``wait_exited()`` with the incarnation's classified exit.
    """

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            msg = f"mailbox {name!r}: capacity must be at least 1, got {capacity}"
            raise ValueError(msg)
        send, self.inbox = trio.open_memory_channel[Msg](capacity)
        self.handle: ActorHandle[Msg] = ActorHandle(name, send, capacity)
        self._send = send

    def __enter__(self) -> tuple[ActorHandle[Msg], trio.MemoryReceiveChannel[Msg]]:
        return self.handle, self.inbox

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._send.close()
        self.inbox.close()
        exit = classify_exit(exc)
        if exit is None:
            exit = Exit(ExitKind.SHUTDOWN, "cancelled")
        self.handle._mark_exited(exit)


def open_mailbox(name: str, capacity: int) -> Mailbox[object]:
    """A bounded mailbox for an actor; see ``Mailbox``."""
    return Mailbox(name, capacity)
