"""A Steward node for the benchmarks that need more than ``steward serve`` exposes.

    python -m bench._node [--config TOML] serve --data-dir D --ready-file F
        [--max-connections N] [--refresh-lead S] [--refresh-jitter J]

Its command line is ``steward serve``'s (so ``tests.harness._serve`` starts it), and it runs the
same node as ``steward serve`` (``run_node`` on the data folder's embedded, durable
PostgreSQL, the demo application, the development IdP) with a :class:`SessionPolicy` built from
the options, and its ready file adds what a benchmark needs to check its figures: the database
URL (to count rows), the development IdP's control secret (to read its refresh count) and the
admin token. It is a benchmark harness on a throwaway data folder, never a way to serve.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

import trio

from actors.sessions import SessionPolicy
from server._node import Node, run_node, tune_gc
from server.cli._main import _with_database
from server.config._logging import configure_logging
from server.config._settings import load_settings
from server.dev._demo import demo


def _policy(args: argparse.Namespace) -> SessionPolicy:
    fields: dict[str, Any] = {}
    if args.max_connections is not None:
        fields["max_connections"] = args.max_connections
    if args.refresh_lead is not None:
        fields["refresh_lead"] = args.refresh_lead
    if args.refresh_jitter is not None:
        fields["refresh_jitter"] = args.refresh_jitter
    return SessionPolicy(**fields)


def _ready(node: Node, dsn: str) -> dict[str, Any]:
    return {
        **node.info.ready_document(),
        "dsn": dsn,
        "dev_idp_control_secret": node.info.dev_idp_control_secret,
        "admin_token": node.admin_token,
        "session_policy": {
            "max_connections": node.sessions.policy.max_connections,
            "refresh_lead": node.sessions.policy.refresh_lead,
            "refresh_jitter": node.sessions.policy.refresh_jitter,
        },
    }


async def _serve(args: argparse.Namespace) -> None:
    settings = load_settings(
        args.config, overrides={"port": 0, "data_dir": args.data_dir, "database_url": None}
    )
    configure_logging(settings.log_level)
    policy = _policy(args)

    async def run(dsn: str) -> None:
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(
                lambda task_status: run_node(
                    settings, demo, dsn=dsn, session_policy=policy, task_status=task_status
                )
            )
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(_ready(node, dsn), indent=2))
            tmp.replace(args.ready_file)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    await _with_database(settings, run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._node")
    parser.add_argument("command", choices=["serve"], help="as steward's, which is the only one")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--max-connections", type=int, help="streams per user session")
    parser.add_argument("--refresh-lead", type=float, help="seconds before expiry to refresh")
    parser.add_argument("--refresh-jitter", type=float, help="fraction of the lead")
    tune_gc()  # as steward serve does
    trio.run(_serve, parser.parse_args(argv))


if __name__ == "__main__":
    main()
