"""runtime: spawn rate and memory of idle actors under a dynamic supervisor, restart latency, and
bare ``nursery.start_soon`` tasks as the floor."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import trio

from runtime import (
    ChildSpec,
    ChildStarted,
    DynamicSupervisor,
    Registry,
    Restart,
    Supervisor,
    subscribe_events,
)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _idle(
    key: int,
    registry: Registry[int, object],
    *,
    task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
) -> None:
    with registry.register(key, key):
        task_status.started(key)
        await trio.sleep_forever()


async def _spawn(n: int) -> tuple[float, int]:
    registry: Registry[int, object] = Registry("bench")
    gc.collect()
    before = _rss()
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(DynamicSupervisor("bench", intensity=10).run)
        t0 = time.perf_counter()
        for i in range(n):
            await sup.start_child(
                ChildSpec(
                    str(i), _idle, args=(i, registry), restart=Restart.TEMPORARY, shutdown_grace=1.0
                )
            )
        elapsed = time.perf_counter() - t0
        gc.collect()
        rss = _rss() - before
        assert len(registry) == n
        nursery.cancel_scope.cancel()
    return n / elapsed, rss // n


async def _bare(n: int) -> float:
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for _ in range(n):
            nursery.start_soon(trio.sleep_forever)
        await trio.lowlevel.checkpoint()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / elapsed


async def _restarts(n: int) -> list[float]:
    crash = trio.Event()

    async def crasher(*, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(None)
        await crash.wait()
        raise RuntimeError("crash")

    latencies: list[float] = []
    with subscribe_events(100_000) as sub:
        async with trio.open_nursery() as nursery:
            sup = await nursery.start(
                Supervisor(
                    "restart-bench", [ChildSpec("c", crasher)], intensity=n + 10, period=1e9
                ).run
            )
            for _ in range(n):
                t0 = time.perf_counter()
                old, crash = crash, trio.Event()
                old.set()
                while True:
                    event = await sub.receive.receive()
                    if isinstance(event, ChildStarted) and event.child == "c":
                        break
                latencies.append(time.perf_counter() - t0)
            await sup.stop()
    return sorted(latencies)


def run(quick: bool = False) -> dict[str, Any]:
    sizes = (10_000,) if quick else (10_000, 100_000)
    figures: dict[str, Any] = {}
    for n in sizes:
        rate, per_actor = trio.run(_spawn, n)
        figures[f"spawn_per_s_{n}"] = round(rate)
        figures[f"rss_per_actor_bytes_{n}"] = per_actor
    figures["rss_per_actor_bytes"] = figures[f"rss_per_actor_bytes_{sizes[-1]}"]
    bare = trio.run(_bare, sizes[0])
    figures["bare_spawn_per_s"] = round(bare)
    lat = trio.run(_restarts, 1000)
    figures["restart_p50_ms"] = round(lat[len(lat) // 2] * 1000, 3)
    figures["restart_p99_ms"] = round(lat[int(0.99 * len(lat))] * 1000, 3)
    ratios = {"spawn_vs_bare": round(figures[f"spawn_per_s_{sizes[0]}"] / bare, 3)}
    return {"benchmark": "runtime", "figures": figures, "ratios": ratios}
