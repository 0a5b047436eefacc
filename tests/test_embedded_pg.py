"""The embedded PostgreSQL: found, created, started, stopped, killed, and kept between runs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server._embedded_pg import EmbeddedPostgres, PostgresNotFound, find_postgres_bindir
from tests.harness._pg import Cluster, psql


@pytest.fixture
def data_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="stw-e-", dir="/tmp"))
    os.chmod(folder, 0o755)
    yield folder
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def test_missing_binaries_name_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFound, match="apt-get install postgresql"):
        find_postgres_bindir([str(tmp_path)])


def test_binaries_are_found_on_this_machine() -> None:
    bindir = find_postgres_bindir()
    assert (bindir / "initdb").exists() and (bindir / "postgres").exists()


async def test_data_is_kept_between_runs_and_survives_a_kill(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, durable=True)
    await pg.start()
    try:
        assert pg.running
        psql(pg.dsn(), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await pg.stop()
        assert not pg.running
        await pg.start()
        assert psql(pg.dsn(), "SELECT v FROM kept") == "42"
        pg.kill()
        assert not pg.running
        with pytest.raises(RuntimeError, match="psql failed"):
            psql(pg.dsn(), "SELECT 1")
        await pg.start()  # crash recovery
        assert psql(pg.dsn(), "SELECT v FROM kept") == "42"
    finally:
        await pg.stop("immediate")
    assert not pg.running


def test_fresh_databases_are_isolated(pg_cluster: Cluster, fresh_db: str) -> None:
    psql(fresh_db, "CREATE TABLE mine (v int)")
    assert psql(fresh_db, "SELECT count(*) FROM mine") == "0"
    assert "mine" not in psql(pg_cluster.dsn("postgres"), "SELECT tablename FROM pg_tables")
