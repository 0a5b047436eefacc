"""Named fault points: places a test can make raise, delay or hang. Free when nothing is armed."""

from __future__ import annotations

import math

import attrs
import trio

__all__ = ["FaultPoints", "fault_point", "faults"]


@attrs.define
class _Arming:
    error: BaseException | type[BaseException] | None
    delay: float | None
    hang: bool
    times: int | None


_active = False  # the one module-level flag fault_point() reads: true while any point is armed


class FaultPoints:
    """The process's fault points. Tests arm them; ``fault_point(name)`` fires them."""

    def __init__(self) -> None:
        self._armed: dict[str, _Arming] = {}
        self._hits: dict[str, int] = {}

    @property
    def active(self) -> bool:
        """Whether any fault point is armed."""
        return bool(self._armed)

    def _update(self) -> None:
        global _active
        _active = bool(self._armed)

    def arm(
        self,
        name: str,
        *,
        error: BaseException | type[BaseException] | None = None,
        delay: float | None = None,
        hang: bool = False,
        times: int | None = None,
    ) -> None:
        """Make ``fault_point(name)`` delay, then hang or raise, for the next ``times`` hits
        (every hit when None)."""
        if error is None and delay is None and not hang:
            msg = f"fault point {name!r}: arm it with error=, delay= or hang=True"
            raise ValueError(msg)
        if times is not None and times < 1:
            msg = f"fault point {name!r}: times must be at least 1 (or None for every hit), got {times}"
            raise ValueError(msg)
        self._armed[name] = _Arming(error, delay, hang, times)
        self._update()

    def disarm(self, name: str) -> None:
        self._armed.pop(name, None)
        self._update()

    def reset(self) -> None:
        self._armed.clear()
        self._hits.clear()
        self._update()

    def hits(self, name: str) -> int:
        """How many times an armed point fired."""
        return self._hits.get(name, 0)

    async def _fire(self, name: str) -> None:
        arming = self._armed.get(name)
        if arming is None:
            return
        self._hits[name] = self._hits.get(name, 0) + 1
        if arming.times is not None:
            arming.times -= 1
            if arming.times <= 0:
                self.disarm(name)
        if arming.delay:
            await trio.sleep(arming.delay)
        if arming.hang:
            await trio.sleep(math.inf)
        if arming.error is not None:
            error = arming.error
            raise error() if isinstance(error, type) else error


faults = FaultPoints()


async def fault_point(name: str) -> None:
    """A named place where a test may inject a fault; a flag check when none is armed."""
    if _active:
        await faults._fire(name)
