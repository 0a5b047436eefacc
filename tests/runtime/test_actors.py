"""Dynamic supervisors, mailboxes, the registry, exit classification and fault points.

The ``trio.sleep`` calls in these tests run on the autojump ``MockClock``: each passes virtual
time on purpose (a worker's lifetime, a restart window, a backoff, an outage); none waits for an
effect, which ``trio.testing.wait_all_tasks_blocked()`` does where one is awaited.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest
import trio
import trio.testing

from runtime import (
    ActorExited,
    ActorHandle,
    ChildSpec,
    DuplicateKey,
    DynamicSupervisor,
    ExitKind,
    MaxChildrenError,
    Registry,
    Reply,
    Restart,
    Shutdown,
    classify_exit,
    fault_point,
    faults,
    open_mailbox,
)


@attrs.frozen
class Add:
    n: int
    reply: Reply[int]


@attrs.frozen
class Crash:
    pass


async def counter(
    name: str,
    registry: Registry[str, object],
    *,
    task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
) -> None:
    total = 0
    with open_mailbox(name, 4) as (handle, inbox), registry.register(name, handle):
        task_status.started(handle)
        async for msg in inbox:
            if isinstance(msg, Add):
                total += msg.n
                msg.reply.set(total)
            elif isinstance(msg, Crash):
                raise RuntimeError(f"{name} asked to crash")


async def test_ask_gets_the_actors_reply_and_registry_tracks_the_actor() -> None:
    registry: Registry[str, object] = Registry("actors")
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn").run)
        handle = await sup.start_child(
            ChildSpec("c1", counter, args=("c1", registry), restart=Restart.TEMPORARY)
        )
        assert isinstance(handle, ActorHandle)
        assert await handle.ask(lambda r: Add(2, r)) == 2
        assert await handle.ask(lambda r: Add(3, r)) == 5
        assert registry.lookup("c1") is handle
        await sup.terminate_child("c1")
        assert registry.lookup("c1") is None
        assert (await handle.wait_exited()).kind is ExitKind.SHUTDOWN
        await sup.stop()


async def test_ask_fails_with_actor_exited_when_the_actor_dies_first() -> None:
    registry: Registry[str, object] = Registry()
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn").run)
        handle = await sup.start_child(
            ChildSpec("c", counter, args=("c", registry), restart=Restart.TEMPORARY)
        )
        assert isinstance(handle, ActorHandle)

        def crash_instead(reply: Reply[int]) -> object:
            return Crash()

        with pytest.raises(ActorExited):
            await handle.ask(crash_instead)
        exit = await handle.wait_exited()
        assert exit.kind is ExitKind.ERROR
        assert len(registry) == 0
        await sup.stop()


async def test_send_nowait_raises_would_block_when_the_mailbox_is_full() -> None:
    with open_mailbox("m", 2) as (handle, _inbox):
        handle.send_nowait(1)
        handle.send_nowait(2)
        with pytest.raises(trio.WouldBlock):
            handle.send_nowait(3)
        stats = handle.statistics()
        assert (stats.queued, stats.capacity, stats.sent, stats.rejected) == (2, 2, 2, 1)
    with pytest.raises(ActorExited):
        handle.send_nowait(4)


async def test_dynamic_supervisor_refuses_children_past_max_children() -> None:
    registry: Registry[str, object] = Registry()
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn", max_children=2).run)
        for i in range(2):
            await sup.start_child(
                ChildSpec(f"c{i}", counter, args=(f"c{i}", registry), restart=Restart.TEMPORARY)
            )
        with pytest.raises(
            MaxChildrenError, match=r"dynamic supervisor 'dyn' is full \(2 children\)"
        ):
            await sup.start_child(ChildSpec("c2", counter, args=("c2", registry)))
        await sup.stop()
    assert len(registry) == 0


async def test_dynamic_supervisor_stops_children_in_parallel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_to_stop(
        *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(None)
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(2.0, shield=True):
                await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn").run)
        for i in range(10):
            await sup.start_child(ChildSpec(f"s{i}", slow_to_stop, restart=Restart.TEMPORARY))
        before = trio.current_time()
        await sup.stop()
        assert trio.current_time() - before == pytest.approx(1.0)


async def test_dynamic_children_restart_alone_and_temporary_ones_leave() -> None:
    registry: Registry[str, object] = Registry()
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("dyn", intensity=10).run)
        perm = await sup.start_child(ChildSpec("p", counter, args=("p", registry)))
        temp = await sup.start_child(
            ChildSpec("t", counter, args=("t", registry), restart=Restart.TEMPORARY)
        )
        assert isinstance(perm, ActorHandle) and isinstance(temp, ActorHandle)
        await perm.send(Crash())
        await temp.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        children = {c.id: c for c in sup.which_children()}
        assert set(children) == {"p"}
        assert children["p"].restarts == 1
        new_perm = sup.child("p")
        assert isinstance(new_perm, ActorHandle) and new_perm is not perm
        assert await new_perm.ask(lambda r: Add(1, r)) == 1
        await sup.stop()


async def test_registry_keys_are_unique() -> None:
    registry: Registry[str, int] = Registry("r")
    with registry.register("k", 1):
        with (
            pytest.raises(DuplicateKey, match="r: key 'k' is already registered"),
            registry.register("k", 2),
        ):
            pass
        assert registry.lookup("k") == 1
    assert "k" not in registry


def test_exit_classification() -> None:
    assert classify_exit(None).kind is ExitKind.NORMAL  # type: ignore[union-attr]
    assert classify_exit(Shutdown("revoked")) == classify_exit(Shutdown("revoked"))
    shutdown = classify_exit(Shutdown("revoked"))
    assert shutdown is not None and (shutdown.kind, shutdown.reason) == (
        ExitKind.SHUTDOWN,
        "revoked",
    )
    own = classify_exit(None, own_cancel=True, own_reason="terminated")
    assert own is not None and (own.kind, own.reason) == (ExitKind.SHUTDOWN, "terminated")
    assert classify_exit(KeyboardInterrupt()) is None
    error = classify_exit(ValueError("x"))
    assert error is not None and error.kind is ExitKind.ERROR
    leaked = classify_exit(asyncio.CancelledError())
    assert leaked is not None and leaked.kind is ExitKind.ERROR
    group = classify_exit(ExceptionGroup("g", [ValueError("inner")]))
    assert (
        group is not None and group.kind is ExitKind.ERROR and isinstance(group.error, ValueError)
    )
    shutdowns = classify_exit(ExceptionGroup("g", [Shutdown("a"), Shutdown("b")]))
    assert shutdowns is not None and (shutdowns.kind, shutdowns.reason) == (
        ExitKind.SHUTDOWN,
        "a; b",
    )
    assert classify_exit(BaseExceptionGroup("g", [KeyboardInterrupt()])) is None


async def test_an_enclosing_cancel_in_a_group_is_not_an_exit() -> None:
    caught: BaseException | None = None
    with trio.CancelScope() as scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            caught = exc
            raise
    assert caught is not None
    assert classify_exit(caught) is None


async def test_fault_points_raise_delay_and_hang_only_when_armed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults.reset()
    await fault_point("store.commit")  # disarmed: nothing happens
    faults.arm("store.commit", error=ConnectionError, times=1)
    with pytest.raises(ConnectionError):
        await fault_point("store.commit")
    await fault_point("store.commit")  # used up
    assert faults.hits("store.commit") == 1
    faults.arm("slow", delay=3.0)
    before = trio.current_time()
    await fault_point("slow")
    assert trio.current_time() - before == pytest.approx(3.0)
    faults.arm("stuck", hang=True)
    with trio.move_on_after(100.0) as scope:
        await fault_point("stuck")
    assert scope.cancelled_caught
    faults.reset()
    assert not faults.active
    with pytest.raises(ValueError, match="arm it with error=, delay= or hang=True"):
        faults.arm("nothing")


async def test_send_waits_for_room_when_the_mailbox_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with open_mailbox("m", 1) as (handle, inbox):
        handle.send_nowait("first")
        sent = trio.Event()

        async def sender() -> None:
            await handle.send("second")
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.sleep(1.0)
            assert not sent.is_set()  # backpressure: the sender waits
            assert await inbox.receive() == "first"
            await sent.wait()
            assert await inbox.receive() == "second"


async def test_each_actor_logs_with_its_name_bound() -> None:
    import structlog
    from structlog.testing import capture_logs

    from runtime import Supervisor

    async def talker(*, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        structlog.get_logger().info("hello")
        task_status.started(None)
        await trio.sleep_forever()

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.testing.LogCapture()]
    )
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with trio.open_nursery() as nursery:
                sup = await nursery.start(Supervisor("s", [ChildSpec("talker", talker)]).run)
                await sup.stop()
    finally:
        structlog.reset_defaults()
    hello = [e for e in logs if e["event"] == "hello"]
    assert hello and hello[0]["actor"] == "talker" and hello[0]["supervisor"] == "s"
