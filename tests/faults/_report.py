"""What a fault scenario saw, written as JSON lines for the table of ``python -m tests.faults``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from runtime import ChildRestarted, EventSubscription, subscribe_events

RESULTS = Path(os.environ.get("STEWARD_FAULT_REPORT", "/tmp/steward-faults.jsonl"))


@attrs.define
class Observation:
    scenario: str
    fault: str
    blast_radius: str
    restarted: dict[str, int] = attrs.field(factory=dict)
    streams_closed: int = 0
    failed_requests: dict[str, int] = attrs.field(factory=dict)
    writes_lost: int = 0
    tasks_leaked: int = 0
    # the pytest test that ran the scenario (file::name, parameters included)
    test: str = attrs.field(
        factory=lambda: os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    )

    def failed(self, status: int) -> None:
        self.failed_requests[str(status)] = self.failed_requests.get(str(status), 0) + 1


def _kind(child: str) -> str:
    if child.count("-") == 4:  # a uuid: a session or a connection
        return "session_or_connection"
    return child


@contextmanager
def observe(scenario: str, fault: str, blast_radius: str) -> Iterator[Observation]:
    """Record supervision restarts while the block runs, then append the observation."""
    obs = Observation(scenario, fault, blast_radius)
    before = trio.lowlevel.current_statistics().tasks_living
    sub: EventSubscription
    with subscribe_events(10_000) as sub:
        yield obs
        while True:
            try:
                event = sub.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if os.environ.get("STEWARD_FAULT_DEBUG"):
                print("EV", event)
            if isinstance(event, ChildRestarted):
                key = f"{event.supervisor.split(':')[0]}/{_kind(event.child)}"
                obs.restarted[key] = obs.restarted.get(key, 0) + 1
    obs.tasks_leaked = max(0, trio.lowlevel.current_statistics().tasks_living - before)
    with RESULTS.open("a") as f:
        f.write(json.dumps(attrs.asdict(obs)) + "\n")


def table(rows: list[dict[str, Any]]) -> str:
    head = "| scenario | fault | expected blast radius | actors restarted | streams closed | requests failed | writes lost | tasks leaked | test |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        restarted = ", ".join(f"{k} x{v}" for k, v in r["restarted"].items()) or "none"
        failed = ", ".join(f"{v}x {k}" for k, v in r["failed_requests"].items()) or "none"
        lines.append(
            f"| {r['scenario']} | {r['fault']} | {r['blast_radius']} | {restarted} | {r['streams_closed']} | {failed} | {r['writes_lost']} | {r['tasks_leaked']} | `{r.get('test', '')}` |"
        )
    return "\n".join(lines)
