"""A stream's outbox: bounded, read in order by one pump, drained then ended once closed."""

from __future__ import annotations

import trio
import trio.testing

from actors.sessions import Outbox, StreamEvent


def event(n: int) -> StreamEvent:
    return StreamEvent({"n": n})


async def drain(box: Outbox) -> list[object]:
    """What a pump takes from ``box``, in order, until it is closed and empty."""
    taken: list[object] = []
    while True:
        while (e := box.take()) is not None:
            taken.append(e.data)
        if box.closed:
            return taken
        await box.wait(None)


async def test_the_outbox_is_bounded_and_keeps_order() -> None:
    box = Outbox(2)
    assert box.put(event(1)) and box.put(event(2))
    assert not box.put(event(3))  # full: refused, nothing queued
    assert len(box) == 2
    box.close()
    assert box.put(event(4))  # a closed outbox takes nothing more, silently
    assert await drain(box) == [{"n": 1}, {"n": 2}]  # drained, then the end


async def test_a_waiting_reader_wakes_for_each_event_and_ends_on_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Outbox(8)
    got: list[object] = []

    async def read() -> None:
        while True:
            while (e := box.take()) is not None:
                got.append(e.data)
            if box.closed:
                return
            await box.wait(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()  # the reader waits on an empty outbox
        assert got == []
        box.put(event(1))
        await trio.testing.wait_all_tasks_blocked()  # and has taken the event
        assert got == [{"n": 1}]
        box.put(event(2))
        box.close()
    assert got == [{"n": 1}, {"n": 2}]


async def test_a_cancelled_reader_leaves_the_outbox_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Outbox(4)
    with trio.move_on_after(1):
        await drain(box)
        raise AssertionError("nothing was queued")
    box.put(event(1))
    box.close()
    assert await drain(box) == [{"n": 1}]
