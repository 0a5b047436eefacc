"""A client process driven over its stdin and stdout, every wait bounded: lines of stdout and of
stderr are read by threads into queues; a wait that times out or meets the end of the output
raises, quoting the end of stderr. Leaving the block terminates the process (SIGKILL after 10 s)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

STOP_GRACE = 10.0


class ClientFailed(AssertionError):
    """The client did not print what was awaited in time; the message quotes its stderr."""


class Child:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.both: queue.Queue[tuple[str, str] | None] = queue.Queue()  # (stream, line)
        self.err: list[str] = []  # every stderr line, for the failure message
        assert proc.stdout is not None and proc.stderr is not None
        for stream, name, q, keep in (
            (proc.stdout, "stdout", self.stdout, None),
            (proc.stderr, "stderr", self.stderr, self.err),
        ):
            threading.Thread(
                target=_pump, args=(stream, name, q, self.both, keep), daemon=True
            ).start()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float, *, stream: str = "stdout"
    ) -> str:
        """The first line of ``stream`` for which ``predicate`` holds (earlier lines are dropped).
        Use one way of reading per client: ``wait_for`` or ``wait_any``."""
        q = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = q.get(timeout=max(left, 0.001))
            except queue.Empty:
                self.fail(f"no awaited line on {stream} within {timeout:.0f}s")
            if line is None:
                self.fail(f"{stream} ended (exit status {self.proc.poll()})")
            if predicate(line):
                return line

    def wait_any(self, predicate: Callable[[str, str], bool], timeout: float) -> tuple[str, str]:
        """The first (stream, line) of stdout or stderr for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        ended = 0
        while True:
            try:
                item = self.both.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                self.fail(f"no awaited line within {timeout:.0f}s")
            if item is None:
                ended += 1
                if ended == 2:
                    self.fail(f"the output ended (exit status {self.proc.poll()})")
                continue
            if predicate(*item):
                return item

    def fail(self, why: str) -> None:
        tail = "\n".join(self.err[-30:])
        msg = f"{why}; the client's stderr ends:\n{tail}"
        raise ClientFailed(msg)

    def stop(self) -> int:
        """SIGTERM to the client's process group (a launcher's children too), SIGKILL after
        ``STOP_GRACE``; returns the client's exit status."""
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        # children that outlive the launcher still get the SIGTERM's effect: wait for the group
        deadline = time.monotonic() + STOP_GRACE
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.proc.pid):
            self._signal(signal.SIGKILL)
        return self.proc.returncode

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)  # the group this client leads (start_new_session)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _pump(
    stream: IO[str],
    name: str,
    q: queue.Queue[str | None],
    both: queue.Queue[tuple[str, str] | None],
    keep: list[str] | None,
) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            line = line.rstrip("\n")
            if keep is not None:
                keep.append(line)
            q.put(line)
            both.put((name, line))
    q.put(None)
    both.put(None)


@contextlib.contextmanager
def child(
    cmd: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Child]:
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,  # its own process group: stop() ends its children too
    )
    c = Child(proc)
    try:
        yield c
    finally:
        c.stop()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
