"""Lifecycle edges: leaks after a stop, stop reasons, exits during stops, the asyncio bridge's
cancel, concurrent dynamic starts, handles without a mailbox block, events and the tree.

The ``trio.sleep`` calls in these tests run on the autojump ``MockClock``: each passes virtual
time on purpose (a worker's lifetime, a restart window, a backoff, an outage); none waits for an
effect, which ``trio.testing.wait_all_tasks_blocked()`` does where one is awaited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from runtime import (
    ActorExited,
    ActorHandle,
    Backoff,
    ChildExited,
    ChildRestarted,
    ChildSpec,
    ChildStarted,
    DuplicateKey,
    DynamicSupervisor,
    EventSubscription,
    ExitKind,
    IntensityExceeded,
    IntensityExceededError,
    Mailbox,
    MaxChildrenError,
    Registry,
    Reply,
    Restart,
    StartTimeout,
    Strategy,
    SupervisionEvent,
    Supervisor,
    SupervisorHandle,
    UnknownChild,
    classify_exit,
    subscribe_events,
    tree,
)

NoTasksLeft = Callable[[trio.Nursery], Awaitable[None]]
Start = Callable[..., Awaitable[object]]


class Log:
    """Workers that append what they do to one list, and crash on demand."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.crash: dict[str, trio.Event] = {}

    def worker(self, name: str) -> Start:
        async def start(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
            self.lines.append(f"start {name}")
            event = self.crash[name] = trio.Event()
            task_status.started(name)
            try:
                await event.wait()
                raise RuntimeError(f"{name} crashed")
            finally:
                self.lines.append(f"stop {name}")

        return start

    def specs(self, names: str, **options: object) -> list[ChildSpec]:
        return [ChildSpec(n, self.worker(n), **options) for n in names]  # type: ignore[arg-type]


def drain(sub: EventSubscription) -> list[SupervisionEvent]:
    events: list[SupervisionEvent] = []
    while True:
        try:
            events.append(sub.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def exits_of(events: list[SupervisionEvent], child: str) -> list[tuple[ExitKind, str | None]]:
    return [
        (e.exit.kind, e.exit.reason)
        for e in events
        if isinstance(e, ChildExited) and e.child == child
    ]


async def test_a_stopped_tree_leaves_no_task_behind_not_even_a_pending_backoff_restart(
    autojump_clock: trio.testing.MockClock, no_tasks_left: NoTasksLeft
) -> None:
    log = Log()
    backoff = Backoff(min=50.0, max=50.0, jitter=0.0)
    inner = Supervisor("inner", log.specs("xy"))
    children = [
        ChildSpec("slow_back", log.worker("b"), backoff=backoff),
        ChildSpec("inner", inner.run),
        ChildSpec("dyn", DynamicSupervisor("dyn").run),
    ]
    async with trio.open_nursery() as nursery:
        root: SupervisorHandle = await nursery.start(Supervisor("root", children).run)
        dyn = root.child("dyn")
        assert isinstance(dyn, SupervisorHandle)
        for i in range(3):
            await dyn.start_child(ChildSpec(f"d{i}", log.worker(f"d{i}")))
        log.crash["b"].set()  # its restart now waits 50s in the supervisor's nursery
        await trio.testing.wait_all_tasks_blocked()
        assert {c.id: c.state for c in root.which_children()}["slow_back"] == "restarting"
        await root.stop()
        await no_tasks_left(nursery)
        assert trio.current_time() < 50.0  # the pending restart was cancelled, not awaited
    assert "start b" in log.lines and log.lines.count("start b") == 1


async def test_a_stop_reason_reaches_the_child_and_the_children_of_nested_supervisors(
    no_tasks_left: NoTasksLeft,
) -> None:
    log = Log()
    inner = Supervisor("inner", log.specs("x"))
    children = [ChildSpec("a", log.worker("a")), ChildSpec("inner", inner.run)]
    with subscribe_events() as sub:
        async with trio.open_nursery() as nursery:
            root = await nursery.start(Supervisor("root", children).run)
            await root.terminate_child("a", reason="revoked")
            await root.stop("maintenance")
            await no_tasks_left(nursery)
        events = drain(sub)
    assert exits_of(events, "a") == [(ExitKind.SHUTDOWN, "revoked")]
    assert exits_of(events, "x") == [(ExitKind.SHUTDOWN, "maintenance")]
    assert exits_of(events, "inner") == [(ExitKind.SHUTDOWN, "maintenance")]
    assert (await root.wait_exited()) == classify_exit(
        None, own_cancel=True, own_reason="maintenance"
    )


async def test_an_enclosing_cancel_stops_children_in_reverse_with_its_reason() -> None:
    log = Log()
    with subscribe_events() as sub:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(Supervisor("s", log.specs("ab")).run)
                scope.cancel(reason="ctrl-c")
        events = drain(sub)
    assert log.lines == ["start a", "start b", "stop b", "stop a"]
    assert exits_of(events, "b") == [(ExitKind.SHUTDOWN, "ctrl-c")]
    assert not any(isinstance(e, ChildRestarted) for e in events)
    assert (await handle.wait_exited()).reason == "ctrl-c"


async def test_a_child_that_crashes_while_stopping_is_reported_as_an_error_and_not_restarted() -> (
    None
):
    async def bad_cleanup(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(None)
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("flush failed")

    with subscribe_events() as sub:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(Supervisor("s", [ChildSpec("w", bad_cleanup)]).run)
            await handle.terminate_child("w", reason="revoked")
            info = handle.which_children()[0]
            assert info.state == "stopped"
            assert info.last_exit is not None and info.last_exit.kind is ExitKind.ERROR
            await handle.stop()
        events = drain(sub)
    assert [k for k, _ in exits_of(events, "w")] == [ExitKind.ERROR]
    assert not any(isinstance(e, ChildRestarted) for e in events)


async def test_our_own_stop_seen_as_asyncio_cancelled_error_is_a_shutdown() -> None:
    """The asyncio bridge turns a trio cancel into asyncio.CancelledError: still our stop."""

    async def bridged(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(None)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise asyncio.CancelledError() from None

    with subscribe_events() as sub:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(Supervisor("s", [ChildSpec("store", bridged)]).run)
            await handle.terminate_child("store", reason="revoked")
            await handle.stop()
        events = drain(sub)
    assert exits_of(events, "store") == [(ExitKind.SHUTDOWN, "revoked")]


async def test_an_asyncio_cancelled_error_of_its_own_is_an_error_and_restarts() -> None:
    async def leaky(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(None)
        await trio.lowlevel.checkpoint()
        raise asyncio.CancelledError()

    spec = ChildSpec("store", leaky, restart=Restart.TRANSIENT)
    with subscribe_events() as sub:
        # it fails after every start: a transient child's error restarts it until the
        # intensity runs out
        with pytest.RaisesGroup(IntensityExceededError):
            async with trio.open_nursery() as nursery:
                await nursery.start(Supervisor("s", [spec], intensity=2, period=100).run)
        events = drain(sub)
    kinds = [k for k, _ in exits_of(events, "store")]
    assert kinds[:3] == [ExitKind.ERROR] * 3
    assert any(isinstance(e, IntensityExceeded) for e in events)


async def test_an_error_beside_an_enclosing_cancel_in_a_group_is_still_an_error() -> None:
    caught: BaseException | None = None

    async def fails_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    with pytest.RaisesGroup(ValueError), trio.CancelScope() as scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fails_on_cancel)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            caught = exc
            raise
    assert isinstance(caught, BaseExceptionGroup)
    assert caught.split(trio.Cancelled)[0] is not None  # the group really held a Cancelled
    for own in (False, True):
        exit = classify_exit(caught, own_cancel=own, own_reason="stop")
        assert exit is not None and exit.kind is ExitKind.ERROR
        assert isinstance(exit.error, ValueError)


async def test_concurrent_start_child_calls_never_overshoot_max_children_and_start_in_parallel(
    autojump_clock: trio.testing.MockClock, no_tasks_left: NoTasksLeft
) -> None:
    async def slow_start(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1.0)
        task_status.started(None)
        await trio.sleep_forever()

    outcomes: list[str] = []
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn", max_children=3).run)
        before = trio.current_time()

        async def add(i: int) -> None:
            try:
                await sup.start_child(ChildSpec(f"c{i}", slow_start))
                outcomes.append("started")
            except MaxChildrenError:
                outcomes.append("refused")

        async with trio.open_nursery() as adders:
            for i in range(5):
                adders.start_soon(add, i)
        assert trio.current_time() - before == pytest.approx(1.0)  # not 3 starts in a row
        assert sorted(outcomes) == ["refused", "refused", "started", "started", "started"]
        assert len(sup.which_children()) == 3
        await sup.stop()
        await no_tasks_left(nursery)


async def test_a_handle_given_without_the_mailbox_block_still_learns_its_actor_exited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def bare(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        mailbox: Mailbox[str] = Mailbox("bare", 4)
        task_status.started(mailbox.handle)
        assert await mailbox.inbox.receive() == "boom"
        raise ValueError("asked to fail")

    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn").run)
        handle = await sup.start_child(ChildSpec("bare", bare, restart=Restart.TEMPORARY))
        assert isinstance(handle, ActorHandle)
        await handle.send("boom")
        with trio.fail_after(10):  # virtual seconds: a handle that never learns fails, not hangs
            exit = await handle.wait_exited()
        assert exit.kind is ExitKind.ERROR and isinstance(exit.error, ValueError)
        with pytest.raises(ActorExited, match="actor 'bare' has exited"):
            await handle.send("late")
        await sup.stop()


async def test_ask_raises_the_error_the_actor_failed_the_reply_with() -> None:
    async def refuser(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        mailbox: Mailbox[Reply[int]] = Mailbox("refuser", 1)
        with mailbox as (handle, inbox):
            task_status.started(handle)
            async for reply in inbox:
                reply.fail(PermissionError("not yours"))

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(refuser)
        with pytest.raises(PermissionError, match="not yours"):
            await handle.ask(lambda reply: reply)
        nursery.cancel_scope.cancel()


async def test_registry_entries_leave_when_the_actor_crashes_with_async_with() -> None:
    registry: Registry[str, str] = Registry("sessions")
    entered = trio.Event()

    async def actor() -> None:
        async with registry.register("k", "face"):
            entered.set()
            await trio.lowlevel.checkpoint()
            raise RuntimeError("crash")

    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor)
            await entered.wait()
            assert registry.lookup("k") == "face"
            with pytest.raises(DuplicateKey, match="sessions: key 'k' is already registered"):
                async with registry.register("k", "other"):
                    pass
    assert registry.lookup("k") is None and len(registry) == 0 and registry.keys() == []


async def test_a_slow_subscriber_loses_the_newest_events_and_counts_them() -> None:
    log = Log()
    with subscribe_events(capacity=2) as slow, subscribe_events() as full:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(Supervisor("s", log.specs("abc")).run)
            await handle.stop()
        kept = drain(slow)
        everything = drain(full)
    assert len(everything) == 6  # 3 started, 3 exited
    assert kept == everything[:2]  # the oldest are kept, the newest dropped
    assert slow.dropped == len(everything) - 2 and full.dropped == 0
    assert all(isinstance(e, ChildStarted) for e in kept)


async def test_tree_is_json_friendly_and_lists_dynamic_children(
    no_tasks_left: NoTasksLeft,
) -> None:
    log = Log()
    async with trio.open_nursery() as nursery:
        root = await nursery.start(
            Supervisor("app", [ChildSpec("sessions", DynamicSupervisor("sessions").run)]).run
        )
        sessions = root.child("sessions")
        assert isinstance(sessions, SupervisorHandle)
        await sessions.start_child(ChildSpec("s1", log.worker("s1")))
        [snapshot] = [t for t in tree() if t.id == "app"]
        data = json.loads(json.dumps(snapshot.to_dict()))
        assert data["children"][0]["kind"] == "dynamic_supervisor"
        assert [c["id"] for c in data["children"][0]["children"]] == ["s1"]
        await root.stop()
        await no_tasks_left(nursery)
    assert [t for t in tree() if t.id == "app"] == []


async def test_a_child_failing_to_start_stops_its_started_siblings_in_reverse() -> None:
    log = Log()

    async def broken(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("port in use")

    children = [*log.specs("ab"), ChildSpec("c", broken)]
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="port in use")):
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor("s", children).run)
    assert log.lines == ["start a", "start b", "stop b", "stop a"]


async def test_the_intensity_window_counts_restarts_of_all_children_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    sup = Supervisor("s", log.specs("ab"), intensity=3, period=10.0)
    with pytest.RaisesGroup(IntensityExceededError):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(sup.run)
            for name in "abab":  # two restarts each: within any per-child limit of 3
                log.crash[name].set()
                await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(1.0)
    exit = await handle.wait_exited()
    assert exit.kind is ExitKind.ERROR and isinstance(exit.error, IntensityExceededError)


async def test_temporary_children_leave_under_rest_for_one_and_earlier_ones_stay() -> None:
    log = Log()
    children = [
        *log.specs("ab"),
        ChildSpec("tmp", log.worker("tmp"), restart=Restart.TEMPORARY),
        ChildSpec("c", log.worker("c")),
    ]
    async with trio.open_nursery() as nursery:
        sup = Supervisor("s", children, strategy=Strategy.REST_FOR_ONE)
        handle = await nursery.start(sup.run)
        log.lines.clear()
        log.crash["b"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert log.lines == ["stop b", "stop c", "stop tmp", "start b", "start c"]
        assert [c.id for c in handle.which_children()] == ["a", "b", "c"]
        await handle.stop()


async def test_terminating_an_unknown_child_names_it() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(Supervisor("s").run)
        with pytest.raises(UnknownChild, match="supervisor 's' has no child 'ghost'"):
            await handle.terminate_child("ghost")
        await handle.stop()


def test_supervisor_policies_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="supervisor 's': intensity must be >= 0, got -1"):
        Supervisor("s", intensity=-1)
    with pytest.raises(ValueError, match="supervisor 's': period must be > 0 seconds, got 0"):
        Supervisor("s", period=0)
    with pytest.raises(ValueError, match="'d': max_children must be >= 1, got 0"):
        DynamicSupervisor("d", max_children=0)
    with pytest.raises(ValueError, match="child ids must be unique"):
        Supervisor("s", [ChildSpec("a", Log().worker("a")), ChildSpec("a", Log().worker("a"))])


async def test_a_restart_that_never_reports_ready_is_a_failure_bounded_by_its_start_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def ready_once(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        if len(starts) > 1:
            try:
                await trio.sleep_forever()  # never ready again
            except trio.Cancelled:
                raise OSError("gave up") from None  # even a converted cancel is a timeout
        task_status.started(None)
        await trio.sleep(1.0)
        raise RuntimeError("crash")

    spec = ChildSpec("w", ready_once, start_grace=5.0)
    with subscribe_events() as sub:
        with pytest.RaisesGroup(IntensityExceededError):
            async with trio.open_nursery() as nursery:
                await nursery.start(Supervisor("s", [spec], intensity=1, period=100.0).run)
        events = drain(sub)
    exits = [(e.at, e.exit.error) for e in events if isinstance(e, ChildExited)]
    assert isinstance(exits[0][1], RuntimeError)
    assert isinstance(exits[1][1], StartTimeout) and "start grace (5.0s)" in str(exits[1][1])
    assert starts == [0.0, 1.0]
    assert exits[1][0] == 6.0  # the failed restart was given exactly its grace, then counted


async def test_a_child_stopped_for_good_is_not_brought_back_by_a_siblings_failure() -> None:
    log = Log()

    async def finishes(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        log.lines.append("start done")
        task_status.started(None)
        await trio.lowlevel.checkpoint()

    children = [
        ChildSpec("a", log.worker("a")),
        ChildSpec("done", finishes, restart=Restart.TRANSIENT),
        ChildSpec("ended", log.worker("ended")),
    ]
    async with trio.open_nursery() as nursery:
        sup = Supervisor("s", children, strategy=Strategy.ONE_FOR_ALL)
        handle = await nursery.start(sup.run)
        await handle.terminate_child("ended")
        await trio.testing.wait_all_tasks_blocked()
        log.lines.clear()
        log.crash["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert log.lines == ["stop a", "start a"]
        states = {c.id: c.state for c in handle.which_children()}
        assert states == {"a": "running", "done": "stopped", "ended": "stopped"}
        await handle.stop()
