"""The ``steward`` command line."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from server.app import Steward
from server.cli._ops import add_commands, run_command
from server.cli._progress import Progress
from server.config import DEV_IDP_EXPOSED, ConfigError, Settings, configure_logging, load_settings
from server.dev import DEV_USER
from server.postgres import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    PostmasterKeeper,
)

__all__ = ["main"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default: ``(default: …)`` unless the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return help_with_default(action)


def help_with_default(action: argparse.Action) -> str:
    """An option's help as ``--help`` prints it, its default included."""
    text = action.help or ""
    if (
        "default" in text
        or action.help is argparse.SUPPRESS
        or action.default is argparse.SUPPRESS
        or not action.option_strings  # a positional argument has no default
    ):
        return text
    if action.default is None:  # the option's own help must say what applies without it
        return text
    if action.default is False:
        return f"{text} (default: off)"
    return f"{text} (default: %(default)s)"


def _setting(name: str) -> str:
    """The default of an option that overrides the setting ``name``."""
    default = attrs.fields_dict(Settings)[name].default
    if default is None or isinstance(default, bool):  # by type: 1 == True in a dict lookup
        shown = {None: "none", False: "off", True: "on"}[default]
    else:
        shown = str(default)
    return f"(default: {shown}, or the setting {name} / STEWARD_{name.upper()})"


_CONFIG_HELP = (
    "a TOML configuration file (STEWARD_* variables and these options override it; "
    "default: none, the built-in settings)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steward",
        description="A session runtime for remote MCP servers.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", type=Path, help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve MCP (a private PostgreSQL starts when no database URL is set)"
    )
    serve.add_argument(
        "--app",
        help="the application to serve, as module:attribute (default: the demo, server.dev._demo:demo)",
    )
    serve.add_argument(
        "--ready-file",
        type=Path,
        help="write the URLs as JSON here once Steward accepts requests (default: none)",
    )
    serve.add_argument("--host", help=f"the address to listen on {_setting('host')}")
    serve.add_argument(
        "--port", type=int, help=f"the port to listen on, 0 for any {_setting('port')}"
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        help=f"the data folder: the private PostgreSQL, keys, journal {_setting('data_dir')}",
    )
    serve.add_argument(
        "--database-url",
        help="postgresql://… of an existing database instead of the private one "
        f"{_setting('database_url')}",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help=f"worker processes (nodes) sharing the port and the database {_setting('workers')}",
    )
    serve.add_argument(
        "--dev-no-auth",
        action="store_true",
        default=None,
        help="DEVELOPMENT ONLY: switch authorization off, every request runs as the development "
        "user (refused without the development IdP or off loopback; for conformance runs) "
        f"{_setting('dev_no_auth')}",
    )
    add_commands(sub)
    migrate = sub.add_parser("migrate", help="apply the database migrations and exit")
    migrate.add_argument(
        "--data-dir",
        type=Path,
        help=f"the data folder of the private PostgreSQL {_setting('data_dir')}",
    )
    migrate.add_argument(
        "--database-url", help=f"postgresql://… to migrate {_setting('database_url')}"
    )
    doctor = sub.add_parser(
        "doctor",
        help="check the configuration, database, migrations, IdP, key file and port; "
        "say how to fix each failure",
    )
    doctor.add_argument(
        "--data-dir", type=Path, help=f"the data folder to check {_setting('data_dir')}"
    )
    doctor.add_argument(
        "--database-url", help=f"postgresql://… to check {_setting('database_url')}"
    )
    doctor.add_argument("--host", help=f"the address to check {_setting('host')}")
    doctor.add_argument("--port", type=int, help=f"the port to check {_setting('port')}")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    for command in subcommands(parser):
        command.formatter_class = HelpFormatter
        if not _has_subcommands(command):
            # ``steward serve --config x.toml`` as well as ``steward --config x.toml serve``
            command.add_argument(
                "--config", type=Path, default=argparse.SUPPRESS, help=_CONFIG_HELP
            )
    return parser


