"""Progress of a long operator command, for humans: one line on stderr, rewritten in place on a
terminal, at most one line a second (and the last) otherwise. Silent for ``--json``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Call it with (done, total) as work completes; ``close()`` ends the line."""

    interval = 1.0  # seconds between lines when the output is not a terminal

    def __init__(self, label: str, *, enabled: bool = True, out: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self._last = 0.0
        self._shown: tuple[int, int] | None = None
        self._pending: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        self._pending = (done, total)
        now = time.monotonic()
        if self.tty or now - self._last >= self.interval or done >= total:
            self._last = now
            self._show(done, total)

    def _show(self, done: int, total: int) -> None:
        pct = 100 if total == 0 else done * 100 // total
        line = f"{self.label}: {done}/{total} ({pct}%)"
        self._shown = (done, total)
        if self.tty:
            self.out.write(f"\r\x1b[K{line}")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if not self.enabled or self._pending is None:
            return
        if self._shown != self._pending:
            self._show(*self._pending)
        if self.tty:
            self.out.write("\n")
            self.out.flush()
