"""``python -m bench NAME [--quick]``: run a benchmark, print JSON, update bench/results/."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmark results", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", f"taken {result.get('taken_at', '?')}", ""]
        servers = result.get("servers", {})
        if servers:
            lines += [
                "| server | workers | sessions/s | calls/s | p50 ms | p99 ms | errors | generator CPU |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for server, points in servers.items():
                for p in points:
                    lines.append(
                        f"| {server} | {p['workers']} | {p['sessions_per_s']} | {p['calls_per_s']} | {p['call_p50_ms']} | {p['call_p99_ms']} | {p['errors']} | {p['generator_cpu_fraction']} |"
                    )
        else:
            lines += [
                f"- {k}: {v}" for k, v in result.items() if k not in ("benchmark", "taken_at")
            ]
        if "ratios_steward_vs_peer" in result:
            lines += [
                "",
                "Ratios (Steward / peer): "
                + ", ".join(f"{k} = {v}" for k, v in result["ratios_steward_vs_peer"].items()),
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "name", choices=["tool-calls", "wire-types", "scale-out", "restart-recovery", "all"]
    )
    parser.add_argument("--quick", action="store_true", help="short points (about 1.5 s each)")
    args = parser.parse_args()
    from bench import restart_recovery, scale_out, tool_calls, wire_types

    duration = 1.5 if args.quick else 5.0
    runs = {
        "tool-calls": lambda: tool_calls.run(duration=duration),
        "wire-types": wire_types.run,
        "scale-out": lambda: scale_out.run(duration=duration),
        "restart-recovery": lambda: restart_recovery.run(sessions=500 if args.quick else 10_000),
    }
    names = list(runs) if args.name == "all" else [args.name]
    RESULTS.mkdir(exist_ok=True)
    latest_path = RESULTS / "latest.json"
    latest: dict[str, Any] = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    for name in names:
        result = runs[name]()
        result["taken_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(json.dumps(result, indent=2))
        latest[name] = result
    latest_path.write_text(json.dumps(latest, indent=2))
    (RESULTS / "latest.md").write_text(_markdown(latest))


if __name__ == "__main__":
    main()
