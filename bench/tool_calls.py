"""tool-calls: calls/s and p50/p99 on live sessions at several concurrencies, Steward vs the peer."""

from __future__ import annotations

import os
from typing import Any

import trio

from bench._loadgen import run_load
from bench._servers import peer, steward


def _pin_generator(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


def run(levels: tuple[int, ...] = (1, 8, 32, 128), duration: float = 5.0) -> dict[str, Any]:
    _pin_generator(1)
    out: dict[str, Any] = {
        "benchmark": "tool-calls",
        "duration_per_point_s": duration,
        "servers": {},
    }
    for name, server in (("mcp-sdk", peer), ("steward", steward)):
        points = []
        with server() as s:  # type: ignore[operator]
            trio.run(run_load, "127.0.0.1", s["port"], 2, 0.5, s["token"])  # warm-up
            for w in levels:
                points.append(trio.run(run_load, "127.0.0.1", s["port"], w, duration, s["token"]))
        out["servers"][name] = points
    ratios = {}
    for a, b in zip(out["servers"]["steward"], out["servers"]["mcp-sdk"], strict=True):
        ratios[f"calls_per_s_w{a['workers']}"] = (
            round(a["calls_per_s"] / b["calls_per_s"], 2) if b["calls_per_s"] else None
        )
    out["ratios_steward_vs_peer"] = ratios
    return out
