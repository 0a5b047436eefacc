"""A private PostgreSQL cluster: found on the machine, created in a data folder, started, stopped.

``steward serve`` uses it when no database URL is configured (keeping the folder between runs);
the test suite uses it for throwaway clusters. PostgreSQL refuses to run as root, so as root the
cluster belongs to an unprivileged system user created once.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import structlog
import trio

__all__ = [
    "EmbeddedPostgres",
    "PostgresNotFound",
    "PostgresStartError",
    "StopMode",
    "find_postgres_bindir",
]

log = structlog.get_logger("embedded_pg")

StopMode = Literal["smart", "fast", "immediate"]

SERVICE_USER = "steward-pg"
DB_USER = "steward"
_NEEDED = ("initdb", "pg_ctl", "postgres")
# where Debian and Ubuntu install the server; one folder per major version
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"

# policy durations, in seconds
START_WAIT = 60  # pg_ctl start -w: crash recovery after a kill may replay WAL
ACCEPT_WAIT = 30.0  # after pg_ctl reports the start, until a TCP connect succeeds
STOP_WAIT = 60  # pg_ctl stop -w
KILL_WAIT = 10.0  # after SIGKILL, until the postmaster's children have exited
PORT_ATTEMPTS = 3  # a free port found by binding may be taken before PostgreSQL binds it
MAX_CONNECTIONS = 200
# a unix socket path is at most 107 bytes; the longest file PostgreSQL puts there is
# ".s.PGSQL.<port>.lock"
_SOCKET_PATH_LIMIT = 107


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresStartError(RuntimeError):
    """The cluster could not be created, started or stopped; the message carries the log's tail."""


def _has_all(bindir: Path) -> bool:
    return all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in _NEEDED)


