"""``python -m bench NAME|all [--quick]``: run benchmarks, merge each result into
bench/results/latest.json (and latest.md, plots when possible), print each full result as JSON,
and end with one line per benchmark ``{"bench": NAME, "figures": {...}, "ratios": {...}}``.
A benchmark with a point that had errors reports no ratio (every one null), names the point and
why under ``failed_points`` and on stderr, and the exit status is 1 (bench/_honest.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from bench._honest import withhold_ratios
from bench._report import record, summary

NAMES = (
    "tool-calls",
    "session-churn",
    "idle-streams",
    "revocation-fanout",
    "refresh-storm",
    "runtime",
    "group-commit",
    "scale-out",
    "cross-node",
    "restart-recovery",
    "wire-types",
)
ALIASES = {"memory-streams": "idle-streams"}  # the earlier name of idle-streams
ON_REQUEST = ("soak", "edges")  # long runs and profiles, never part of "all"


def _runs(quick: bool, peer_replies: str) -> dict[str, Callable[[], dict[str, Any]]]:
    from bench import (
        cross_node,
        group_commit,
        idle_streams,
        refresh_storm,
        restart_recovery,
        revocation_fanout,
        runtime_bench,
        scale_out,
        session_churn,
        tool_calls,
        wire_types,
    )

    duration = 1.0 if quick else 5.0
    return {
        "tool-calls": lambda: tool_calls.run(duration=duration, peer_replies=peer_replies),
        "session-churn": lambda: session_churn.run(
            levels=session_churn.QUICK_LEVELS if quick else session_churn.LEVELS, duration=duration
        ),
        "idle-streams": lambda: idle_streams.run(
            levels=idle_streams.QUICK_LEVELS if quick else idle_streams.LEVELS
        ),
        "revocation-fanout": lambda: revocation_fanout.run(quick=quick),
        "refresh-storm": lambda: refresh_storm.run(quick=quick),
        "runtime": lambda: runtime_bench.run(quick=quick),
        "group-commit": lambda: group_commit.run(duration=duration),
        "scale-out": lambda: scale_out.run(duration=duration),
        "cross-node": lambda: cross_node.run(quick=quick),
        "restart-recovery": lambda: restart_recovery.run(sessions=500 if quick else 10_000),
        "wire-types": wire_types.run,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=[*NAMES, *ALIASES, *ON_REQUEST, "all"])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long soak runs")
    parser.add_argument("--quick", action="store_true", help="~1 s points, fewer sessions")
    parser.add_argument(
        "--peer-replies",
        choices=("sse", "json"),
        default="sse",
        help="the SDK peer's reply mode for tool-calls (its default is sse)",
    )
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    runs = _runs(args.quick, args.peer_replies)
    if args.name == "soak":
        from bench import soak

        runs["soak"] = lambda: soak.run(minutes=args.minutes)
    if args.name == "edges":
        from bench import edges

        runs["edges"] = lambda: edges.run(quick=args.quick)
    names = list(runs) if args.name == "all" else [ALIASES.get(args.name, args.name)]
    summaries = []
    notes: list[str] = []
    for name in names:
        try:
            result = runs[name]()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            result = {"benchmark": name, "failed": f"{type(exc).__name__}: {exc}"}
        result = withhold_ratios(result)  # no ratio over a point with errors
        result["taken_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["quick"] = args.quick
        print(json.dumps(result, indent=2), flush=True)
        notes = record(name, result)
        summaries.append(summary(name, result))
    for note in notes:
        print(note, file=sys.stderr)
    for s in summaries:
        print(json.dumps(s))
    for s in summaries:
        for point in s.get("failed_points", []):
            print(f"{s['bench']}: no ratio, a point failed: {point}", file=sys.stderr)
    return 1 if any("failed" in s or "failed_points" in s for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
