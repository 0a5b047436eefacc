"""Fault catalog: the embedded PostgreSQL's postmaster dies under a live node, and Steward itself
brings it back (its keeper, a child of root: server/postgres/_embedded.py, PostmasterKeeper)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from runtime import Backoff
from server._node import Node, run_node
from server.config._settings import load_settings
from server.dev._demo import demo
from server.postgres._embedded import EmbeddedPostgres, PostmasterKeeper, PostmasterState
from tests.faults._report import observe
from tests.faults.test_catalog import client, is_open
from tests.harness._pg import psql
from tests.harness._steward import get_stream

pytestmark = pytest.mark.faults

FAST = Backoff(min=0.1, max=0.4, jitter=0.0, reset_after=60.0)


@asynccontextmanager
async def embedded_node(backoff: Backoff = FAST) -> AsyncIterator[tuple[Node, PostmasterKeeper]]:
    """A node on its own embedded cluster, kept by a PostmasterKeeper in its tree, as
    ``steward serve`` runs it (server/cli/_main.py): the cluster started first, then the node."""
    folder = Path(tempfile.mkdtemp(prefix="stw-k-", dir="/tmp"))
    os.chmod(folder, 0o755)
    cluster = EmbeddedPostgres(folder / "pg", durable=False)
    await cluster.start()
    try:
        keeper = PostmasterKeeper(cluster, backoff=backoff)
        settings = load_settings(environ={}, overrides={"port": 0, "data_dir": folder / "node"})
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(
                lambda task_status: run_node(
                    settings,
                    demo,
                    dsn=cluster.dsn(),
                    embedded_postgres=keeper,
                    task_status=task_status,
                )
            )
            try:
                yield node, keeper
            finally:
                nursery.cancel_scope.cancel()
    finally:
        try:
            await cluster.stop("immediate")
        finally:
            if cluster.running:
                cluster.kill()
            shutil.rmtree(folder, ignore_errors=True)


async def wait_for(condition: object, seconds: float) -> None:
    with trio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.05)


async def readyz(http: httpx.AsyncClient, node: Node) -> tuple[int, dict[str, object]]:
    r = await http.get(f"{node.info.listen_url}/readyz")
    return r.status_code, r.json()


async def test_embedded_postmaster_killed_is_restarted_by_steward() -> None:
    """(k) The embedded postmaster is killed (SIGKILL, its lock files left behind) under a live
    node with Alice's GET stream open. Steward's keeper sees the pid exit and starts the cluster
    again (crash recovery), with no operator; the store reconnects by itself, a write after the
    recovery commits, the stream stays open, the keeper is not restarted by root, and nothing in
    the tree above the store restarts because of it."""
    with observe(
        "embedded postmaster killed",
        "SIGKILL the embedded cluster's postmaster; nobody restarts it but Steward",
        "the keeper restarts it; the store reconnects; streams stay; writes queue then commit",
    ) as obs:
        async with embedded_node() as (node, keeper), httpx.AsyncClient(timeout=20) as http:
            cluster = keeper.cluster
            assert (await readyz(http, node))[1]["postgres"] == {
                "state": "running",
                "restarts": 0,
                "pid": cluster.postmaster_pid,
            }
            mcp = await client(http, node, "alice")
            async with get_stream(mcp) as stream:
                await stream.next()
                before = cluster.postmaster_pid
                assert before is not None
                os.kill(before, signal.SIGKILL)  # a crash: postmaster.pid stays behind
                await wait_for(
                    lambda: keeper.status().up and keeper.status().pid not in (None, before), 60
                )
                after = keeper.status().pid
                assert after == cluster.postmaster_pid and after != before
                assert keeper.status().restarts == 1
                await wait_for(
                    lambda: (
                        node.store.statistics().connected
                        and not node.store.statistics().queue_depth
                    ),
                    30,
                )
                r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "after"}})
                if r.status_code != 200:
                    obs.failed(r.status_code)
                await wait_for(lambda: not node.store.statistics().queue_depth, 10)
                calls = psql(
                    cluster.dsn(), "SELECT count(*) FROM usage_events WHERE method = 'tools/call'"
                )
                obs.writes_lost = 1 - int(calls)
                assert await is_open(stream)
                status, report = await readyz(http, node)
                assert status == 200 and report["ready"] is True
                assert report["postgres"] == {"state": "running", "restarts": 1, "pid": after}
            assert node.root is not None and node.root.has_child("postgres")
    assert obs.failed_requests == {} and obs.writes_lost == 0
    assert "root/postgres" not in obs.restarted and "root/store" not in obs.restarted


async def test_a_cluster_that_cannot_start_is_reported_once_and_retried() -> None:
    """(l) The embedded cluster dies and its data folder can no longer start (PG_VERSION
    corrupted). The keeper logs ONE error line naming the reason however many times it retries,
    /readyz says not ready with that reason, root never restarts the keeper; once the folder is
    repaired the next retry starts it and the store reconnects."""
    with observe(
        "embedded cluster cannot start",
        "SIGKILL the embedded postmaster and corrupt PG_VERSION",
        "one error line; /readyz not ready with the reason; retried with capped backoff",
    ) as obs:
        async with embedded_node() as (node, keeper), httpx.AsyncClient(timeout=20) as http:
            cluster = keeper.cluster
            version_file = cluster.pgdata / "PG_VERSION"
            version = version_file.read_text()
            with capture_logs() as logs:
                version_file.write_text("garbage\n")
                pid = cluster.postmaster_pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await wait_for(lambda: keeper.status().failures >= 4, 60)
                status, report = await readyz(http, node)
                version_file.write_text(version)  # repaired: the next retry starts it
                await wait_for(lambda: keeper.status().up, 30)
            failing = [e for e in logs if e["event"] == "embedded_postgres_cannot_start"]
            assert len(failing) == 1, failing
            assert failing[0]["log_level"] == "error"
            assert "PG_VERSION" in failing[0]["reason"] and "\n" not in failing[0]["reason"]
            assert status == 503 and report["ready"] is False
            postgres = report["postgres"]
            assert isinstance(postgres, dict)
            assert postgres["state"] == PostmasterState.FAILING.value
            assert postgres["error"] == failing[0]["reason"]
            assert [e["event"] for e in logs].count("embedded_postgres_recovered") == 1
            await wait_for(lambda: node.store.statistics().connected, 30)
            assert (await readyz(http, node))[1]["postgres"]["state"] == "running"  # type: ignore[index]
    assert "root/postgres" not in obs.restarted
