"""``steward serve`` as a subprocess: started on a data folder, ready once its ready file appears.

One way to run the real command for tests and benchmarks::

    with steward_serve("--workers", "3", env={"STEWARD_ADMIN_TOKEN": "x"}) as server:
        server.ready["mcp_url"]   # the ready document written by the node
        server.stop()             # SIGTERM; returns the exit status (optional: the block stops it)

A process that exits or writes no ready file within ``START_LIMIT`` raises :class:`ServeFailed`
quoting the end of its log (``folder/steward.log``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[2]
START_LIMIT = 120.0  # seconds until the ready file (a first start initialises its PostgreSQL)
STOP_GRACE = 60.0  # seconds between SIGTERM and SIGKILL
POLL = 0.05  # seconds between looks for the ready file
LOG_TAIL = 600  # characters of the log quoted by ServeFailed


class ServeFailed(Exception):
    """``steward serve`` exited or wrote no ready file in time; the message quotes its log."""


@attrs.define
class StewardProcess:
    """``python -m server.cli [--config F/steward.toml] serve --data-dir F/data --ready-file
    F/ready.json [args]``.

    ``folder`` holds the data folder, the ready file, the log and the configuration file (written
    from ``config`` when it is not empty); ``launcher`` prefixes the command (``taskset -c 0``);
    ``env`` is added to this process's environment; ``module`` is what ``python -m`` runs (a
    benchmark's node takes the same command line). ``start()`` may be called again after
    ``stop()`` or ``kill()``: the node comes back on the same data folder.
    """

    folder: Path
    args: Sequence[str] = ()
    config: str = ""
    env: Mapping[str, str] = attrs.field(factory=dict)
    launcher: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = attrs.field(factory=dict)
    module: str = "server.cli"

    @property
    def ready_path(self) -> Path:
        return self.folder / "ready.json"

    @property
    def log_path(self) -> Path:
        return self.folder / "steward.log"

    @property
    def pid(self) -> int:
        if self.proc is None:
            msg = "steward serve has not been started"
            raise RuntimeError(msg)
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            *self.launcher,
            sys.executable,
            "-m",
            self.module,
            *(("--config", str(self.folder / "steward.toml")) if self.config else ()),
            "serve",
            "--data-dir",
            str(self.folder / "data"),
            "--ready-file",
            str(self.ready_path),
            *self.args,
        ]

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip()
            return text[-LOG_TAIL:] if text else "(empty log)"
        return "(no log)"

    def start(self) -> dict[str, Any]:
        """Launch the process and wait for its ready file; returns the ready document."""
        self.ready_path.unlink(missing_ok=True)
        if self.config:
            (self.folder / "steward.toml").write_text(self.config)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_LIMIT
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                msg = f"steward serve exited with status {self.proc.returncode}: {self.log_tail()}"
                raise ServeFailed(msg)
            if time.monotonic() > deadline:
                self.kill()
                msg = f"steward serve wrote no ready file within {START_LIMIT}s: {self.log_tail()}"
                raise ServeFailed(msg)
            time.sleep(POLL)
        self.ready = json.loads(self.ready_path.read_text())
        return self.ready

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE``; returns the exit status (None if never
        started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap (the embedded PostgreSQL outlives it; the next start reuses it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def steward_serve(
    *args: str,
    config: str = "",
    env: Mapping[str, str] | None = None,
    launcher: Sequence[str] = (),
    folder: Path | None = None,
    module: str = "server.cli",
) -> Iterator[StewardProcess]:
    """A started ``steward serve [args]``, stopped at the end of the block. Without ``folder`` a
    fresh temporary one is used and removed afterwards; a given folder is kept."""
    own = folder is None
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="stw-serve-"))
        os.chmod(folder, 0o755)  # the embedded PostgreSQL may run as another user
    server = StewardProcess(folder, args, config, env or {}, launcher, module=module)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if own:
            shutil.rmtree(folder, ignore_errors=True)
