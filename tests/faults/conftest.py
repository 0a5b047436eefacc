"""Fixtures of the fault catalog: a PostgreSQL cluster of the test's own, reached by its URL (as
a DATABASE_URL server is), so that a scenario may stop it for as long as it likes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.postgres._embedded import EmbeddedPostgres
from tests.harness._pg import create_database


@pytest.fixture
async def own_cluster() -> AsyncIterator[EmbeddedPostgres]:
    """A throwaway cluster started for this test (not the session's, not Steward's embedded
    one): the node only knows its URL. Stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="stw-ext-", dir="/tmp"))
    os.chmod(folder, 0o755)
    cluster = EmbeddedPostgres(folder, durable=False)
    try:
        await cluster.start()
        yield cluster
    finally:
        try:
            if cluster.running:
                await cluster.stop("immediate")
        finally:
            if cluster.running:
                cluster.kill()
            shutil.rmtree(folder, ignore_errors=True)


def new_database(cluster: EmbeddedPostgres) -> str:
    """A new empty database on ``cluster``; its URL."""
    return cluster.dsn(create_database(cluster))
