"""Database outages of any length (docs/failure-model.md, docs/runtime.md): the node stays up,
streams stay open, verified tokens keep working, writes answer 503 with Retry-After within the
write bound, acknowledged writes are never lost, /readyz tells, and nothing escalates.

The cluster is one the test starts and stops itself, reached by its URL only (as a DATABASE_URL
server is), not Steward's embedded one."""

from __future__ import annotations

import time
from typing import Any

import attrs
import httpx
import pytest
import trio

from actors import StorePolicy, StoreUnavailable
from actors._cluster import CHANNEL
from actors.sessions import SessionPolicy
from runtime import (
    Backoff,
    ChildExited,
    ChildRestarted,
    ChildSpec,
    ExitKind,
    IntensityExceeded,
    SupervisionEvent,
    Supervisor,
    SupervisorHandle,
    subscribe_events,
    tree,
)
from server._node import Node, RootPolicy
from server.postgres._embedded import EmbeddedPostgres
from tests.faults._report import Observation, observe
from tests.faults.conftest import new_database
from tests.faults.test_catalog import client, is_open
from tests.harness._pg import psql
from tests.harness._steward import McpClient, SseReader, get_stream, running_node

pytestmark = pytest.mark.faults

WRITE_WAIT = 1.0  # the node's db_wait in these scenarios
# a write must be answered within the bound plus what a loaded 2-core machine adds
ANSWER_BOUND = WRITE_WAIT + 2.0


