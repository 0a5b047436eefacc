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

import structlog
import trio

__all__ = ["EmbeddedPostgres", "PostgresNotFound", "PostgresStartError", "find_postgres_bindir"]

log = structlog.get_logger("embedded_pg")

SERVICE_USER = "steward-pg"
DB_USER = "steward"
_NEEDED = ("initdb", "pg_ctl", "postgres")


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresStartError(RuntimeError):
    """The cluster could not be created or started; the message carries the log's tail."""


def _has_all(bindir: Path) -> bool:
    return all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in _NEEDED)


def find_postgres_bindir(search: Sequence[str] | None = None) -> Path:
    """Find initdb, pg_ctl and postgres: PATH, then ``pg_config --bindir``, then
    ``/usr/lib/postgresql/*/bin`` (highest version first).

    Raises:
        PostgresNotFound: with the package to install.
    """
    candidates: list[Path] = []
    if search is not None:
        candidates = [Path(p) for p in search]
    else:
        initdb = shutil.which("initdb")
        if initdb:
            candidates.append(Path(initdb).parent)
        pg_config = shutil.which("pg_config")
        if pg_config:
            try:
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
                )
                candidates.append(Path(out.stdout.strip()))
            except (OSError, subprocess.SubprocessError):
                pass

        def version(path: str) -> float:
            try:
                return float(Path(path).parent.name)
            except ValueError:
                return 0.0

        candidates += [
            Path(p)
            for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
        ]
    for bindir in candidates:
        if _has_all(bindir):
            return bindir
    msg = (
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH, "
        "in `pg_config --bindir` and in /usr/lib/postgresql/*/bin); install the server package "
        "(Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; "
        "macOS: `brew install postgresql`) or set STEWARD_DATABASE_URL to an existing server"
    )
    raise PostgresNotFound(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``.

    Args:
        data_dir: the cluster's folder (created and initialized when empty; kept between runs).
        port: the TCP port on 127.0.0.1 (a free one when None; kept across restarts).
        durable: fsync on (serving) or off (throwaway test clusters).
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
        self.port = port or self._running_port() or free_port()
        self.durable = durable
        self.bindir = bindir or find_postgres_bindir()
        self._as_root = os.geteuid() == 0
        self.started_here = False  # whether start() started it (or found it running)

    def _running_port(self) -> int | None:
        """A cluster left running in this folder (its owner was killed): reuse it on its port."""
        try:
            lines = (self.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError, IndexError):
            return None
        return port if stat.rsplit(")", 1)[-1].split()[0] != "Z" else None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL over TCP on 127.0.0.1."""
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        # a killed postmaster whose parent never reaps it stays a zombie: not running
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, ValueError, IndexError):
            return None

    def _command(self, args: list[str]) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", SERVICE_USER, "--", *args]
        return args

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_root:
            user = _ensure_service_user()
            for path in (self.data_dir, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            if not self.log_file.exists():
                self.log_file.touch()
            os.chown(self.log_file, user.pw_uid, user.pw_gid)
            # the service user must be able to reach the folder
            parent = self.data_dir.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent
        if len(str(self.socket_dir / f".s.PGSQL.{self.port}")) > 100:
            msg = f"socket path under {self.socket_dir} is too long for a unix socket; use a shorter data folder"
            raise PostgresStartError(msg)

    async def _run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            self._command(args), capture_stdout=True, capture_stderr=True, check=False
        )

    async def initdb(self) -> None:
        """Create the cluster if the folder holds none."""
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
            msg = (
                f"initdb failed in {self.pgdata}: {result.stderr.decode(errors='replace')[-2000:]}"
            )
            raise PostgresStartError(msg)
        log.info("cluster_created", data_dir=str(self.data_dir))

    async def start(self) -> None:
        """Create (if needed) and start the cluster; returns once it accepts connections."""
        await self.initdb()
        if self.running:
            self.started_here = False
            return
        self.started_here = True
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.socket_dir}",
            "-c max_connections=200",
            "-c shared_buffers=64MB",
        ]
        if not self.durable:
            # fsync off survives a killed server (the OS keeps the pages); synchronous_commit stays
            # on so that an acknowledged commit survives a kill, as the fault tests require
            options += ["-c fsync=off", "-c full_page_writes=off"]
        result = await self._run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join(options),
            ]
        )
        if result.returncode != 0:
            msg = f"PostgreSQL did not start on port {self.port}: {result.stderr.decode(errors='replace')[-500:]}\n{self._log_tail()}"
            raise PostgresStartError(msg)
        await self._wait_accepting()
        log.info("cluster_started", port=self.port, data_dir=str(self.data_dir))

    async def _wait_accepting(self) -> None:
        with trio.move_on_after(30):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return
        msg = f"PostgreSQL on port {self.port} did not accept connections within 30s\n{self._log_tail()}"
        raise PostgresStartError(msg)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "log tail:\n" + "\n".join(text[-lines:])

    async def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``smart``, ``fast`` or ``immediate``); nothing when it is not running."""
        if not self.running:
            return
        result = await self._run(
            [
                str(self.bindir / "pg_ctl"),
                "stop",
                "-D",
                str(self.pgdata),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
            ]
        )
        if result.returncode != 0 and self.running:
            msg = f"PostgreSQL did not stop: {result.stderr.decode(errors='replace')[-500:]}"
            raise PostgresStartError(msg)
        log.info("cluster_stopped", port=self.port, mode=mode)

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, for fault tests). Its children exit on their own."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        # wait until the children noticed, so a restart finds the shared memory free
        for _ in range(400):
            if not _any_backend_alive(self.pgdata):
                break
            time.sleep(0.025)
        # the killed postmaster may linger as an unreaped zombie whose pid PostgreSQL would take
        # for a live server: the lock file of a dead cluster goes, as after a machine crash
        for stale in (
            self.pgdata / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.port}.lock",
            self.socket_dir / f".s.PGSQL.{self.port}",
        ):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        log.info("cluster_killed", port=self.port)


def _any_backend_alive(pgdata: Path) -> bool:
    """Whether any process still has the cluster's folder as its working directory."""
    target = str(pgdata)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == target:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat.rsplit(")", 1)[-1].split()[0] != "Z":
                    return True
        except OSError:
            continue
    return False
