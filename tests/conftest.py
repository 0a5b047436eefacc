"""Shared fixtures: one throwaway PostgreSQL cluster per test session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest
import structlog

from tests.harness._pg import (
    Cluster,
    ExternalPostgres,
    create_database,
    drop_database,
    start_cluster,
    stop_cluster,
)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster for the whole session (DATABASE_URL overrides)."""
    session = start_cluster()
    try:
        yield session.cluster
    finally:
        stop_cluster(session)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test skipped because DATABASE_URL's server cannot be stopped or killed says so."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("pg_cluster")
    if isinstance(cluster, ExternalPostgres) and cluster.skipped and report.when != "setup":
        if report.skipped and isinstance(report.longrepr, tuple):
            path, line, _ = report.longrepr
            report.longrepr = (path, line, f"Skipped: {cluster.skipped}")
        if report.when == "teardown":
            cluster.skipped = None
    return report


@pytest.fixture
def fresh_db(pg_cluster: Cluster) -> Iterator[str]:
    """A new empty database; its DSN. Dropped after the test."""
    name = create_database(pg_cluster)
    try:
        yield pg_cluster.dsn(name)
    finally:
        drop_database(pg_cluster, name)


@pytest.fixture(autouse=True)
def structlog_kept() -> Iterator[None]:
    """Each test starts with the logging configuration the one before it found: a command's
    main() run in-process (``bench``'s filters below WARNING) must not silence the next test's
    captured log lines."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: no supervision tree is left running and every registry is empty."""
    yield
    from runtime import live_registries, tree

    assert tree() == [], "a supervision tree outlived its test"
    leftover = {r.name: len(r) for r in live_registries() if len(r)}
    assert leftover == {}, f"registries not empty after the test: {leftover}"