def _version_key(bindir: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/16/bin`` -> (16,); ``.../9.6/bin`` -> (9, 6); unparsable -> ()."""
    try:
        return tuple(int(part) for part in Path(bindir).parent.name.split("."))
    except ValueError:
        return ()


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def find_postgres_bindir(search: Sequence[str] | None = None) -> Path:
    """Find the folder holding initdb, pg_ctl and postgres.

    Looks on PATH, then in ``pg_config --bindir``, then in ``/usr/lib/postgresql/*/bin``
    (highest version first).

    Args:
        search: look only in these folders instead.

    Raises:
        PostgresNotFound: naming the package to install.
    """
    candidates: list[Path] = []
    if search is not None:
        candidates = [Path(p) for p in search]
    else:
        initdb = shutil.which("initdb")
        if initdb is not None:
            # a symlink on PATH (/usr/local/bin/initdb) stands for the real installation
            candidates += [Path(initdb).resolve().parent, Path(initdb).parent]
        bindir = _pg_config_bindir()
        if bindir is not None:
            candidates.append(bindir)
        candidates += [
            Path(p) for p in sorted(glob.glob(DEBIAN_BINDIRS), key=_version_key, reverse=True)
        ]
    for candidate in candidates:
        if _has_all(candidate):
            return candidate
    msg = (
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH, "
        f"in `pg_config --bindir` and in {DEBIAN_BINDIRS}); install the server package "
        "(Debian/Ubuntu: `apt-get install postgresql`; Fedora/RHEL: `dnf install postgresql-server`; "
        "macOS: `brew install postgresql`) or set STEWARD_DATABASE_URL to an existing server"
    )
    raise PostgresNotFound(msg)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ensure_service_user() -> pwd.struct_passwd:
    """The unprivileged system user that owns clusters created as root (created once)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # another process may have created it in the meantime: useradd failed, the user exists
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        msg = (
            f"PostgreSQL refuses to run as root and the system user {SERVICE_USER!r} "
            f"could not be created: {result.stderr.strip() or f'useradd exited {result.returncode}'}"
        )
        raise PostgresStartError(msg) from None
    log.info("service_user_created", user=SERVICE_USER, uid=user.pw_uid)
    return user


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a killed, unreaped zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1 and on a socket inside it.

    Args:
        data_dir: the cluster's folder (initialized when empty; kept between runs). Its parents
            must be traversable by the service user when running as root.
        port: the TCP port (a free one when None; kept across restarts of this object).
        durable: fsync on (serving) or off (throwaway test clusters).
        bindir: the server binaries (found with `find_postgres_bindir` when None).

    Raises:
        PostgresNotFound: no server binaries on this machine.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        durable: bool = True,
        bindir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._port_chosen = port is None
        self.port = port or self._running_port() or free_port()
        self.durable = durable
        self.bindir = bindir or find_postgres_bindir()
        self._as_root = os.geteuid() == 0
        # whether this object owns the running cluster: it started it, or adopted it from an owner
        # that died; False when another live process started it (then `stop` is left to that one)
        self.started_here = False

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def owner_file(self) -> Path:
        """The pid of the process that owns the running cluster."""
        return self.data_dir / "owner.pid"

    def _owner_alive(self) -> bool:
        try:
            pid = int(self.owner_file.read_text())
        except (OSError, ValueError):
            return False
        return _alive(pid)

    def _claim(self) -> None:
        self.owner_file.write_text(f"{os.getpid()}\n")
        self.started_here = True

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` over TCP on 127.0.0.1."""
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        """Whether the cluster's postmaster is alive (whoever started it)."""
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _running_port(self) -> int | None:
        """The port of a cluster left running in this folder (its owner died): reused."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return port if _alive(pid) else None

    async def _run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a server binary as the cluster's owner, from the data folder (the caller's
        working directory may be closed to that user)."""
        if self._as_root:
            user = pwd.getpwnam(SERVICE_USER)
            return await trio.run_process(
                args,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=self.data_dir,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
            )
        return await trio.run_process(
            args, capture_stdout=True, capture_stderr=True, check=False, cwd=self.data_dir
        )

    def _prepare_dirs(self) -> None:
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}.lock"
        if len(os.fsencode(socket_path)) > _SOCKET_PATH_LIMIT:
            msg = (
                f"the unix socket path {str(socket_path)!r} is longer than {_SOCKET_PATH_LIMIT} "
                "bytes; use a shorter data folder"
            )
            raise PostgresStartError(msg)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.log_file.touch()
        if not self._as_root:
            return
        user = _ensure_service_user()
        for path in (self.data_dir, self.socket_dir, self.log_file):
            os.chown(path, user.pw_uid, user.pw_gid)
        # the service user must be able to reach the folder: traverse (not list) its parents
        parent = self.data_dir.parent
        while parent != parent.parent:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
                log.info("data_dir_parent_made_traversable", path=str(parent), user=SERVICE_USER)
            parent = parent.parent

    async def initdb(self) -> None:
        """Create the cluster unless the folder already holds one.

        Raises:
            PostgresStartError: initdb failed; the message carries its output.
        """
        self._prepare_dirs()
        if (self.pgdata / "PG_VERSION").exists():
            return
        args = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            f"--username={DB_USER}",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.durable:
            args.append("--no-sync")
        result = await self._run(args)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
            msg = f"initdb exited {result.returncode} in {self.pgdata}: {output}"
            raise PostgresStartError(msg)
        log.info("cluster_created", data_dir=str(self.data_dir))

    async def start(self) -> None:
        """Create (if needed) and start the cluster; returns once it accepts connections.

        A cluster already running in the folder is used as it is, and adopted (``started_here``)
        when the process that started it has died. When the port was chosen here and another
        process took it first, a new one is chosen (a bounded number of times).

        Raises:
            PostgresStartError: with the tail of the cluster's log.
        """
        await self.initdb()
        if self.running:
            if self._owner_alive():
                self.started_here = False
            else:
                self._claim()
                log.info("cluster_adopted", port=self.port, data_dir=str(self.data_dir))
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_offset = self.log_file.stat().st_size
            result = await self._run(self._start_command())
            if result.returncode == 0:
                break
            tail = self._log_tail(log_offset)
            if self._port_chosen and "Address already in use" in tail and attempt < PORT_ATTEMPTS:
                log.info("cluster_port_taken", port=self.port, attempt=attempt)
                self.port = free_port()
                continue
            stderr = result.stderr.decode(errors="replace").strip()[-500:]
            msg = f"PostgreSQL did not start on port {self.port} (pg_ctl: {stderr})\n{tail}"
            raise PostgresStartError(msg)
        self._claim()
        await self._wait_accepting()
        log.info("cluster_started", port=self.port, data_dir=str(self.data_dir))

    def _start_command(self) -> list[str]:
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.socket_dir}",
            f"-c max_connections={MAX_CONNECTIONS}",
            "-c shared_buffers=64MB",
        ]
        if not self.durable:
            # fsync off survives a killed server (the OS keeps the pages); synchronous_commit stays
            # on so that an acknowledged commit survives a kill, as the fault tests require
            options += ["-c fsync=off", "-c full_page_writes=off"]
        return [
            str(self.bindir / "pg_ctl"),
            "start",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(START_WAIT),
            "-o",
            " ".join(options),
        ]

    async def _wait_accepting(self) -> None:
        with trio.move_on_after(ACCEPT_WAIT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return
        msg = (
            f"PostgreSQL on port {self.port} did not accept connections within "
            f"{ACCEPT_WAIT}s\n{self._log_tail()}"
        )
        raise PostgresStartError(msg)

    def _log_tail(self, offset: int = 0, lines: int = 20) -> str:
        """The last lines of the cluster's log written since ``offset``."""
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_file})"
        return f"log tail ({self.log_file}):\n" + "\n".join(text[-lines:])

    async def stop(self, mode: StopMode = "fast") -> None:
        """Stop the cluster; nothing when it is not running.

        Args:
            mode: pg_ctl's shutdown mode: ``smart`` waits for clients, ``fast`` disconnects them,
                ``immediate`` aborts (crash recovery at the next start).

        Raises:
            PostgresStartError: it is still running after pg_ctl gave up.
        """
        if not self.running:
            return
        args = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", mode]
        result = await self._run([*args, "-w", "-t", str(STOP_WAIT)])
        if result.returncode != 0 and self.running:
            stderr = result.stderr.decode(errors="replace").strip()[-500:]
            msg = f"PostgreSQL on port {self.port} did not stop ({mode}) within {STOP_WAIT}s: {stderr}"
            raise PostgresStartError(msg)
        with contextlib.suppress(FileNotFoundError):
            self.owner_file.unlink()
        self.started_here = False
        log.info("cluster_stopped", port=self.port, mode=mode)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (for fault tests).

        Returns once its children have exited (bounded by ``KILL_WAIT``), so that a `start`
        finds the shared memory free and recovers from the crash.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + KILL_WAIT
        while _any_process_in(self.pgdata) and time.monotonic() < deadline:
            time.sleep(0.025)
        # the killed postmaster may linger as an unreaped zombie whose pid PostgreSQL would take
        # for a live server: the lock files of the dead cluster go, as after a machine crash
        for stale in (
            self.pgdata / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.port}.lock",
            self.socket_dir / f".s.PGSQL.{self.port}",
        ):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        log.info("cluster_killed", port=self.port, pid=pid)


def _any_process_in(pgdata: Path) -> bool:
    """Whether a live process has the cluster's folder as its working directory (every
    PostgreSQL process does)."""
    target = str(pgdata)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == target and _alive(int(entry)):
                return True
        except OSError:
            continue
    return False