def _has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (``serve``, ``sessions``, ``sessions list``, …)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *subcommands(child)]
    return found


def load_app(spec: str | None) -> Steward:
    if spec is None:
        from server.dev import demo

        return demo
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        msg = f"--app must be module:attribute, got {spec!r}"
        raise ConfigError(msg)
    # like other ASGI servers, --app is imported from the working folder (``steward`` is a console
    # script: its own folder, not the working one, heads sys.path)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"--app {spec!r}: cannot import {module_name!r}: {exc}"
        raise ConfigError(msg) from None
    app = getattr(module, attribute, None)
    if not isinstance(app, Steward):
        msg = f"--app {spec!r}: {attribute!r} is not a Steward application"
        raise ConfigError(msg)
    return app


async def _with_database(settings: Settings, fn: Any, *, supervised: bool = False) -> None:
    """Run ``fn(dsn)`` against the configured database, or a private cluster in the data folder.

    ``supervised`` (serving): ``fn(dsn, keeper)``, where ``keeper`` is the `PostmasterKeeper` of
    the private cluster (None with a database URL) for the caller to run; a first start that fails
    is then left to it (it retries and reports why) instead of ending the command.
    """
    if settings.database_url:
        await (fn(settings.database_url, None) if supervised else fn(settings.database_url))
        return
    cluster = EmbeddedPostgres(
        settings.data_dir / "postgres", durable=True, binaries=settings.postgres_binaries
    )
    keeper = PostmasterKeeper(cluster) if supervised else None
    try:
        await cluster.start()
    except PostgresStartError:
        # the keeper retries a cluster that exists; a data folder that cannot even hold the
        # credentials (so no DSN) ends the command with the reason
        if keeper is None or not cluster.credentials_file.exists():
            raise
    try:
        dsn = cluster.dsn()
        await (fn(dsn, keeper) if supervised else fn(dsn))
    finally:
        if cluster.started_here:  # a cluster a running Steward uses is left to it
            with trio.move_on_after(30, shield=True):
                await cluster.stop()


async def _serve(settings: Settings, app: Steward, ready_file: Path | None) -> None:
    from server._node import bind_dev_idp, bind_socket, run_node, write_ready_file

    # the ports first: a port in use ends the command at once, before a database starts
    sock = bind_socket(settings.host, settings.port, reuse_port=settings.reuse_port)
    idp_sock = bind_dev_idp(settings) if settings.upstream is None and settings.dev_idp else None

    async def run(dsn: str, keeper: PostmasterKeeper | None) -> None:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(
                lambda task_status: run_node(
                    settings,
                    app,
                    dsn=dsn,
                    sock=sock,
                    idp_sock=idp_sock,
                    embedded_postgres=keeper,
                    task_status=task_status,
                )
            )
            if ready_file is not None:
                write_ready_file(ready_file, node)
            print(
                f"Steward node {node.info.node_id} is listening on {node.info.listen_url}, "
                f"serving MCP at {node.info.mcp_url}",
                file=sys.stderr,
            )
            if not settings.admin_token:
                print(
                    f"Admin view at {node.info.base_url}/admin (token for this run: {node.admin_token})",
                    file=sys.stderr,
                )
            if node.info.dev_idp_url:
                print(
                    f"Development IdP (demo users alice, bob, carol) at {node.info.dev_idp_url}",
                    file=sys.stderr,
                )
            if settings.dev_idp_exposed:
                print(f"WARNING: {DEV_IDP_EXPOSED}", file=sys.stderr)
            if settings.dev_no_auth:
                print(
                    f"WARNING: --dev-no-auth: AUTHORIZATION IS OFF. Every request runs as the "
                    f"development user {DEV_USER!r}, with or without a token. Development only.",
                    file=sys.stderr,
                )
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    print("Stopping…", file=sys.stderr)
                    nursery.cancel_scope.cancel()
                    break

    await _with_database(settings, run, supervised=True)


