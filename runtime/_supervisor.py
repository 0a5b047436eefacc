"""Supervisors: OTP's strategies, restart types, restart intensity and backoff, on Trio nurseries.

Design notes live in docs/runtime.md. Each child incarnation runs in its own cancel scope inside
the supervisor's nursery, so a supervisor can stop children one by one in reverse start order
(python-trio/trio#1521) and tell its own stop (a shutdown) from an enclosing cancellation.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Sequence
from typing import Any

import attrs
import structlog
import trio

from runtime._errors import (
    IntensityExceededError,
    MaxChildrenError,
    StartTimeout,
    SupervisionError,
    UnknownChild,
)
from runtime._events import ChildExited, ChildRestarted, ChildStarted, IntensityExceeded, publish
from runtime._exit import Exit, ExitKind, classify_exit
from runtime._mailbox import ActorHandle
from runtime._spec import UNAVAILABLE_BACKOFF, Backoff, ChildSpec, ChildState, Restart, Strategy

__all__ = ["ChildInfo", "DynamicSupervisor", "Supervisor", "SupervisorHandle", "TreeNode", "tree"]

log = structlog.get_logger("runtime")

_RUNNING = (ChildState.STARTING, ChildState.RUNNING)


@attrs.frozen
class ChildInfo:
    """A snapshot of one child of a supervisor."""

    id: str
    state: ChildState
    restarts: int
    face: object = attrs.field(eq=False, repr=False)
    last_exit: Exit | None = None


@attrs.frozen
class TreeNode:
    """A snapshot of a supervision tree, JSON-friendly through ``to_dict()``."""

    id: str
    kind: str  # supervisor | dynamic_supervisor | worker
    state: ChildState
    restarts: int
    children: tuple[TreeNode, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "restarts": self.restarts,
            "children": [c.to_dict() for c in self.children],
        }


def _ended(child: _Child, incarnation: int) -> None:
    """An incarnation ended; a later incarnation's stop waits for its own."""
    if child.incarnation == incarnation:
        child.exited = True
        if child.done is not None:
            child.done.set()


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    face: object = None
    scope: trio.CancelScope | None = None
    # made only when a stop waits for the running incarnation (an Event per live child is
    # memory a thousand idle streams' actors would hold for nothing)
    done: trio.Event | None = None
    exited: bool = True  # the current incarnation has ended (or none started)
    incarnation: int = 0
    restarts: int = 0
    backoff_attempt: int = 0
    started_at: float = 0.0
    stop_reason: str | None = None
    last_exit: Exit | None = None
    final: Exit | None = None  # how the current incarnation ended, once it has

    def info(self) -> ChildInfo:
        return ChildInfo(self.spec.id, self.state, self.restarts, self.face, self.last_exit)


class _Status:
    """Passes ``started(face)`` through to the supervisor while remembering the face."""

    def __init__(
        self, inner: trio.TaskStatus[object], child: _Child, scope: trio.CancelScope
    ) -> None:
        self._inner = inner
        self._child = child
        self._scope = scope
        self.started_called = False
        self.face: object = None

    def started(self, value: object = None) -> None:
        self.started_called = True
        self._scope.deadline = math.inf  # the start grace no longer applies
        self.face = value
        self._child.face = value
        self._inner.started(value)


_live: list[Supervisor] = []


