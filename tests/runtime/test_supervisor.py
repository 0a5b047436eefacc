"""Supervisor semantics: OTP's strategies, restart types, intensity, backoff and ordered stops.

The ``trio.sleep`` calls in these tests run on the autojump ``MockClock``: each passes virtual
time on purpose (a worker's lifetime, a restart window, a backoff, an outage); none waits for an
effect, which ``trio.testing.wait_all_tasks_blocked()`` does where one is awaited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing

from runtime import (
    Backoff,
    ChildExited,
    ChildRestarted,
    ChildSpec,
    EventSubscription,
    ExitKind,
    IntensityExceeded,
    IntensityExceededError,
    Restart,
    Shutdown,
    StartTimeout,
    Strategy,
    SupervisionEvent,
    Supervisor,
    SupervisorHandle,
    subscribe_events,
    tree,
)


class Journal:
    """Records what worker actors did, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.crash: dict[str, trio.Event] = {}

    def worker(
        self, name: str, *, exit_with: BaseException | None = None, after: float | None = None
    ) -> Callable[..., Awaitable[object]]:
        async def start(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
            self.lines.append(f"start {name}")
            event = self.crash[name] = trio.Event()
            task_status.started(name)
            try:
                if after is not None:
                    await trio.sleep(after)
                    if exit_with is not None:
                        raise exit_with
                    return
                await event.wait()
                raise RuntimeError(f"{name} crashed")
            finally:
                self.lines.append(f"stop {name}")

        return start

    def crash_now(self, name: str) -> None:
        self.crash[name].set()


def specs(journal: Journal, names: Sequence[str], **kwargs: object) -> list[ChildSpec]:
    return [ChildSpec(id=n, start=journal.worker(n), **kwargs) for n in names]  # type: ignore[arg-type]


def drain(sub: EventSubscription) -> list[SupervisionEvent]:
    events: list[SupervisionEvent] = []
    while True:
        try:
            events.append(sub.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_children_start_left_to_right_and_stop_right_to_left() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        handle: SupervisorHandle = await nursery.start(
            Supervisor("root", specs(journal, "abc")).run
        )
        assert [c.id for c in handle.which_children()] == ["a", "b", "c"]
        await handle.stop()
    assert journal.lines == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert (await handle.wait_exited()).kind is ExitKind.SHUTDOWN


async def test_one_for_one_restarts_only_the_failed_child() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(Supervisor("s", specs(journal, "abc")).run)
        journal.lines.clear()
        journal.crash_now("b")
        await settle()
        assert journal.lines == ["stop b", "start b"]
        assert [c.restarts for c in handle.which_children()] == [0, 1, 0]
        await handle.stop()


async def test_one_for_all_stops_the_others_in_reverse_then_restarts_all_in_order() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = Supervisor("s", specs(journal, "abc"), strategy=Strategy.ONE_FOR_ALL)
        handle = await nursery.start(sup.run)
        journal.lines.clear()
        journal.crash_now("b")
        await settle()
        assert journal.lines == ["stop b", "stop c", "stop a", "start a", "start b", "start c"]
        await handle.stop()


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = Supervisor("s", specs(journal, "abcd"), strategy=Strategy.REST_FOR_ONE)
        handle = await nursery.start(sup.run)
        journal.lines.clear()
        journal.crash_now("b")
        await settle()
        assert journal.lines == ["stop b", "stop d", "stop c", "start b", "start c", "start d"]
        await handle.stop()


async def test_temporary_children_are_never_restarted_even_when_a_sibling_fails() -> None:
    journal = Journal()
    children = [
        ChildSpec("a", journal.worker("a")),
        ChildSpec("t", journal.worker("t"), restart=Restart.TEMPORARY),
    ]
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(Supervisor("s", children, strategy=Strategy.ONE_FOR_ALL).run)
        journal.lines.clear()
        journal.crash_now("a")
        await settle()
        assert journal.lines == ["stop a", "stop t", "start a"]
        assert [c.id for c in handle.which_children()] == ["a"]
        await handle.stop()


@pytest.mark.parametrize(
    ("restart", "outcome", "restarted"),
    [
        (Restart.PERMANENT, "normal", True),
        (Restart.PERMANENT, "shutdown", True),
        (Restart.PERMANENT, "error", True),
        (Restart.TRANSIENT, "normal", False),
        (Restart.TRANSIENT, "shutdown", False),
        (Restart.TRANSIENT, "error", True),
        (Restart.TEMPORARY, "error", False),
        (Restart.TEMPORARY, "normal", False),
    ],
)
async def test_restart_types_follow_otp_rules(
    restart: Restart, outcome: str, restarted: bool, autojump_clock: trio.testing.MockClock
) -> None:
    journal = Journal()
    error = {"normal": None, "shutdown": Shutdown("done"), "error": ValueError("boom")}[outcome]
    spec = ChildSpec("w", journal.worker("w", exit_with=error, after=1.0), restart=restart)
    with subscribe_events() as sub:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(Supervisor("s", [spec], intensity=100).run)
            await trio.sleep(1.5)
            await handle.stop()
        events = drain(sub)
    exits = [e for e in events if isinstance(e, ChildExited) and e.supervisor == "s"]
    assert exits[0].exit.kind.value == outcome
    assert any(isinstance(e, ChildRestarted) for e in events) is restarted


async def test_intensity_exceeded_stops_children_in_reverse_and_escalates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    children = [ChildSpec("a", journal.worker("a")), ChildSpec("b", journal.worker("b"))]
    sup = Supervisor("s", children, intensity=2, period=10.0)
    with subscribe_events() as sub:
        with pytest.RaisesGroup(IntensityExceededError) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                for _ in range(3):
                    journal.crash_now("b")
                    await settle()
        kinds = [type(e) for e in drain(sub)]
    assert "exceeded restart intensity (3 restarts in 10.0s)" in str(info.value.exceptions[0])
    assert journal.lines[-2:] == ["stop b", "stop a"]
    assert IntensityExceeded in kinds


async def test_restarts_outside_the_window_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            Supervisor("s", specs(journal, "a"), intensity=1, period=5.0).run
        )
        for _ in range(4):
            journal.crash_now("a")
            await settle()
            await trio.sleep(6.0)
        assert handle.which_children()[0].restarts == 4
        await handle.stop()


async def test_escalation_restarts_the_failing_subtree_under_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    inner = Supervisor("inner", specs(journal, "x"), intensity=0, period=5.0)
    outer_children = [
        ChildSpec("sibling", journal.worker("sibling")),
        ChildSpec("inner", inner.run),
    ]
    async with trio.open_nursery() as nursery:
        outer = await nursery.start(Supervisor("outer", outer_children, intensity=5).run)
        journal.lines.clear()
        journal.crash_now("x")
        await settle()
        assert journal.lines == ["stop x", "start x"]  # a new inner supervisor started x again
        info = {c.id: c for c in outer.which_children()}
        assert info["inner"].restarts == 1
        assert info["sibling"].restarts == 0
        await outer.stop()


async def test_backoff_delays_restarts_and_resets_after_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    backoff = Backoff(min=1.0, max=8.0, jitter=0.0, reset_after=100.0)
    spec = ChildSpec("a", journal.worker("a"), backoff=backoff)
    with subscribe_events() as sub:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(Supervisor("s", [spec], intensity=100, period=1.0).run)
            for _ in range(5):
                journal.crash_now("a")
                await trio.sleep(20)
            await trio.sleep(200)
            journal.crash_now("a")
            await trio.sleep(20)
            await handle.stop()
        delays = [e.delay for e in drain(sub) if isinstance(e, ChildRestarted)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 1.0]


async def test_backoff_jitter_stays_within_bounds() -> None:
    backoff = Backoff(min=1.0, max=100.0, jitter=0.2)
    for attempt in range(5):
        base = 2.0**attempt
        for _ in range(50):
            assert base * 0.8 <= backoff.delay(attempt) <= base * 1.2


async def test_a_child_that_never_reports_ready_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never_ready(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep_forever()

    with pytest.RaisesGroup(
        pytest.RaisesExc(StartTimeout, match="did not report readiness within its start grace")
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                Supervisor("s", [ChildSpec("slow", never_ready, start_grace=2.0)]).run
            )


async def test_an_enclosing_cancel_is_not_an_exit_and_is_never_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    with subscribe_events() as sub:
        with trio.move_on_after(1.0):
            async with trio.open_nursery() as nursery:
                await nursery.start(Supervisor("s", specs(journal, "ab")).run)
        restarted = [isinstance(e, ChildRestarted) for e in drain(sub)]
    assert not any(restarted)
    assert journal.lines == ["start a", "start b", "stop b", "stop a"]


async def test_a_child_overstaying_its_grace_is_logged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from structlog.testing import capture_logs

    async def stubborn(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(None)
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(10.0, shield=True):
                await trio.sleep(10.0)

    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                Supervisor("s", [ChildSpec("x", stubborn, shutdown_grace=1.0)]).run
            )
            await handle.stop()
    assert any(e["event"] == "child_overstayed_grace" and e["child"] == "x" for e in logs)


async def test_tree_shows_nested_supervisors_with_states_and_restart_counts() -> None:
    journal = Journal()
    inner = Supervisor("inner", specs(journal, "x"))
    async with trio.open_nursery() as nursery:
        outer = await nursery.start(
            Supervisor(
                "outer", [ChildSpec("w", journal.worker("w")), ChildSpec("inner", inner.run)]
            ).run
        )
        journal.crash_now("w")
        await settle()
        roots = [t for t in tree() if t.id == "outer"]
        assert roots[0].to_dict() == {
            "id": "outer",
            "kind": "supervisor",
            "state": "running",
            "restarts": 0,
            "children": [
                {"id": "w", "kind": "worker", "state": "running", "restarts": 1, "children": []},
                {
                    "id": "inner",
                    "kind": "supervisor",
                    "state": "running",
                    "restarts": 0,
                    "children": [
                        {
                            "id": "x",
                            "kind": "worker",
                            "state": "running",
                            "restarts": 0,
                            "children": [],
                        }
                    ],
                },
            ],
        }
        await outer.stop()
    assert [t for t in tree() if t.id == "outer"] == []


async def test_intensity_escalates_through_two_levels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """leaf exceeds its intensity → middle restarts it; middle exceeds too → top gives up."""
    journal = Journal()
    leaf_specs = specs(journal, "x")

    async def middle(*, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        leaf = Supervisor("leaf", leaf_specs, intensity=0, period=100.0)
        await Supervisor("middle", [ChildSpec("leaf", leaf.run)], intensity=1, period=100.0).run(
            task_status=task_status
        )

    top = Supervisor("top", [ChildSpec("middle", middle)], intensity=0, period=100.0)
    with subscribe_events() as sub:
        with pytest.RaisesGroup(IntensityExceededError) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(top.run)
                for _ in range(
                    3
                ):  # leaf fails: middle restarts leaf once, then gives up; top gives up
                    journal.crash_now("x")
                    await settle()
        exceeded = [e.supervisor for e in drain(sub) if isinstance(e, IntensityExceeded)]
    assert exceeded == ["leaf", "leaf", "middle", "top"]
    assert "supervisor 'top' exceeded restart intensity" in str(info.value.exceptions[0])


async def test_a_transient_child_stopped_by_a_siblings_failure_is_restarted() -> None:
    """OTP: under one_for_all a transient sibling comes back; only temporary ones do not."""
    journal = Journal()
    children = [
        ChildSpec("a", journal.worker("a")),
        ChildSpec("t", journal.worker("t"), restart=Restart.TRANSIENT),
        ChildSpec("tmp", journal.worker("tmp"), restart=Restart.TEMPORARY),
    ]
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(Supervisor("s", children, strategy=Strategy.ONE_FOR_ALL).run)
        journal.lines.clear()
        journal.crash_now("a")
        await settle()
        assert journal.lines == ["stop a", "stop tmp", "stop t", "start a", "start t"]
        assert {c.id: c.state for c in handle.which_children()} == {"a": "running", "t": "running"}
        await handle.stop()
