"""The embedded PostgreSQL: found, created, started, stopped, killed, and kept between runs."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

import server.postgres._binaries as pg_binaries
import server.postgres._embedded as embedded
from server import EmbeddedPostgres, PostgresNotFound, PostgresStartError, find_postgres_bindir
from server.postgres._embedded import ADMIN_USER, DB_NAME, RUNTIME_USER
from tests.harness._pg import Cluster, create_database, drop_database, psql, psql_binary


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A folder under /tmp (short socket paths; parents traversable by the service user)."""
    folder = Path(tempfile.mkdtemp(prefix="stw-e-", dir="/tmp"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def no_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing on PATH, no wheel, and the Debian folders searched under an empty tmp_path."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pg_binaries, "DEBIAN_BINDIRS", str(tmp_path / "lib/postgresql/*/bin"))
    monkeypatch.setattr(pg_binaries, "WHEEL_MODULE", "no_such_wheel_module")
    monkeypatch.delenv(pg_binaries.BINARIES_ENV, raising=False)
    return tmp_path


def psql_socket(pg: EmbeddedPostgres, sql: str) -> str:
    """psql over the cluster's unix socket, as the runtime role with its password."""
    where = ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", RUNTIME_USER, "-d", DB_NAME]
    out = subprocess.run(
        [psql_binary(), *where, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGPASSWORD": pg.credentials().runtime},
    )
    if out.returncode != 0:
        msg = f"psql failed: {out.stderr.strip()}"
        raise RuntimeError(msg)
    return out.stdout.strip()


def test_missing_binaries_name_the_package_to_install(no_binaries: Path) -> None:
    with pytest.raises(PostgresNotFound, match=r"apt-get install postgresql`"):
        EmbeddedPostgres(no_binaries / "pg")
    assert not (no_binaries / "pg").exists()


def test_the_highest_complete_installed_version_is_chosen(no_binaries: Path) -> None:
    for version, names in {
        "9.6": ("initdb", "pg_ctl", "postgres"),
        "10": ("initdb", "pg_ctl", "postgres"),
        "16": ("initdb", "pg_ctl"),  # no server binary: not an installation
    }.items():
        bindir = no_binaries / "lib/postgresql" / version / "bin"
        bindir.mkdir(parents=True)
        for name in names:
            (bindir / name).write_text("#!/bin/sh\n")
            (bindir / name).chmod(0o755)
    assert find_postgres_bindir() == no_binaries / "lib/postgresql/10/bin"


def test_binaries_are_found_on_this_machine() -> None:
    bindir = find_postgres_bindir()
    assert all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


async def test_a_cluster_starts_stops_and_recovers_from_a_kill(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, durable=False)
    assert not pg.running
    await pg.start()
    try:
        assert pg.running and pg.started_here
        assert pg.socket_dir.parent == data_dir and pg.log_file.parent == data_dir
        assert psql_socket(pg, "SELECT 1") == "1"
        assert psql(pg.dsn(), "SHOW listen_addresses") == "127.0.0.1"
        assert psql(pg.dsn(), "SHOW fsync") == "off"
        if os.geteuid() == 0:
            owner = pwd.getpwuid(pg.pgdata.stat().st_uid).pw_name
            assert owner == "steward-pg"
            data_directory = "SELECT current_setting('data_directory')"
            assert psql(pg.admin_dsn(), data_directory) == str(pg.pgdata)
        psql(pg.dsn(), "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")

        await pg.stop()
        assert not pg.running
        with pytest.raises(RuntimeError, match="psql failed"):
            psql_socket(pg, "SELECT 1")

        await pg.start()
        assert psql(pg.dsn(), "INSERT INTO t VALUES (2); SELECT count(*) FROM t") == "2"

        pg.kill()
        assert not pg.running
        assert not embedded._any_process_in(pg.pgdata), "a backend outlived its postmaster"
        with pytest.raises(RuntimeError, match="psql failed"):
            psql(pg.dsn(), "SELECT 1")

        await pg.start()  # crash recovery: the committed rows are there
        assert psql_socket(pg, "SELECT sum(v) FROM t") == "3"
        assert "database system was interrupted" in pg.log_file.read_text()
    finally:
        await pg.stop("immediate")
    assert not pg.running
    assert not embedded._any_process_in(pg.pgdata)


async def test_the_data_folder_is_kept_between_runs(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    await first.start()
    try:
        psql(first.dsn(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('from run 1')")
        # a second owner finds the cluster running on its port and leaves it to the first
        second = EmbeddedPostgres(data_dir)
        assert second.port == first.port
        await second.start()
        assert not second.started_here
    finally:
        await first.stop()
    assert not first.running

    later = EmbeddedPostgres(data_dir)
    await later.start()
    try:
        assert later.started_here
        assert psql(later.dsn(), "SELECT v FROM kept") == "from run 1"
    finally:
        await later.stop()


async def test_a_cluster_whose_owner_died_is_adopted_and_stopped_by_the_next(
    data_dir: Path,
) -> None:
    first = EmbeddedPostgres(data_dir, durable=False)
    await first.start()
    try:
        dead = await trio.lowlevel.open_process(["true"])
        await dead.wait()  # its pid no longer runs
        first.owner_file.write_text(f"{dead.pid}\n")  # as if the owner had been killed
        heir = EmbeddedPostgres(data_dir, durable=False)
        await heir.start()
        assert heir.started_here and heir.port == first.port
        assert heir.owner_file.read_text().strip() == str(os.getpid())
        await heir.stop()
        assert not first.running and not heir.owner_file.exists()
    finally:
        await first.stop("immediate")


async def test_a_start_that_fails_reports_the_log_tail(data_dir: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    try:
        pg = EmbeddedPostgres(data_dir, port=busy, durable=False)
        with pytest.raises(PostgresStartError) as failed:
            await pg.start()
        message = str(failed.value)
        assert f"did not start on port {busy}" in message
        assert "log tail" in message and "Address already in use" in message
        assert not pg.running
    finally:
        holder.close()


async def test_a_port_chosen_here_and_taken_meanwhile_is_replaced(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    ports = iter([busy])
    real_free_port = embedded.free_port
    monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        pg = EmbeddedPostgres(data_dir, durable=False)
        assert pg.port == busy
        await pg.start()
        try:
            assert pg.port != busy
            assert psql(pg.dsn(), "SELECT 1") == "1"
        finally:
            await pg.stop("immediate")
    finally:
        holder.close()


async def test_a_data_folder_too_long_for_a_unix_socket_is_refused() -> None:
    folder = Path("/tmp") / ("x" * 100)
    pg = EmbeddedPostgres(folder)
    with pytest.raises(
        PostgresStartError, match="longer than 107 bytes; use a shorter data folder"
    ):
        await pg.start()
    assert not folder.exists()


def test_fresh_databases_are_isolated_and_dropped(pg_cluster: Cluster, fresh_db: str) -> None:
    psql(fresh_db, "CREATE TABLE mine (v int)")
    assert psql(fresh_db, "SELECT count(*) FROM mine") == "0"
    assert "mine" not in psql(pg_cluster.admin_dsn("postgres"), "SELECT tablename FROM pg_tables")

    other = create_database(pg_cluster)
    exists = f"SELECT count(*) FROM pg_database WHERE datname = '{other}'"
    assert psql(pg_cluster.admin_dsn("postgres"), exists) == "1"
    drop_database(pg_cluster, other)
    assert psql(pg_cluster.admin_dsn("postgres"), exists) == "0"


def test_the_session_cluster_answers_on_its_socket_in_its_data_folder(pg_cluster: Cluster) -> None:
    if not isinstance(pg_cluster, EmbeddedPostgres):
        pytest.skip("DATABASE_URL points at an existing server: it has no socket folder of ours")
    assert pg_cluster.running and pg_cluster.socket_dir.parent == pg_cluster.data_dir
    # no server address: the connection came over the socket
    assert psql_socket(pg_cluster, "SELECT inet_server_addr() IS NULL") == "t"


async def test_a_test_run_killed_before_its_teardown_leaves_no_cluster_behind() -> None:
    script = (
        "from tests.harness._pg import start_cluster\n"
        "s = start_cluster()\n"
        "print('READY', s.folder, s.reaper.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = await trio.lowlevel.open_process(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert run.stdout is not None
        output = b""
        with trio.fail_after(60):  # structlog's events come first on the same stdout
            while not (b"READY " in output and output.endswith(b"\n")):
                chunk = await run.stdout.receive_some(4096)
                assert chunk, f"the run exited before its cluster started: {output!r}"
                output += chunk
        folder_text, reaper_pid = output.decode().rpartition("READY ")[2].split()
        folder = Path(folder_text)
        postmaster = int((folder / "pgdata/postmaster.pid").read_text().split()[0])
        assert embedded._alive(postmaster)
    finally:
        run.kill()
        await run.wait()
    with trio.fail_after(30):
        while embedded._alive(postmaster) or folder.exists() or embedded._alive(int(reaper_pid)):
            await trio.sleep(0.1)


# -- the cluster is Steward's alone -------------------------------------------------------------


def as_nobody(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``args`` run as the OS user nobody (another local user of the machine)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ["PATH"], "HOME": "/", **env},
    )


@pytest.fixture
async def private_cluster(data_dir: Path) -> AsyncIterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(data_dir, durable=False)
    await pg.start()
    try:
        yield pg
    finally:
        await pg.stop("immediate")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another OS user needs root")
async def test_another_os_user_cannot_connect_nor_read_the_passwords(
    private_cluster: EmbeddedPostgres,
) -> None:
    pg = private_cluster
    roles = (ADMIN_USER, RUNTIME_USER, "postgres")
    for user in roles:  # over TCP: every role asks for its password
        for database in ("postgres", DB_NAME, "template1"):
            url = f"postgresql://{user}@127.0.0.1:{pg.port}/{database}"
            out = as_nobody([psql_binary(), "-X", "-w", url, "-Atc", "SELECT 1"])
            assert out.returncode != 0 and out.stdout == "", out
            assert "no password supplied" in out.stderr, out.stderr
            guessed = as_nobody(
                [psql_binary(), "-X", url, "-Atc", "SELECT 1"], PGPASSWORD="steward"
            )
            assert f'password authentication failed for user "{user}"' in guessed.stderr
    for user in roles:  # over the socket: its folder is closed
        where = ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", user, "-d", DB_NAME]
        out = as_nobody([psql_binary(), "-X", "-w", *where, "-Atc", "SELECT 1"])
        assert out.returncode != 0 and out.stdout == ""
        assert "Permission denied" in out.stderr, out.stderr
    # the passwords: neither readable nor even listed
    for path in (pg.credentials_file, pg.data_dir):
        out = as_nobody(["cat" if path.is_file() else "ls", str(path)])
        assert out.returncode != 0 and "Permission denied" in out.stderr, out
    assert stat.S_IMODE(pg.credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pg.socket_dir.stat().st_mode) == 0o700
    assert pg.credentials_file.stat().st_uid == os.geteuid()
    # and Steward itself still connects, over TCP and over the socket
    assert psql(pg.dsn(), "SELECT current_user") == RUNTIME_USER
    assert psql_socket(pg, "SELECT current_user") == RUNTIME_USER


async def test_the_runtime_role_owns_its_database_and_nothing_more(
    private_cluster: EmbeddedPostgres,
) -> None:
    pg = private_cluster
    role = "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles"
    assert psql(pg.dsn(), f"{role} WHERE rolname = current_user") == "f|f|f|f|f"
    assert (
        psql(
            pg.dsn(),
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
        )
        == RUNTIME_USER
    )
    psql(pg.dsn(), "CREATE TABLE mine (v int); INSERT INTO mine VALUES (1)")
    for denied in (
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE ROLE intruder SUPERUSER",
        "ALTER ROLE current_user SUPERUSER",
        "CREATE DATABASE other",
    ):
        with pytest.raises(RuntimeError, match=r"permission denied|must be superuser"):
            psql(pg.dsn(), denied)
    with pytest.raises(RuntimeError, match="permission denied for database"):
        psql(pg.dsn("postgres"), "SELECT 1")
    # the passwords never reach the server in clear: it stores SCRAM verifiers
    stored = psql(pg.admin_dsn(), "SELECT rolpassword FROM pg_authid WHERE rolcanlogin")
    assert all(line.startswith("SCRAM-SHA-256$") for line in stored.splitlines())
    assert pg.credentials().runtime not in stored and pg.credentials().admin not in stored
    assert pg.credentials().runtime not in pg.log_file.read_text()


async def start_as_older_steward(pg: EmbeddedPostgres) -> str:
    """Create and start a cluster as Steward did before it had passwords (initdb --auth=trust,
    the bootstrap superuser serving, its data in ``postgres``); its DSN."""
    pg._prepare_dirs()
    result = await pg._run(
        [
            str(pg.bindir / "initdb"),
            "-D",
            str(pg.pgdata),
            "--auth=trust",
            "--username=steward",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
    )
    assert result.returncode == 0, result.stderr
    started = await pg._run(
        [
            str(pg.bindir / "pg_ctl"),
            "start",
            "-D",
            str(pg.pgdata),
            "-l",
            str(pg.log_file),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -c port={pg.port} "
            f"-c unix_socket_directories={pg.socket_dir}",
        ]
    )
    assert started.returncode == 0, started.stderr
    return f"postgresql://steward@127.0.0.1:{pg.port}/postgres"


async def test_a_folder_made_by_an_older_steward_is_upgraded_in_place(data_dir: Path) -> None:
    from actors import migrate

    old = EmbeddedPostgres(data_dir, durable=False)
    old_dsn = await start_as_older_steward(old)
    try:
        assert await migrate(old_dsn)
        psql(
            old_dsn,
            "INSERT INTO users (user_id, issuer, subject, tier) "
            "VALUES ('idp|carol', 'idp', 'carol', 'enterprise');"
            "INSERT INTO cluster_events (kind, user_id) VALUES ('revoke_user', 'idp|carol')",
        )
        assert psql(old_dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "t"
    finally:
        await old.stop("fast")
    assert not old.credentials_file.exists()

    pg = EmbeddedPostgres(data_dir, durable=False)
    await pg.start()
    try:
        dsn = pg.dsn()
        # the data, read back as the runtime role, in its own database
        assert psql(dsn, "SELECT tier FROM users WHERE subject = 'carol'") == "enterprise"
        assert psql(dsn, "SELECT kind FROM cluster_events") == "revoke_user"
        assert await migrate(dsn) == []  # nothing pending: the schema came along
        # every table passed to the runtime role: it writes, uses the sequences, alters
        owners = psql(
            dsn,
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
        )
        assert owners == RUNTIME_USER
        psql(
            dsn,
            "INSERT INTO cluster_events (kind) VALUES ('tier_changed');"
            "ALTER TABLE users ADD COLUMN probe int; ALTER TABLE users DROP COLUMN probe",
        )
        assert psql(dsn, "SELECT max(seq) FROM cluster_events") == "2"
        assert psql(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "f"
        # the old door is shut: no password, no entry
        with pytest.raises(RuntimeError, match=r"no password supplied|password authentication"):
            psql(old_dsn.replace(f":{old.port}/", f":{pg.port}/"), "SELECT 1")
        assert stat.S_IMODE(pg.credentials_file.stat().st_mode) == 0o600
        assert "trust" not in pg.hba_file.read_text()
    finally:
        await pg.stop("fast")

    # and the next start is an ordinary one: same passwords, same data
    again = EmbeddedPostgres(data_dir, durable=False)
    await again.start()
    try:
        assert again.credentials() == pg.credentials()
        assert psql(again.dsn(), "SELECT count(*) FROM cluster_events") == "2"
    finally:
        await again.stop("immediate")