class SupervisorHandle:
    """The face of one run of a supervisor."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._exited = trio.Event()
        self._exit: Exit | None = None

    @property
    def name(self) -> str:
        return self._sup.name

    def child(self, id: str) -> object | None:
        """The face of the running child ``id``, or None."""
        c = self._sup._find(id)
        return c.face if c is not None and c.state in _RUNNING else None

    def has_child(self, id: str) -> bool:
        """Whether ``id`` is a child in any state (running, restarting, stopping)."""
        return self._sup._find(id) is not None

    def which_children(self) -> list[ChildInfo]:
        return [c.info() for c in self._sup._children.values()]

    async def start_child(self, spec: ChildSpec) -> object:
        """Start a child at run time (dynamic supervisors) and return its face."""
        return await self._sup._add_child(spec)

    async def terminate_child(self, id: str, reason: str = "terminated") -> None:
        """Stop one child gracefully; it is not restarted and leaves a dynamic supervisor."""
        await self._sup._terminate(id, reason)

    async def stop(self, reason: str = "shutdown") -> None:
        """Stop every child in reverse start order, then the supervisor itself."""
        if not self._exited.is_set():  # a handle of a finished run must not stop a new one
            self._sup._request_stop(reason)
        await self._exited.wait()

    @property
    def exited(self) -> bool:
        """Whether this run of the supervisor has ended."""
        return self._exited.is_set()

    async def wait_exited(self) -> Exit:
        """How this run of the supervisor ended."""
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    def tree(self) -> TreeNode:
        return self._sup._tree_node(ChildState.RUNNING, 0)


class Supervisor:
    """A static supervisor: children start left to right and stop right to left.

    Args:
        name: the supervisor's name in events, logs and ``tree()``.
        children: child specs, in start order.
        strategy: which children restart when one exits.
        intensity: how many restarts ``period`` seconds may hold before the supervisor gives up
            and escalates to its parent with ``IntensityExceededError``. Restarts after an
            UNAVAILABLE exit (a dependency is away) are not counted.
        unavailable_backoff: the restart delay after an UNAVAILABLE exit of a child whose spec
            has no backoff of its own.
    """

    dynamic = False

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        unavailable_backoff: Backoff = UNAVAILABLE_BACKOFF,
    ) -> None:
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            msg = f"supervisor {name!r}: child ids must be unique, got {ids}"
            raise ValueError(msg)
        if intensity < 0:
            msg = f"supervisor {name!r}: intensity must be >= 0, got {intensity}"
            raise ValueError(msg)
        if period <= 0:
            msg = f"supervisor {name!r}: period must be > 0 seconds, got {period}"
            raise ValueError(msg)
        self.name = name
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.unavailable_backoff = unavailable_backoff
        self._specs = tuple(children)
        self._rng = random.Random()
        self._reset()

    def _reset(self) -> None:
        """Fresh state for a run: a parent restarting this supervisor calls ``run`` again, and
        like a new OTP supervisor process it starts with new children and an empty window."""
        # by id, in start order (dicts keep insertion order): O(1) lookups for dynamic supervisors
        self._children: dict[str, _Child] = {spec.id: _Child(spec) for spec in self._specs}
        self._handle = SupervisorHandle(self)
        self._nursery: trio.Nursery | None = None
        self._exits: collections.deque[tuple[_Child, int, Exit]] = collections.deque()
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self._restart_times: collections.deque[float] = collections.deque()
        self._stop_reason: str | None = None
        self._pending_restarts: set[trio.CancelScope] = set()
        self._closing = False

    async def run(
        self, *, task_status: trio.TaskStatus[SupervisorHandle] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the supervisor: start its children, report readiness, supervise until stopped."""
        if self in _live:
            msg = f"supervisor {self.name!r} is already running"
            raise SupervisionError(msg)
        self._reset()
        handle = self._handle
        error: BaseException | None = None
        cancel_reason: str | None = None
        _live.append(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for child in list(self._children.values()):
                        await self._start(child)
                    task_status.started(handle)
                    await self._loop()
                except trio.Cancelled as cancelled:
                    # a parent's stop or an enclosing deadline: the children learn its reason
                    cancel_reason = cancelled.reason or "cancelled"
                    raise
                except IntensityExceededError:
                    cancel_reason = "intensity_exceeded"
                    raise
                finally:
                    self._closing = True
                    for pending in self._pending_restarts:
                        pending.cancel()
                    await self._stop_all(self._stop_reason or cancel_reason or "shutdown")
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = _unwrap(group)
            if error is group:
                raise
            raise error from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            _live.remove(self)
            if error is None and self._stop_reason is not None:
                # stop() returns normally so a caller's nursery is not torn down by it
                handle._exit = Exit(ExitKind.SHUTDOWN, self._stop_reason)
            else:
                exit = classify_exit(error)
                handle._exit = exit or Exit(ExitKind.SHUTDOWN, cancel_reason or "cancelled")
            handle._exited.set()

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            while not self._exits and self._stop_reason is None:
                await self._wake.wait()
                self._wake = trio.Event()
            if self._stop_reason is not None:
                return
            child, incarnation, exit = self._exits.popleft()
            async with self._lock:
                await self._on_exit(child, incarnation, exit)

    def _post(self, child: _Child, incarnation: int, exit: Exit) -> None:
        # at most one exit per incarnation is ever queued: the deque is bounded by the child count
        self._exits.append((child, incarnation, exit))
        self._wake.set()

    def _request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()

    async def _on_exit(self, child: _Child, incarnation: int, exit: Exit) -> None:
        if incarnation != child.incarnation or child.state in (
            ChildState.STOPPING,
            ChildState.STOPPED,
        ):
            return
        child.state = ChildState.STOPPED
        child.last_exit = exit
        now = trio.current_time()
        publish(ChildExited(self.name, child.spec.id, exit, now))
        log_method = log.warning if exit.kind is ExitKind.ERROR else log.info
        log_method(
            "child_exited", supervisor=self.name, child=child.spec.id, reason=exit.describe()
        )
        if not _should_restart(child.spec.restart, exit):
            if self.dynamic or child.spec.restart is Restart.TEMPORARY:
                self._remove(child)
            return
        # a dependency being away is not a crash loop: such a restart is spaced by backoff but
        # never counted, so no outage, however long, makes this supervisor give up
        counted = exit.kind is not ExitKind.UNAVAILABLE
        if counted:
            self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] <= now - self.period:
            self._restart_times.popleft()
        if counted and len(self._restart_times) > self.intensity:
            publish(
                IntensityExceeded(
                    self.name, child.spec.id, len(self._restart_times), self.period, now
                )
            )
            log.error(
                "intensity_exceeded",
                supervisor=self.name,
                child=child.spec.id,
                restarts=len(self._restart_times),
                period=self.period,
            )
            raise IntensityExceededError(self.name, len(self._restart_times), self.period)
        group = self._restart_group(child)
        for other in reversed(group):
            if other is not child and other.state in _RUNNING:
                await self._stop_child(other, f"restart_after_{child.spec.id}")
        for other in group:
            if other is not child and other.spec.restart is Restart.TEMPORARY:
                self._remove(other)
        group = [c for c in group if c is child or c.spec.restart is not Restart.TEMPORARY]
        delay = 0.0
        backoff = child.spec.backoff
        if backoff is None and not counted:
            backoff = self.unavailable_backoff
        if backoff is not None:
            if now - child.started_at >= backoff.reset_after:
                child.backoff_attempt = 0
            delay = backoff.delay(child.backoff_attempt, self._rng)
            child.backoff_attempt += 1
        for c in group:
            c.state = ChildState.RESTARTING
        child.restarts += 1
        publish(ChildRestarted(self.name, child.spec.id, child.restarts, delay, now))
        log.info("child_restarted", supervisor=self.name, child=child.spec.id, delay=delay)
        assert self._nursery is not None
        self._nursery.start_soon(self._restart_later, group, delay)

    def _restart_group(self, child: _Child) -> list[_Child]:
        if self.dynamic or self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        if self.strategy is Strategy.ONE_FOR_ALL:
            return [
                c for c in self._children.values() if c is child or c.state != ChildState.STOPPED
            ]
        ordered = list(self._children.values())
        index = ordered.index(child)
        return [c for c in ordered[index:] if c is child or c.state != ChildState.STOPPED]

    async def _restart_later(self, group: list[_Child], delay: float) -> None:
        pending = trio.CancelScope()
        self._pending_restarts.add(pending)
        with pending:
            await trio.sleep(delay)
            async with self._lock:
                for c in group:
                    if c.state != ChildState.RESTARTING:
                        continue
                    try:
                        await self._start(c)
                    except (Exception, trio.Cancelled) as exc:
                        if isinstance(exc, trio.Cancelled):
                            raise
                        # a failed restart is a failure of that child: the strategy applies again
                        # (a start that found its dependency away stays UNAVAILABLE)
                        c.state = ChildState.RUNNING
                        self._post(
                            c, c.incarnation, classify_exit(exc) or Exit(ExitKind.ERROR, None, exc)
                        )
                        for rest in group:
                            if rest.state == ChildState.RESTARTING and rest is not c:
                                rest.state = ChildState.STOPPED
                        break
        self._pending_restarts.discard(pending)

    # -- starting and stopping children -------------------------------------------------------

    async def _start(self, child: _Child) -> object:
        assert self._nursery is not None
        if self._closing:
            # a child started after the stop would outlive it (its scope is shielded)
            msg = f"supervisor {self.name!r} is stopping: child {child.spec.id!r} not started"
            raise SupervisionError(msg)
        child.incarnation += 1
        child.state = ChildState.STARTING
        # Shielded so that an enclosing cancellation reaches children only through their
        # supervisor, which stops them one by one in reverse start order, each bounded by its
        # shutdown grace (a stop cancels this scope itself, which the shield does not block).
        # The scope is shielded, so a deadline around nursery.start() would not reach the
        # child: the scope's own deadline bounds the start instead, and started() lifts it
        # (a start can otherwise hang, see python-trio/trio#2258).
        child.scope = trio.CancelScope(
            shield=True, deadline=trio.current_time() + child.spec.start_grace
        )
        child.done = None
        child.exited = False
        child.stop_reason = None
        child.final = None
        try:
            face = await self._nursery.start(self._incarnation, child, child.incarnation)
        except BaseException:
            child.state = ChildState.STOPPED
            raise
        child.state = ChildState.RUNNING
        child.started_at = trio.current_time()
        publish(ChildStarted(self.name, child.spec.id, child.started_at))
        log.debug("child_started", supervisor=self.name, child=child.spec.id)
        return face

    async def _incarnation(
        self, child: _Child, incarnation: int, task_status: trio.TaskStatus[object]
    ) -> None:
        scope = child.scope
        assert scope is not None
        status = _Status(task_status, child, scope)
        error: BaseException | None = None
        # every log event of this actor (and of the tasks it starts) names it; bound in the
        # task's own context, which ends with it (no context manager kept per actor)
        structlog.contextvars.bind_contextvars(actor=child.spec.id, supervisor=self.name)
        try:
            with scope:
                await child.spec.start(*child.spec.args, task_status=status)
        except BaseException as exc:
            error = exc
        if not status.started_called:
            _ended(child, incarnation)
            if scope.cancel_called and child.stop_reason is None:
                msg = (
                    f"child {child.spec.id!r} of {self.name!r} did not report readiness "
                    f"within its start grace ({child.spec.start_grace}s)"
                )
                raise StartTimeout(msg) from error
            if error is not None:
                raise error
            msg = f"child {child.spec.id!r} of {self.name!r} returned before reporting readiness"
            raise SupervisionError(msg)
        current = child.incarnation == incarnation
        stopped_by_us = current and child.stop_reason is not None
        exit = classify_exit(
            error,
            own_cancel=stopped_by_us or (error is None and scope.cancelled_caught),
            own_reason=child.stop_reason if current else None,
        )
        if isinstance(status.face, ActorHandle):
            # a handle whose actor did not close its own mailbox still learns of the exit
            status.face._mark_exited(exit or Exit(ExitKind.SHUTDOWN, "cancelled"))
        if exit is None:
            _ended(child, incarnation)
            assert error is not None
            raise error
        if current:
            child.last_exit = child.final = exit
        _ended(child, incarnation)
        if not stopped_by_us:  # a stop is reported by _stop_child itself
            self._post(child, incarnation, exit)

    async def _stop_child(self, child: _Child, reason: str) -> None:
        if child.scope is None:
            child.state = ChildState.STOPPED
            return
        child.state = ChildState.STOPPING
        child.stop_reason = reason
        child.scope.cancel(reason=reason)
        with trio.move_on_after(child.spec.shutdown_grace, shield=True) as grace:
            if not child.exited:
                if child.done is None:
                    child.done = trio.Event()
                await child.done.wait()
        if grace.cancelled_caught:
            log.warning(
                "child_overstayed_grace",
                supervisor=self.name,
                child=child.spec.id,
                grace=child.spec.shutdown_grace,
            )
        child.state = ChildState.STOPPED
        # how it really ended (an error while stopping stays an error), or the stop's reason
        exit = child.final or Exit(ExitKind.SHUTDOWN, reason)
        child.last_exit = exit
        publish(ChildExited(self.name, child.spec.id, exit, trio.current_time()))

    async def _stop_all(self, reason: str) -> None:
        for child in reversed(list(self._children.values())):
            if child.state in (*_RUNNING, ChildState.STOPPING):
                await self._stop_child(child, reason)

    async def _terminate(self, id: str, reason: str) -> None:
        async with self._lock:
            child = self._find(id)
            if child is None:
                msg = f"supervisor {self.name!r} has no child {id!r}"
                raise UnknownChild(msg)
            await self._stop_child(child, reason)
            if self.dynamic or child.spec.restart is not Restart.PERMANENT:
                self._remove(child)

    def _check_room(self) -> None:
        """A dynamic supervisor refuses a child past ``max_children``."""

    async def _add_child(self, spec: ChildSpec) -> object:
        # admission is synchronous (no checkpoint between the checks and the insert), so
        # concurrent start_child calls can neither overshoot max_children nor share an id
        if self._nursery is None or self._closing:
            msg = f"supervisor {self.name!r} is not running"
            raise SupervisionError(msg)
        self._check_room()
        if self._find(spec.id) is not None:
            msg = f"supervisor {self.name!r} already has a child {spec.id!r}"
            raise SupervisionError(msg)
        child = _Child(spec, state=ChildState.STARTING)
        self._children[spec.id] = child
        try:
            if self.dynamic:
                # children of a dynamic supervisor are independent: they start in parallel
                return await self._start(child)
            async with self._lock:
                return await self._start(child)
        except BaseException:
            self._remove(child)
            raise

    def _find(self, id: str) -> _Child | None:
        return self._children.get(id)

    def _remove(self, child: _Child) -> None:
        if self._children.get(child.spec.id) is child:
            del self._children[child.spec.id]

    def _tree_node(self, state: ChildState, restarts: int) -> TreeNode:
        nodes = []
        for child in self._children.values():
            handle = _supervisor_of(child.face)
            if handle is not None and child.state in _RUNNING:
                nodes.append(handle._sup._tree_node(child.state, child.restarts))
            else:
                nodes.append(TreeNode(child.spec.id, "worker", child.state, child.restarts))
        kind = "dynamic_supervisor" if self.dynamic else "supervisor"
        return TreeNode(self.name, kind, state, restarts, tuple(nodes))