async def _serve_workers(
    settings: Settings, app_spec: str | None, ready_file: Path | None, config: Path | None = None
) -> None:
    """N worker processes, each a node with its own supervision tree, on one database and one
    port (SO_REUSEPORT). This process keeps what they share: the embedded database, the
    development IdP and the upstream-token key. Every worker reads the same configuration file
    (its tiers, limits and clients), with what this process decided in its environment."""
    import json
    import secrets
    import tempfile

    from server._node import bind_dev_idp, bind_socket, open_keyring, serve_http
    from server.dev import DevIdP
    from server.http import address_limiter

    # the ports first: a port in use ends the command at once, before a database starts
    probe = bind_socket(settings.host, settings.port, reuse_port=True)
    port = probe.getsockname()[1]
    idp_sock = bind_dev_idp(settings) if settings.upstream is None and settings.dev_idp else None

    async def run(dsn: str, keeper: PostmasterKeeper | None) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        open_keyring(settings)  # made here once, shared by the workers
        key_file = settings.key_file
        key = (
            {"STEWARD_ENCRYPTION_KEY_FILE": str(key_file.resolve())}
            if key_file is not None
            else {"STEWARD_ENCRYPTION_KEY": settings.encryption_key or ""}
        )
        public = settings.public_url or f"http://{settings.host}:{port}"
        env = {
            **os.environ,
            "STEWARD_DATABASE_URL": dsn,
            "STEWARD_PORT": str(port),
            "STEWARD_PUBLIC_URL": public,
            **key,
            "STEWARD_WORKERS": "1",
            "STEWARD_REUSE_PORT": "true",
            "STEWARD_ADMIN_TOKEN": settings.admin_token or secrets.token_urlsafe(24),
        }
        async with trio.open_nursery() as nursery:
            if keeper is not None:  # the workers share the cluster: this process keeps it up
                await nursery.start(keeper.run)
            idp_url = None
            if idp_sock is not None:
                host, idp_port = idp_sock.getsockname()[:2]
                idp_url = f"http://{host}:{idp_port}"
                idp = DevIdP(
                    idp_url, limiter=address_limiter(settings.address_limits, sign_in=True)
                )
                await nursery.start(serve_http, idp, idp_sock, 1.0)
                env.update(
                    {
                        "STEWARD_DEV_IDP": "false",
                        "STEWARD_UPSTREAM__ISSUER": idp_url,
                        "STEWARD_UPSTREAM__AUTHORIZATION_ENDPOINT": f"{idp_url}/authorize",
                        "STEWARD_UPSTREAM__TOKEN_ENDPOINT": f"{idp_url}/token",
                        "STEWARD_UPSTREAM__USERINFO_ENDPOINT": f"{idp_url}/userinfo",
                        "STEWARD_UPSTREAM__REVOCATION_ENDPOINT": f"{idp_url}/revoke",
                        "STEWARD_UPSTREAM__CLIENT_ID": "steward",
                        "STEWARD_UPSTREAM__SCOPES": "openid,profile,email",
                    }
                )
            folder = Path(tempfile.mkdtemp(prefix="steward-workers-"))
            procs = []
            for i in range(settings.workers):
                cmd = [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "serve",
                    "--ready-file",
                    str(folder / f"{i}.json"),
                ]
                if app_spec:
                    cmd += ["--app", app_spec]
                if config is not None:
                    cmd += ["--config", str(config.resolve())]
                worker_env = {
                    **env,
                    "STEWARD_NODE_ID": f"{settings.node_id or 'node'}-{i}",
                    "STEWARD_DATA_DIR": str(settings.data_dir / f"worker-{i}"),
                }
                procs.append(await trio.lowlevel.open_process(cmd, env=worker_env))
            probe.close()
            with trio.fail_after(120):
                while not all((folder / f"{i}.json").exists() for i in range(settings.workers)):
                    if any(p.returncode is not None for p in procs):
                        msg = "a worker exited during start"
                        raise RuntimeError(msg)
                    await trio.sleep(0.1)
            nodes = [
                json.loads((folder / f"{i}.json").read_text()) for i in range(settings.workers)
            ]
            doc = {
                **nodes[0],
                "node_id": [n["node_id"] for n in nodes],
                "workers": settings.workers,
                # each worker's own socket: they share the port (SO_REUSEPORT)
                "nodes": [{"node_id": n["node_id"], "listen_url": n["listen_url"]} for n in nodes],
            }
            if idp_url:
                doc["dev_idp_url"] = idp_url
                doc["dev_idp_control_secret"] = idp.control_secret  # its /_control/ endpoints
            if ready_file is not None:
                tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
                tmp.write_text(json.dumps(doc, indent=2))
                tmp.replace(ready_file)  # whole or absent: a reader never sees it half written
            print(
                f"Steward is listening on {doc['listen_url']}, serving MCP at {doc['mcp_url']} "
                f"with {settings.workers} workers",
                file=sys.stderr,
            )
            if not settings.admin_token:
                print(
                    f"Admin view at {doc['base_url']}/admin (token for this run: {env['STEWARD_ADMIN_TOKEN']})",
                    file=sys.stderr,
                )
            if settings.dev_idp_exposed:
                print(f"WARNING: {DEV_IDP_EXPOSED}", file=sys.stderr)
            try:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
            finally:
                with trio.move_on_after(30, shield=True):
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        await p.wait()
                nursery.cancel_scope.cancel()

    await _with_database(settings, run, supervised=True)


