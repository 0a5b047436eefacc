"""A first run: the data folder ignored by git, one line for a port in use, help for every option,
``--config`` after the subcommand, and a development IdP whose users are the same at each start."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

from server.cli._main import _parser
from server.config._settings import Settings
from tests.harness._steward import running_node, sign_in

ROOT = Path(__file__).resolve().parent.parent
STEWARD = [sys.executable, "-m", "server.cli"]
DEV_IDP_FILE = "dev-idp.json"  # server/_node.py: the development IdP's port, kept


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += all_parsers(child)
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="stw-first-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def steward(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEWARD, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "STEWARD_LOG_LEVEL": "error"},
    )


def test_the_default_data_folder_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    default = attrs.fields_dict(Settings)["data_dir"].default
    for path in (f"{default}/", f"{default}/postgres/pgdata/PG_VERSION"):
        out = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, timeout=30
        )
        assert out.returncode == 0, f"{path} is not ignored by .gitignore"


def test_every_option_of_every_subcommand_has_help_that_shows_its_default() -> None:
    parsers = all_parsers(_parser())
    names = {p.prog for p in parsers}
    assert {"steward serve", "steward users set-tier", "steward keys rotate"} <= names
    problems = []
    for p in parsers:
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = p._get_formatter()._get_help_string(action)  # as --help prints it
            where = f"{p.prog} {'/'.join(action.option_strings) or action.dest}"
            if not text:
                problems.append(f"{where}: no help")
            elif action.option_strings and "default" not in text:
                problems.append(f"{where}: the help does not show the default")
        p.format_help()  # every %-placeholder renders
    assert not problems, "\n".join(problems)
    # the defaults shown are the real ones
    serve = next(p for p in parsers if p.prog == "steward serve").format_help()
    assert "(default: 8000, or the setting port / STEWARD_PORT)" in " ".join(serve.split())
    # 1 == True in a dict lookup: a numeric default of 1 must not read as "on"
    assert "(default: 1, or the setting workers / STEWARD_WORKERS)" in " ".join(serve.split())


def test_config_is_accepted_after_the_subcommand_too(data_dir: Path) -> None:
    config = data_dir / "steward.toml"
    config.write_text("workers = 0\n")
    for args in (
        ["--config", str(config), "doctor", "--json"],
        ["doctor", "--json", "--config", str(config)],
    ):
        out = steward(*args)
        assert out.returncode == 1, out.stderr
        checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
        assert checks["configuration"]["status"] == "fail"
        assert "workers" in checks["configuration"]["detail"], checks["configuration"]
    out = steward("migrate", "--config", str(data_dir / "missing.toml"))
    assert out.returncode == 2 and "missing.toml" in out.stderr and "does not exist" in out.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use_says_so_in_one_line(data_dir: Path, busy_port: int) -> None:
    out = steward("serve", "--port", str(busy_port), "--data-dir", str(data_dir / "data"))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"steward: cannot listen on 127.0.0.1:{busy_port}: in use; "), lines
    assert "choose another (port / STEWARD_PORT, --port)" in lines[0]
    # said before anything else started: no database was made
    assert not (data_dir / "data" / "postgres").exists()


def test_serve_with_the_kept_development_idp_port_in_use_names_the_file(
    data_dir: Path, busy_port: int
) -> None:
    folder = data_dir / "data"
    folder.mkdir()
    (folder / DEV_IDP_FILE).write_text(json.dumps({"port": busy_port}))
    out = steward("serve", "--port", "0", "--data-dir", str(folder))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{busy_port}: in use" in lines[0]
    assert str(folder / DEV_IDP_FILE) in lines[0] and "keep their ids" in lines[0]
    out = steward("doctor", "--json", "--port", "0", "--data-dir", str(folder))
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["development IdP port"]["status"] == "fail", checks
    assert str(busy_port) in checks["development IdP port"]["detail"]

    (folder / DEV_IDP_FILE).write_text("{not json")
    out = steward("serve", "--port", "0", "--data-dir", str(folder))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "should hold the development IdP's port" in out.stderr


async def test_the_development_idp_keeps_its_issuer_and_its_users_across_restarts(
    fresh_db: str, data_dir: Path
) -> None:
    """Three starts on one data folder: one issuer, one "bob"."""
    issuers, user_ids = set(), set()
    async with httpx.AsyncClient(timeout=20) as http:
        for _ in range(3):
            async with running_node(fresh_db, data_dir=data_dir) as node:
                assert node.info.dev_idp_url is not None
                issuers.add(node.info.dev_idp_url)
                tokens = await sign_in(http, node, "bob")
                r = await http.get(
                    f"{node.info.listen_url}/admin/api/sessions",
                    headers={"authorization": f"Bearer {node.admin_token}"},
                )
                user_ids |= {s["user_id"] for s in r.json()["sessions"]}
                assert tokens["access_token"]
                count = await node.store.fetchval("SELECT count(*) FROM users")
    assert len(issuers) == 1, issuers
    assert user_ids == {f"{issuers.pop()}|bob"}
    assert count == 1
    kept = json.loads((data_dir / DEV_IDP_FILE).read_text())
    assert f"127.0.0.1:{kept['port']}" in next(iter(user_ids))


def test_with_workers_the_development_idp_keeps_its_issuer_across_restarts(
    fresh_db: str, data_dir: Path
) -> None:
    """``--workers 2``: the parent serves the development IdP, on the port the data folder keeps;
    "bob" signed in before and after a restart is one user."""
    from bench._servers import obtain_token
    from tests.harness._serve import steward_serve

    os.chmod(data_dir, 0o755)
    args = ("--workers", "2", "--port", "0", "--database-url", fresh_db)
    issuers, users = [], set()
    with steward_serve(*args, env={"STEWARD_ADMIN_TOKEN": "t"}, folder=data_dir) as server:
        for start in range(2):
            if start:
                assert server.stop() == 0
                server.start()
            issuers.append(server.ready["dev_idp_url"])
            obtain_token(server.ready, "bob")
            listed = httpx.get(
                f"{server.ready['base_url']}/admin/api/sessions",
                headers={"authorization": "Bearer t"},
                timeout=20,
            )
            users |= {s["user_id"] for s in listed.json()["sessions"]}
    assert issuers[0] == issuers[1], issuers
    assert users == {f"{issuers[0]}|bob"}
    kept = json.loads((data_dir / "data" / DEV_IDP_FILE).read_text())
    assert issuers[0] == f"http://127.0.0.1:{kept['port']}"