class DynamicSupervisor(Supervisor):
    """Children added at run time, of any spec, with no order; each restarts on its own and
    all stop in parallel. ``max_children`` bounds how many may run at once."""

    dynamic = True

    def __init__(
        self,
        name: str,
        *,
        max_children: int | None = None,
        intensity: int = 3,
        period: float = 5.0,
        unavailable_backoff: Backoff = UNAVAILABLE_BACKOFF,
    ) -> None:
        super().__init__(
            name,
            (),
            strategy=Strategy.ONE_FOR_ONE,
            intensity=intensity,
            period=period,
            unavailable_backoff=unavailable_backoff,
        )
        if max_children is not None and max_children < 1:
            msg = f"dynamic supervisor {name!r}: max_children must be >= 1, got {max_children}"
            raise ValueError(msg)
        self.max_children = max_children

    def _check_room(self) -> None:
        if self.max_children is not None and len(self._children) >= self.max_children:
            msg = f"dynamic supervisor {self.name!r} is full ({self.max_children} children)"
            raise MaxChildrenError(msg)

    async def _stop_all(self, reason: str) -> None:
        async with trio.open_nursery() as nursery:
            for child in list(self._children.values()):
                if child.state in (*_RUNNING, ChildState.STOPPING):
                    nursery.start_soon(self._stop_child, child, reason)


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A nursery wraps even one error in a group; a supervisor's parent wants the error."""
    if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], trio.Cancelled):
        inner = group.exceptions[0]
        return _unwrap(inner) if isinstance(inner, BaseExceptionGroup) else inner
    return group


def _should_restart(restart: Restart, exit: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit.kind in (ExitKind.ERROR, ExitKind.UNAVAILABLE)
    return False


def _supervisor_of(face: object) -> SupervisorHandle | None:
    """The supervisor a child runs: its face, or the face's ``supervisor`` attribute (an actor
    whose face is an object of its own, drawn in ``tree()`` with that supervisor's children)."""
    if isinstance(face, SupervisorHandle):
        return face
    handle = getattr(face, "supervisor", None)
    return handle if isinstance(handle, SupervisorHandle) else None


def tree() -> list[TreeNode]:
    """Snapshots of every live supervision tree in the process (roots only; nested inside)."""
    nested = {
        id(handle._sup)
        for sup in _live
        for child in sup._children.values()
        if (handle := _supervisor_of(child.face)) is not None
    }
    return [sup._tree_node(ChildState.RUNNING, 0) for sup in _live if id(sup) not in nested]
