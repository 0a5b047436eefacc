"""Results: the per-benchmark summary line, ``latest.json`` merged per benchmark, the markdown
table ``latest.md``, and PNG plots (matplotlib, the bench extra, with the Agg backend)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from bench._honest import failed_points

RESULTS = Path(__file__).parent / "results"


def summary(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """``{"bench", "figures", "ratios"}`` for one benchmark's result (plus ``unavailable`` or
    ``failed`` when a server could not be measured or the benchmark broke, and
    ``failed_points`` with every ratio None when a measured point had errors)."""
    out: dict[str, Any]
    if "failed" in result:
        return {"bench": name, "figures": {}, "ratios": {}, "failed": result["failed"]}
    if "figures" in result:
        out = {"bench": name, "figures": result["figures"], "ratios": result.get("ratios", {})}
    elif name == "restart-recovery":
        steward = result["steward"]
        peer = result.get("mcp-sdk", {})
        out = {
            "bench": name,
            "figures": {
                "sessions": result["sessions"],
                # only when every one answered: a time over a part is not this figure
                "all_answered_after_s": steward["all_answered_after_s"]
                if steward["answered"] == result["sessions"]
                else None,
                "answered": steward["answered"],
                "restart_s": steward.get("restart_s"),
                "probe_s": steward.get("probe_s"),
            },
            "ratios": {
                "answered_fraction_steward": round(steward["answered"] / result["sessions"], 3),
                "answered_fraction_peer": round(
                    peer.get("answered", 0) / max(1, peer.get("of", 1)), 3
                ),
            },
        }
    elif name == "wire-types":
        figures = {k: v for k, v in result.items() if k.endswith("_us")}
        out = {
            "bench": name,
            "figures": figures,
            "ratios": {
                "parse_lean_vs_mcp_types": round(
                    figures["parse_lean_us"] / figures["parse_mcp_types_us"], 2
                )
            },
        }
    else:
        out = {"bench": name, "figures": {}, "ratios": {}}
    if "unavailable" in result:
        out["unavailable"] = result["unavailable"]
    failed = failed_points(result)
    if failed:  # no ratio over a point with errors (bench/_honest.py)
        out["ratios"] = dict.fromkeys(out["ratios"])
        out["failed_points"] = failed
    return out


def _server_tables(name: str, servers: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    points = [p for m in servers.values() for p in m.get("points", [])]
    header: list[str] = []  # none for a benchmark measured in rounds or once
    row = ""
    if not points:
        pass
    elif "streams" in points[0]:  # idle-streams (formerly memory-streams)
        header = [
            "| server | streams | RSS kB | kB per stream | kB per session + stream | failures |",
            "|---|---|---|---|---|---|",
        ]
        row = (
            "| {server} | {streams} | {rss_kb} | {kb_per_stream} | {kb_per_session_and_stream} "
            "| {stream_failures} |"
        )
    else:
        header = [
            "| server | clients | sessions/s | calls/s | p50 ms | p99 ms | errors | generator CPU |",
            "|---|---|---|---|---|---|---|---|",
        ]
        row = (
            "| {server} | {workers} | {sessions_per_s} | {calls_per_s} | {call_p50_ms} "
            "| {call_p99_ms} | {errors} | {generator_cpu_fraction} |"
        )
    lines += header
    for server, measured in servers.items():
        for point in measured.get("points", []):
            lines.append(row.format(server=server, **point))
    lines.append("")
    for server, measured in servers.items():
        if not measured.get("available", True):
            lines += [f"**{server} unavailable**: {measured['reason']}", ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Produced by `python -m bench NAME`; see docs/benchmarks.md.",
        "",
    ]
    for name, result in results.items():
        s = summary(name, result)
        lines += [f"## {name}", "", f"taken {result.get('taken_at', '?')}", ""]
        servers = result.get("servers")
        if isinstance(servers, dict) and all(isinstance(v, dict) for v in servers.values()):
            lines += _server_tables(name, servers)
        if "failed" in s:
            lines += [f"**failed**: {s['failed']}", ""]
        if "failed_points" in s:
            lines += [
                "**points with errors (no ratio)**:",
                *(f"- {p}" for p in s["failed_points"]),
                "",
            ]
        lines += [f"- {k}: {v}" for k, v in s["figures"].items()]
        if isinstance(result.get("peer"), str):  # why a benchmark has no peer figure
            lines.append(f"- peer: {result['peer']}")
        lines += [
            f"- ratio {k}: {'n/a (a point failed or a server was unavailable)' if v is None else v}"
            for k, v in s["ratios"].items()
        ]
        lines.append("")
    return "\n".join(lines)


def plots(results: dict[str, Any], folder: Path) -> list[str]:
    """PNG plots (calls/s vs clients; RSS vs streams): the files written, or a one-line note
    saying why there are none."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return ["no plots: matplotlib is not installed (./steward install bench)"]
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    written = []
    charts = {
        "tool-calls": ("workers", "calls_per_s", "concurrent clients", "tool calls/s"),
        "idle-streams": ("streams", "rss_kb", "idle GET SSE streams", "server RSS (kB)"),
    }
    for name, (x, y, x_label, y_label) in charts.items():
        servers = results.get(name, {}).get("servers", {})
        series = {s: m["points"] for s, m in servers.items() if m.get("points")}
        if not series:
            continue
        figure, axes = pyplot.subplots(figsize=(6, 4))
        for server, points in series.items():
            axes.plot([p[x] for p in points], [p[y] for p in points], marker="o", label=server)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(name)
        axes.legend()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        pyplot.close(figure)
        written.append(str(path))
    return written


def record(name: str, result: dict[str, Any], folder: Path = RESULTS) -> list[str]:
    """Merge ``result`` into ``latest.json`` under ``name``, rewrite ``latest.md`` and the plots;
    the plot files written, or the note saying why none were."""
    folder.mkdir(parents=True, exist_ok=True)
    latest_path = folder / "latest.json"
    latest: dict[str, Any] = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    latest[name] = result
    tmp = latest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(latest, indent=2) + "\n")
    tmp.replace(latest_path)
    (folder / "latest.md").write_text(markdown(latest))
    return plots(latest, folder)