def drain(sub: Any) -> list[SupervisionEvent]:
    events: list[SupervisionEvent] = []
    while True:
        try:
            events.append(sub.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def most_in_a_window(times: list[float], period: float) -> int:
    """The most restarts any sliding window of ``period`` seconds held."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - period:
            start += 1
        best = max(best, end - start + 1)
    return best


def root_running(node: Node) -> bool:
    assert node.root is not None
    return any(n.id == "root" and n.state == "running" for n in tree()) and not (node.root.exited)


@attrs.define
class OutageProbe:
    """What the scenario saw while the database was away."""

    tool_calls: int = 0
    writes_refused: int = 0
    slowest_refusal: float = 0.0
    stream_events: int = 0
    rounds: int = 0


async def during_outage(
    http: httpx.AsyncClient,
    node: Node,
    mcp: McpClient,
    stream: SseReader,
    probe: OutageProbe,
    obs: Observation,
) -> None:
    """One round of checks while the database is away."""
    base = node.info.listen_url
    assert root_running(node), "the node's root supervisor exited during the outage"
    assert (await http.get(f"{base}/healthz")).status_code == 200
    ready = await http.get(f"{base}/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["ready"] is False
    assert any("unreachable" in r for r in ready.json()["reasons"]), ready.text
    # an already verified token keeps working; the usage event queues
    r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "during"}})
    assert r.status_code == 200, r.text
    probe.tool_calls += 1
    # writes answer 503 + Retry-After within the bound: a registration, a new MCP session
    for attempt in ("register", "initialize"):
        started = time.monotonic()
        if attempt == "register":
            r = await http.post(
                f"{base}/register",
                json={"redirect_uris": ["http://127.0.0.1:9/cb"], "client_name": "outage"},
            )
        else:
            fresh = McpClient(http, node, mcp.token)
            r = await fresh.post(
                "initialize",
                {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            )
        elapsed = time.monotonic() - started
        assert r.status_code == 503, (attempt, r.status_code, r.text)
        assert int(r.headers["retry-after"]) >= 1
        obs.failed(r.status_code)
        probe.writes_refused += 1
        probe.slowest_refusal = max(probe.slowest_refusal, elapsed)
    # the stream opened before the outage still carries events
    assert node.send_to_session(
        mcp.session_id or "",
        {
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": "info", "data": probe.rounds},
        },
    )
    with trio.fail_after(5):
        event = await stream.next_message()
    assert event is not None and event["data"]["params"]["data"] == probe.rounds
    probe.stream_events += 1
    probe.rounds += 1


async def wait_until(predicate: Any, seconds: float, step: float = 0.05) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(step)


async def run_outage(
    cluster: EmbeddedPostgres,
    *,
    outage: float,
    scenario: str,
    fault: str,
    root_policy: RootPolicy | None = None,
    session_policy: SessionPolicy,
    control: bool,
    every: float,
) -> tuple[Observation, list[SupervisionEvent], OutageProbe, dict[str, Any]]:
    dsn = new_database(cluster)
    store_policy = StorePolicy(
        write_wait=WRITE_WAIT,
        read_wait=0.5,
        connect_timeout=1.0,
        command_timeout=3.0,
        probe_interval=0.3,
    )
    probe = OutageProbe()
    facts: dict[str, Any] = {}
    with (
        subscribe_events(100_000) as sub,
        observe(
            scenario,
            fault,
            "none: the node, its streams and verified tokens stay; writes answer 503 within "
            "db_wait; the notifier listens again after",
        ) as obs,
    ):
        async with (
            running_node(
                dsn,
                store_policy=store_policy,
                session_policy=session_policy,
                root_policy=root_policy,
            ) as node,
            httpx.AsyncClient(timeout=30) as http,
            trio.open_nursery() as nursery,
        ):
            mcp = await client(http, node, "alice")
            r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "before"}})
            assert r.status_code == 200
            clients_before = int(psql(dsn, "SELECT count(*) FROM oauth_clients"))
            control_sup: SupervisorHandle | None = None
            if control:
                control_sup = await nursery.start(
                    old_rule_control(node, root_policy or RootPolicy()).run
                )
            async with get_stream(mcp) as stream:
                await stream.next()  # the priming event
                comments_before = stream.comments
                cluster.kill()
                down_at = trio.current_time()

                async def disconnected() -> bool:
                    return not node.store.statistics().connected

                await wait_until(disconnected, 10)
                while trio.current_time() - down_at < outage:
                    await during_outage(http, node, mcp, stream, probe, obs)
                    await trio.sleep(min(every, max(0.0, outage - (trio.current_time() - down_at))))
                facts["outage_s"] = trio.current_time() - down_at
                facts["keepalives_during"] = stream.comments - comments_before
                await cluster.start()

                async def ready() -> bool:
                    r = await http.get(f"{node.info.listen_url}/readyz")
                    return r.status_code == 200 and r.json()["ready"] is True

                await wait_until(ready, 30, 0.1)

                async def drained() -> bool:
                    s = node.store.statistics()
                    return s.connected and s.queue_depth == 0

                await wait_until(drained, 30)
                assert root_running(node)
                assert await is_open(stream)
                # the stream still carries events after the outage, and writes work again
                assert node.send_to_session(
                    mcp.session_id or "",
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/message",
                        "params": {"level": "info", "data": "after"},
                    },
                )
                with trio.fail_after(5):
                    event = await stream.next_message()
                assert event is not None and event["data"]["params"]["data"] == "after"
                other = await client(http, node, "bob")  # registration, sign-in, initialize
                assert (await other.post("ping")).status_code == 200
            if control_sup is not None:
                facts["control"] = control_sup.which_children()[0]
                await control_sup.stop()
            calls = int(psql(dsn, "SELECT count(*) FROM usage_events WHERE method = 'tools/call'"))
            facts["tool_calls_stored"] = calls
            # every acknowledged or queued write is there: the call before and each one during
            obs.writes_lost = (1 + probe.tool_calls) - calls
            # the refused registrations were withdrawn: never applied (bob's registration is one)
            facts["clients_added"] = (
                int(psql(dsn, "SELECT count(*) FROM oauth_clients")) - clients_before
            )
        events = drain(sub)
    return obs, events, probe, facts


def old_rule_control(node: Node, policy: RootPolicy) -> Supervisor:
    """The notifier as it was: it read the database before reporting ready and crashed when
    its LISTEN connection dropped, under the root's window and with the notifier's backoff.
    Every one of its restarts is one the old rule counted."""

    async def old_notifier(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await node.store.fetchval("SELECT coalesce(max(seq), 0) FROM cluster_events")
        task_status.started()
        async with node.store.listen(CHANNEL) as inbox:
            async for _ in inbox:
                pass
        raise StoreUnavailable("the LISTEN connection was lost")

    backoff = Backoff(min=0.1, max=5.0, jitter=0.2, reset_after=30.0)
    spec = ChildSpec("old_notifier", old_notifier, backoff=backoff, start_grace=30.0)
    return Supervisor("control", [spec], intensity=policy.intensity, period=policy.period)


def check_blast_radius(
    obs: Observation, events: list[SupervisionEvent], probe: OutageProbe, facts: dict[str, Any]
) -> None:
    assert not [e for e in events if isinstance(e, IntensityExceeded)]
    node_restarts = [
        e for e in events if isinstance(e, ChildRestarted) and e.supervisor != "control"
    ]
    # only actors whose dependency was away restarted, each time as UNAVAILABLE (not counted)
    exits = [
        e
        for e in events
        if isinstance(e, ChildExited)
        and e.supervisor not in ("control",)
        and e.exit.kind is ExitKind.ERROR
    ]
    assert exits == [], exits
    assert {f"{e.supervisor}/{e.child}" for e in node_restarts} <= {"root/notifier"}
    assert obs.writes_lost == 0, facts
    assert obs.streams_closed == 0
    assert probe.tool_calls >= 1 and probe.stream_events == probe.rounds >= 1
    assert probe.slowest_refusal <= ANSWER_BOUND, probe
    assert facts["clients_added"] == 1, facts  # bob's; none of the refused registrations
    assert facts["keepalives_during"] >= 1, facts


async def test_outage_outlasting_every_intensity_window(own_cluster: EmbeddedPostgres) -> None:
    """The node's windows made short (root: 1 restart in 2 s; each session: 1 in 2 s; the
    dynamic supervisors' 1000 in 1 s) and an outage of 8 s, four root windows. A control actor
    that follows the old rule under the same window restarts more than the intensity within one
    window: the old rule would have given up. Under the new one nothing escalates."""
    root = RootPolicy(intensity=1, period=2.0)
    sessions = SessionPolicy(
        heartbeat=0.5, session_intensity=1, session_period=2.0, keeper_backoff=Backoff(0.05, 0.2)
    )
    obs, events, probe, facts = await run_outage(
        own_cluster,
        outage=8.0,
        scenario="database outage past every restart window",
        fault="SIGKILL an external cluster for 8 s, four times the root's 2 s window (intensity 1)",
        root_policy=root,
        session_policy=sessions,
        control=True,
        every=1.5,
    )
    check_blast_radius(obs, events, probe, facts)
    control = [e.at for e in events if isinstance(e, ChildRestarted) and e.supervisor == "control"]
    # proof: the old rule would have counted more than the intensity in one window
    assert most_in_a_window(control, root.period) > root.intensity, control
    assert facts["control"].state in ("running", "restarting", "starting")
    assert probe.rounds >= 3  # each round waits out two refused writes


@pytest.mark.slow
async def test_external_cluster_down_for_120_seconds(own_cluster: EmbeddedPostgres) -> None:
    """A real 120 s outage of the external cluster under the node's default windows (root: 10
    restarts in 60 s), which the old rule gave up on after about 35 s."""
    obs, events, probe, facts = await run_outage(
        own_cluster,
        outage=120.0,
        scenario="external database down 120 s",
        fault="SIGKILL the external cluster the node reaches by URL, start it 120 s later",
        session_policy=SessionPolicy(heartbeat=5.0),
        control=False,
        every=10.0,
    )
    check_blast_radius(obs, events, probe, facts)
    assert facts["outage_s"] >= 120.0 and probe.rounds >= 10


async def test_node_starts_while_the_database_is_unreachable(
    own_cluster: EmbeddedPostgres,
) -> None:
    """A restart during an outage: the node starts and serves, /healthz 200, /readyz 503 with
    the reason, writes 503 within the bound; once the database is back the schema child
    migrates the (empty) database and the node signs users in."""
    dsn = new_database(own_cluster)
    await own_cluster.stop("immediate")
    policy = StorePolicy(
        write_wait=WRITE_WAIT, read_wait=0.5, connect_timeout=1.0, probe_interval=0.3
    )
    with observe(
        "node started during an outage",
        "start a node whose external database is down; bring the database back 5 s later",
        "none: the node serves /healthz and 503s; it migrates once the database is back",
    ) as obs:
        started_at = time.monotonic()
        async with (
            running_node(dsn, store_policy=policy) as node,
            httpx.AsyncClient(timeout=30) as http,
        ):
            # the schema child waits one connect timeout, then reports ready
            assert time.monotonic() - started_at < 15
            base = node.info.listen_url
            assert (await http.get(f"{base}/healthz")).status_code == 200
            ready = await http.get(f"{base}/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["database"] == "unreachable"
            assert any(
                "unreachable" in r and "last connection attempt" in r for r in body["reasons"]
            ), body
            started = time.monotonic()
            r = await http.post(
                f"{base}/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]}
            )
            assert r.status_code == 503 and r.headers["retry-after"]
            assert time.monotonic() - started <= ANSWER_BOUND
            obs.failed(r.status_code)
            # kept: the database stays away through many reconnect attempts
            await trio.sleep(5.0)
            assert root_running(node)
            await own_cluster.start()

            async def ready_now() -> bool:
                r = await http.get(f"{base}/readyz")
                return r.status_code == 200

            await wait_until(ready_now, 30, 0.1)
            assert psql(dsn, "SELECT count(*) FROM schema_migrations") != "0"
            alice = await client(http, node, "alice")
            assert (await alice.post("ping")).status_code == 200
    # nothing restarted: every actor waited for the store inside its incarnation
    assert obs.restarted == {}, obs.restarted
    assert obs.failed_requests == {"503": 1}
