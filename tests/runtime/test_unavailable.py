"""A dependency being away is not a crash loop: the exit kind UNAVAILABLE (docs/runtime.md).

Each test runs an "outage" far longer than every intensity window of the tree under it and
counts the restarts the counted rule would have seen: more than the intensity, yet no supervisor
gives up.

The ``trio.sleep`` calls in these tests run on the autojump ``MockClock``: each passes virtual
time on purpose (a worker's lifetime, a restart window, a backoff, an outage); none waits for an
effect, which ``trio.testing.wait_all_tasks_blocked()`` does where one is awaited.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime import (
    UNAVAILABLE_BACKOFF,
    Backoff,
    ChildExited,
    ChildRestarted,
    ChildSpec,
    ExitKind,
    IntensityExceeded,
    IntensityExceededError,
    Restart,
    Strategy,
    Supervisor,
    SupervisorHandle,
    Unavailable,
    classify_exit,
    subscribe_events,
)
from tests.runtime.test_supervisor import drain


class DatabaseAway(Unavailable):
    pass


class Dependency:
    """A dependency that is away until ``back`` is set; workers that need it raise on start."""

    def __init__(self) -> None:
        self.back = trio.Event()
        self.starts = 0

    async def worker(self, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        task_status.started(self)
        await trio.sleep(0.01)
        if not self.back.is_set():
            raise DatabaseAway("the database is unreachable")
        await trio.sleep_forever()


def test_classify_exit_tells_unavailable_from_error() -> None:
    away = DatabaseAway("gone")
    assert classify_exit(away) is not None
    exit = classify_exit(away)
    assert exit is not None and exit.kind is ExitKind.UNAVAILABLE and exit.error is away
    assert exit.describe() == "unavailable: gone"
    grouped = classify_exit(BaseExceptionGroup("g", [away, trio.Cancelled._create()]))
    assert grouped is not None and grouped.kind is ExitKind.UNAVAILABLE
    mixed = classify_exit(ExceptionGroup("g", [away, ValueError("bug")]))
    assert mixed is not None and mixed.kind is ExitKind.ERROR
    plain = classify_exit(ValueError("bug"))
    assert plain is not None and plain.kind is ExitKind.ERROR


async def test_an_outage_past_every_window_is_survived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An hour-long outage under intensity=2 in 10 s: restarts keep their backoff, none is
    counted, no supervisor escalates; once the dependency is back the child stays up."""
    dep = Dependency()
    backoff = Backoff(min=0.1, max=2.0, jitter=0.0, reset_after=30.0)
    spec = ChildSpec("notifier", dep.worker, backoff=backoff)
    with subscribe_events(100_000) as sub:
        async with trio.open_nursery() as nursery:
            handle: SupervisorHandle = await nursery.start(
                Supervisor("root", [spec], intensity=2, period=10.0).run
            )
            await trio.sleep(3600)
            dep.back.set()
            await trio.sleep(30)
            (info,) = handle.which_children()
            assert info.state == "running"
            await handle.stop()
        events = drain(sub)
    restarts = [e for e in events if isinstance(e, ChildRestarted)]
    exits = [
        e for e in events if isinstance(e, ChildExited) and e.exit.kind is ExitKind.UNAVAILABLE
    ]
    assert not any(isinstance(e, IntensityExceeded) for e in events)
    assert len(exits) == len(restarts)
    # the counted rule would have given up: more than `intensity` restarts in one window
    first_window = [e for e in restarts if e.at < restarts[0].at + 10.0]
    assert len(first_window) > 2
    # and the backoff still spaces them (capped at its max): about one per 2 s over the hour
    assert 1700 < len(restarts) < 1900
    assert max(e.delay for e in restarts) == 2.0


async def test_without_a_backoff_of_its_own_the_supervisor_spaces_the_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dep = Dependency()
    with subscribe_events(10_000) as sub:
        async with trio.open_nursery() as nursery:
            handle: SupervisorHandle = await nursery.start(
                Supervisor("root", [ChildSpec("relay", dep.worker)], intensity=0).run
            )
            await trio.sleep(120)
            await handle.stop()
        delays = [e.delay for e in drain(sub) if isinstance(e, ChildRestarted)]
    assert delays and max(delays) <= UNAVAILABLE_BACKOFF.max * (1 + UNAVAILABLE_BACKOFF.jitter)
    assert len(delays) < 120 / UNAVAILABLE_BACKOFF.max * 2
    assert len(delays) <= dep.starts <= len(delays) + 1  # the last restart may be pending


async def test_a_crash_loop_is_still_counted_between_outages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The new kind does not weaken the old rule: errors still count and escalate."""
    dep = Dependency()
    crashes = 0

    async def buggy(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal crashes
        task_status.started()
        await trio.sleep(0.5)
        crashes += 1
        raise ValueError("bug")

    children = [ChildSpec("store_user", dep.worker), ChildSpec("buggy", buggy)]
    with pytest.RaisesGroup(IntensityExceededError):
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor("root", children, intensity=3, period=10.0).run)
            await trio.sleep(60)
    assert crashes == 4  # the fourth counted restart in 10 s gives up


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_group_strategies_restart_without_counting(
    strategy: Strategy, autojump_clock: trio.testing.MockClock
) -> None:
    dep = Dependency()
    started: list[str] = []

    async def sibling(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        started.append("sibling")
        task_status.started()
        await trio.sleep_forever()

    children = [ChildSpec("a", dep.worker), ChildSpec("b", sibling)]
    async with trio.open_nursery() as nursery:
        handle: SupervisorHandle = await nursery.start(
            Supervisor("s", children, strategy=strategy, intensity=1, period=100.0).run
        )
        await trio.sleep(60)
        dep.back.set()
        await trio.sleep(10)
        assert [c.state for c in handle.which_children()] == ["running", "running"]
        await handle.stop()
    assert dep.starts > 3 and len(started) == dep.starts


async def test_a_transient_child_is_restarted_after_unavailable_and_nested_trees_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transient child deep in a tree (a session's token keeper) restarts after UNAVAILABLE
    like after an error; neither its supervisor nor the one above escalates."""
    dep = Dependency()
    inner = Supervisor(
        "session",
        [ChildSpec("token_keeper", dep.worker, restart=Restart.TRANSIENT)],
        intensity=5,
        period=60.0,
    )
    async with trio.open_nursery() as nursery:
        top: SupervisorHandle = await nursery.start(
            Supervisor("root", [ChildSpec("session", inner.run)], intensity=0).run
        )
        await trio.sleep(600)
        dep.back.set()
        await trio.sleep(10)
        (info,) = top.which_children()
        assert info.restarts == 0 and info.state == "running"
        await top.stop()
    assert dep.starts > 60


async def test_a_restart_that_fails_with_unavailable_is_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child whose *start* needs the dependency (it raises before reporting ready): failed
    restarts during the outage stay UNAVAILABLE."""
    back = trio.Event()
    starts = 0

    async def needs_db_to_start(
        task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        nonlocal starts
        starts += 1
        if starts > 1 and not back.is_set():
            raise DatabaseAway("cannot read the schema")
        task_status.started()
        if starts == 1:
            await trio.sleep(1)
            raise DatabaseAway("lost the connection")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        handle: SupervisorHandle = await nursery.start(
            Supervisor("root", [ChildSpec("schema", needs_db_to_start)], intensity=1).run
        )
        await trio.sleep(300)
        back.set()
        await trio.sleep(10)
        (info,) = handle.which_children()
        assert info.state == "running"
        await handle.stop()
    assert starts > 10
