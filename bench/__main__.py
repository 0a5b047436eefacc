"""``python -m bench NAME [--quick]``: run a benchmark, update bench/results/, and print as the
last line one JSON object ``{"bench": NAME, "figures": {...}, "ratios": {...}}``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

RESULTS = Path(__file__).parent / "results"
NAMES = ("runtime", "group-commit", "tool-calls", "scale-out", "restart-recovery", "wire-types")


def _summary(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The figures and ratios every benchmark reports in its last line."""
    if "figures" in result:
        return {"bench": name, "figures": result["figures"], "ratios": result.get("ratios", {})}
    if name == "tool-calls":
        steward = {
            f"calls_per_s_w{p['workers']}": p["calls_per_s"] for p in result["servers"]["steward"]
        }
        steward.update(
            {f"call_p99_ms_w{p['workers']}": p["call_p99_ms"] for p in result["servers"]["steward"]}
        )
        return {"bench": name, "figures": steward, "ratios": result["ratios_steward_vs_peer"]}
    if name == "scale-out":
        figures = {
            "sessions_per_s_1_worker": result["churn"]["1_worker"]["sessions_per_s"],
            "sessions_per_s_2_worker": result["churn"]["2_worker"]["sessions_per_s"],
            "cross_node_revocation_p50_ms": result["revocation"]["cross_node_revocation_p50_ms"],
            "cross_node_revocation_p99_ms": result["revocation"]["cross_node_revocation_p99_ms"],
        }
        return {"bench": name, "figures": figures, "ratios": result["ratios"]}
    if name == "restart-recovery":
        steward = result["steward"]
        figures = {
            "sessions": result["sessions"],
            "all_answered_after_s": steward["all_answered_after_s"],
            "answered": steward["answered"],
        }
        peer = result.get("mcp-sdk", {})
        ratios = {
            "answered_fraction_steward": round(steward["answered"] / result["sessions"], 3),
            "answered_fraction_peer": round(peer.get("answered", 0) / max(1, peer.get("of", 1)), 3),
        }
        return {"bench": name, "figures": figures, "ratios": ratios}
    if name == "wire-types":
        figures = {k: v for k, v in result.items() if k.endswith("_us")}
        return {
            "bench": name,
            "figures": figures,
            "ratios": {
                "parse_lean_vs_mcp_types": round(
                    figures["parse_lean_us"] / figures["parse_mcp_types_us"], 2
                )
            },
        }
    return {"bench": name, "figures": {}, "ratios": {}}


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Produced by `python -m bench NAME`; see docs/benchmarks.md.",
        "",
    ]
    for name, result in results.items():
        summary = _summary(name, result)
        lines += [f"## {name}", "", f"taken {result.get('taken_at', '?')}", ""]
        servers = result.get("servers", {})
        if servers:
            lines += [
                "| server | concurrency | sessions/s | calls/s | p50 ms | p99 ms | errors | generator CPU |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for server, points in servers.items():
                for p in points:
                    lines.append(
                        f"| {server} | {p['workers']} | {p['sessions_per_s']} | {p['calls_per_s']} | {p['call_p50_ms']} | {p['call_p99_ms']} | {p['errors']} | {p['generator_cpu_fraction']} |"
                    )
            lines.append("")
        lines += [f"- {k}: {v}" for k, v in summary["figures"].items()]
        lines += [f"- ratio {k}: {v}" for k, v in summary["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=[*NAMES, "all"])
    parser.add_argument("--quick", action="store_true", help="short points, fewer sessions")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from bench import (
        group_commit,
        restart_recovery,
        runtime_bench,
        scale_out,
        tool_calls,
        wire_types,
    )

    duration = 1.5 if args.quick else 5.0
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "runtime": lambda: runtime_bench.run(quick=args.quick),
        "group-commit": lambda: group_commit.run(duration=duration),
        "tool-calls": lambda: tool_calls.run(duration=duration),
        "scale-out": lambda: scale_out.run(duration=duration),
        "restart-recovery": lambda: restart_recovery.run(sessions=500 if args.quick else 10_000),
        "wire-types": wire_types.run,
    }
    names = list(runs) if args.name == "all" else [args.name]
    RESULTS.mkdir(exist_ok=True)
    latest_path = RESULTS / "latest.json"
    latest: dict[str, Any] = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    summaries = []
    for name in names:
        result = runs[name]()
        result["taken_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(json.dumps(result, indent=2))
        latest[name] = result
        summaries.append(_summary(name, result))
        latest_path.write_text(json.dumps(latest, indent=2))
        (RESULTS / "latest.md").write_text(_markdown(latest))
    for summary in summaries:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