async def _migrate(settings: Settings) -> None:
    from actors import Store, migrate
    from runtime import Supervisor

    async def run(dsn: str) -> None:
        store = Store(dsn)
        from actors import store_child_spec

        async with trio.open_nursery() as nursery:
            sup = await nursery.start(Supervisor("migrate", [store_child_spec(store)]).run)
            progress = Progress("migrations")
            try:
                applied = await migrate(store, on_progress=progress)
            finally:
                progress.close()
            print(f"applied migrations: {applied or 'none (up to date)'}")
            await sup.stop()

    await _with_database(settings, run)


def _doctor(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from server.cli._doctor import run_doctor

    configure_logging("error")  # the report is the output
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        return run_doctor(None, exc, as_json=args.json, with_database=_with_database)
    try:
        return run_doctor(
            settings,
            None,
            as_json=args.json,
            with_database=_with_database,
            config_file=args.config,
        )
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        k: getattr(args, k, None)
        for k in ("host", "port", "data_dir", "database_url", "workers", "dev_no_auth")
    }
    if args.command == "doctor":
        return _doctor(args, overrides)
    try:
        settings = load_settings(args.config, overrides=overrides)
        configure_logging(settings.log_level)
        if args.command == "serve":
            from server._node import tune_gc

            tune_gc()
        if args.command == "serve" and settings.workers > 1:
            load_app(args.app)  # fail early, in this process, on a bad --app
            trio.run(_serve_workers, settings, args.app, args.ready_file, args.config)
        elif args.command == "serve":
            app = load_app(args.app)
            trio.run(_serve, settings, app, args.ready_file)
        elif args.command == "migrate":
            trio.run(_migrate, settings)
        else:
            run_command(args, settings, _with_database)
    except (ConfigError, PostgresNotFound, PostgresStartError) as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        known = _known_error(exc)
        if known is None:
            raise
        # one line, not a traceback: the error says the rule and the fix
        print(f"steward: {known}", file=sys.stderr)
        return 1
    return 0


def _known_error(exc: BaseException) -> BaseException | None:
    """A failure an operator fixes outside Steward (a migration the database role may not
    apply, a port in use), found in ``exc``, its exception groups and its causes; None for
    anything else."""
    from actors import MigrationError
    from server._node import CannotListen

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MigrationError | CannotListen):
            return e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        for linked in (e.__cause__, e.__context__):
            if linked is not None:
                todo.append(linked)
    return None


if __name__ == "__main__":
    sys.exit(main())
