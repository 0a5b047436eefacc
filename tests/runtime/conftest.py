"""Runtime-only test helpers: the task-leak check a stopped tree must pass."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing


def _descendants(nursery: trio.Nursery) -> Iterator[trio.lowlevel.Task]:
    for task in nursery.child_tasks:
        yield task
        for inner in task.child_nurseries:
            yield from _descendants(inner)


async def assert_no_tasks_left(nursery: trio.Nursery) -> None:
    """After a tree is stopped: no task it started (workers, watchdogs, pending restarts,
    nested supervisors) still runs under ``nursery``."""
    await trio.testing.wait_all_tasks_blocked()
    left = sorted(task.name for task in _descendants(nursery))
    assert left == [], f"tasks still running after the tree stopped: {left}"


@pytest.fixture
def no_tasks_left() -> Callable[[trio.Nursery], Awaitable[None]]:
    """The leak check as a fixture: ``await no_tasks_left(nursery)`` after ``handle.stop()``."""
    return assert_no_tasks_left
