"""The steward command: serve an operator's app with an embedded PostgreSQL, migrate, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench._servers import obtain_token
from tests.harness._pg import Cluster
from tests.harness._serve import steward_serve

ROOT = Path(__file__).resolve().parent.parent
STEWARD = [sys.executable, "-m", "server.cli"]


@pytest.fixture
def data_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="stw-cli-"))
    os.chmod(folder, 0o755)
    return folder


def test_serve_runs_the_readme_app_on_an_embedded_database_and_stops_cleanly(
    data_dir: Path,
) -> None:
    with steward_serve("--app", "tests.example_app:app", "--port", "0", folder=data_dir) as server:
        doc = server.ready
        assert set(doc) >= {"mcp_url", "issuer_url", "dev_idp_url"}
        token = obtain_token(doc, "bob")
        headers = {
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        }
        with httpx.Client(timeout=30) as http:
            init = http.post(
                doc["mcp_url"],
                headers=headers,
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                },
            )
            assert init.status_code == 200
            headers["mcp-session-id"] = init.headers["mcp-session-id"]
            call = http.post(
                doc["mcp_url"],
                headers=headers,
                json={
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tools/call",
                    "params": {"name": "forecast", "arguments": {"city": "Oslo"}},
                },
            )
            assert (
                call.json()["result"]["content"][0]["text"]
                == "sunny in Oslo for 3 days (pro account)"
            )
        code = server.stop()
    assert code == 0
    # the data folder is kept between runs: a second start finds the same database
    assert (data_dir / "data" / "postgres" / "pgdata" / "PG_VERSION").exists()


def test_migrate_applies_the_schema_to_a_database_url(fresh_db: str) -> None:
    out = subprocess.run(
        [*STEWARD, "migrate", "--database-url", fresh_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    from actors._migrations import load_migrations

    expected = [m.version for m in load_migrations()]
    assert f"applied migrations: {expected}" in out.stdout
    n = len(expected)
    assert f"migrations: {n}/{n} (100%)" in out.stderr  # the progress line
    again = subprocess.run(
        [*STEWARD, "migrate", "--database-url", fresh_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "up to date" in again.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve", "--app", "nowhere:app"], {}, "--app 'nowhere:app': cannot import 'nowhere'"),
        (["serve", "--app", "tests.example_app"], {}, "--app must be module:attribute"),
        (
            ["serve"],
            {"STEWARD_PORT": "eighty"},
            "setting 'port' (environment variable STEWARD_PORT) must be an integer",
        ),
        (
            ["serve", "--host", "0.0.0.0"],
            {},
            "the development IdP signs anyone in as any user and serves loopback only",
        ),
        (
            ["serve", "--dev-no-auth", "--host", "0.0.0.0"],
            {},
            "setting 'dev_no_auth' (--dev-no-auth) binds to loopback only",
        ),
        (
            ["serve", "--dev-no-auth"],
            {"STEWARD_DEV_IDP": "false"},
            "it needs the development IdP",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(
    args: list[str], env: dict[str, str], message: str
) -> None:
    out = subprocess.run(
        [*STEWARD, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_app_is_imported_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``steward`` is a console script: the working folder is not on sys.path unless --app puts
    it there (``steward serve --app examples.everything:app`` from the repository's root)."""
    from server import Steward
    from server.cli._main import load_app

    (tmp_path / "stw_cwd_app.py").write_text('from server import Steward\napp = Steward("cwd")\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "stw_cwd_app", raising=False)
    app = load_app("stw_cwd_app:app")
    assert isinstance(app, Steward) and app.name == "cwd"


async def test_operator_commands_list_show_and_revoke_across_processes(fresh_db: str) -> None:
    import trio

    from tests.harness._steward import McpClient, get_stream, running_node, sign_in

    def steward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*STEWARD, *args, "--database-url", fresh_db],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        async with get_stream(mcp) as stream:
            await stream.next()
            listed = await trio.to_thread.run_sync(steward, "sessions", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert len(rows) == 1 and rows[0]["status"] == "active" and rows[0]["streams"] == 1
            shown = await trio.to_thread.run_sync(steward, "sessions", "show", rows[0]["grant_id"])
            assert "streams (1 open)" in shown.stdout and "tier      free" in shown.stdout
            bad = await trio.to_thread.run_sync(
                steward, "users", "set-tier", rows[0]["user_id"], "gold"
            )
            assert bad.returncode == 2 and "tier must be one of free, pro, enterprise" in bad.stderr
            nobody = await trio.to_thread.run_sync(steward, "sessions", "show", "not-a-uuid")
            assert nobody.returncode == 2 and "is not a session id" in nobody.stderr
            revoked = await trio.to_thread.run_sync(steward, "users", "revoke", rows[0]["user_id"])
            assert revoked.returncode == 0, revoked.stderr
            with trio.fail_after(5):  # the command's cluster event reaches the running node
                event = await stream.next()
            assert event is not None and event["data"]["params"]["data"]["error"] == "revoked"
        assert (await mcp.post("ping")).status_code == 401


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    """``steward doctor --json``: the exit status and the checks by name."""
    out = subprocess.run(
        [*STEWARD, "doctor", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}


def upstream_env(issuer: str) -> dict[str, str]:
    return {
        "STEWARD_UPSTREAM__ISSUER": issuer,
        "STEWARD_UPSTREAM__AUTHORIZATION_ENDPOINT": f"{issuer}/authorize",
        "STEWARD_UPSTREAM__TOKEN_ENDPOINT": f"{issuer}/token",
        "STEWARD_UPSTREAM__CLIENT_ID": "steward",
    }


async def test_doctor_passes_with_a_migrated_database_and_a_reachable_idp(
    fresh_db: str, data_dir: Path
) -> None:
    import trio

    from server.postgres._embedded import free_port
    from tests.harness._steward import running_node

    async with running_node(fresh_db) as node:  # migrates the database, serves an IdP
        assert node.info.dev_idp_url is not None
        env = {
            **upstream_env(node.info.dev_idp_url),
            "STEWARD_ADMIN_TOKEN": "doctor-test-" + "x" * 24,
        }
        args = ["--database-url", fresh_db, "--data-dir", str(data_dir), "--port", str(free_port())]
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args, env=env))
        port = str(urllib.parse.urlsplit(node.info.listen_url).port)
        own = [*args[:-1], port]  # the port of the running Steward: a warning, not a failure
        own_code, own_checks = await trio.to_thread.run_sync(lambda: doctor(*own, env=env))
    assert own_code == 0 and own_checks["port"]["status"] == "warn"
    assert "a Steward is already serving" in own_checks["port"]["detail"]
    assert {name: c["status"] for name, c in checks.items()} == {
        "configuration": "ok",
        "data folder": "ok",
        "encryption key": "ok",
        "port": "ok",
        "database": "ok",
        "migrations": "ok",
        "database privileges": "ok",
        "database role": "ok",
        "identity provider": "ok",
        "identity provider keys": "warn",  # the development IdP signs no id_token
        "identity provider grants": "ok",
    }
    assert code == 0
    assert checks["identity provider"]["detail"] == (
        f"{node.info.dev_idp_url}/.well-known/openid-configuration answers for "
        f"{node.info.dev_idp_url}"
    )
    assert "no jwks_uri" in checks["identity provider keys"]["detail"]


def test_doctor_names_each_failure_and_its_fix(data_dir: Path) -> None:
    key_file = data_dir / "upstream-token.key"
    key_file.write_text("k1 " + "A" * 43 + "=\n")
    key_file.chmod(0o644)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, checks = doctor(
            "--database-url",
            "postgresql://steward:hunter2@127.0.0.1:1/steward",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            env=upstream_env("http://127.0.0.1:1"),
        )
    assert code == 1
    failed = {name: c for name, c in checks.items() if c["status"] == "fail"}
    assert set(failed) == {"database", "identity provider", "encryption key", "port"}
    assert "check database_url" in failed["database"]["fix"]
    assert "ConnectionRefusedError" in failed["database"]["detail"]
    assert "hunter2" not in json.dumps(checks)  # the URL's password
    assert failed["identity provider"]["detail"].startswith(
        "discovery of http://127.0.0.1:1 failed: metadata http://127.0.0.1:1/"
    )
    assert "unreachable: ConnectError" in failed["identity provider"]["detail"]
    assert failed["encryption key"]["fix"] == f"chmod 600 {key_file}"
    assert f"{port}: in use" in failed["port"]["detail"]

    code, checks = doctor(env={"STEWARD_PORT": "eighty"})
    assert code == 1
    assert checks["configuration"]["status"] == "fail"
    assert "STEWARD_PORT" in checks["configuration"]["detail"]


def test_doctor_fails_when_the_development_idp_is_exposed(data_dir: Path) -> None:
    """Allowed by dev_idp_allow_public_insecure, the development IdP off loopback still fails
    the doctor; without that setting it is a configuration failure."""
    code, checks = doctor(
        "--data-dir", str(data_dir), "--host", "0.0.0.0", "--port", "0",
        env={"STEWARD_DEV_IDP_ALLOW_PUBLIC_INSECURE": "true"},
    )  # fmt: skip
    assert code == 1
    assert checks["identity provider"]["status"] == "fail"
    assert "signs anyone in as any user" in checks["identity provider"]["detail"]
    assert "[upstream]" in checks["identity provider"]["fix"]
    code, checks = doctor("--data-dir", str(data_dir), "--host", "0.0.0.0", "--port", "0")
    assert code == 1
    assert checks["configuration"]["status"] == "fail"
    assert "development IdP" in checks["configuration"]["detail"]


async def test_a_node_serving_the_development_idp_off_loopback_warns_loudly(
    fresh_db: str,
) -> None:
    from structlog.testing import capture_logs

    from tests.harness._steward import running_node

    with capture_logs() as logs:
        async with running_node(
            fresh_db, public_url="https://mcp.example.com", dev_idp_allow_public_insecure=True
        ):
            pass
    warnings = [e for e in logs if e["event"] == "dev_idp_exposed"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "signs ANYONE in as ANY user" in warnings[0]["note"]


async def test_sessions_end_for_a_user_ends_each_of_their_sessions_with_progress(
    fresh_db: str,
) -> None:
    import trio

    from tests.harness._steward import running_node, sign_in

    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        for user in ("alice", "alice", "alice", "bob"):
            await sign_in(http, node, user)
        alice = await node.store.fetchval("SELECT user_id FROM users WHERE subject = 'alice'")
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [*STEWARD, "sessions", "end", "--user", alice, "--database-url", fresh_db],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"ended 3 sessions of {alice}"
        assert "ending sessions: 3/3 (100%)" in out.stderr
        rows = await node.store.fetch("SELECT user_id, status FROM grants ORDER BY user_id")
        assert sorted((r["user_id"].rsplit("|", 1)[-1], r["status"]) for r in rows) == [
            ("alice", "ended"),
            ("alice", "ended"),
            ("alice", "ended"),
            ("bob", "active"),
        ]


async def test_the_readme_sdk_client_signs_in_through_the_development_idp_and_calls_tools(
    fresh_db: str,
) -> None:
    import trio

    from tests.harness._steward import running_node

    async with running_node(fresh_db) as node:
        command = [sys.executable, "-m", "examples.sdk_client", node.info.mcp_url, "--user", "bob"]
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        )
        assert out.returncode == 0, out.stderr
        # the client's DELETE on exit closes its stream quietly: no error, no traceback
        assert "Error" not in out.stderr and "Traceback" not in out.stderr, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("whoami → {'user': ") and "'tier': 'pro'" in lines[0]
        assert lines[1] == "echo → hello from the SDK client"
        assert (
            await node.store.fetchval(
                "SELECT count(*) FROM grants g JOIN oauth_clients c USING (client_id) "
                "WHERE g.status = 'active' AND c.client_name = 'Steward quick start'"
            )
            == 1
        )


async def test_the_readme_sdk_client_says_in_one_line_that_a_revoked_user_was_refused(
    fresh_db: str,
) -> None:
    import trio

    from tests.harness._steward import running_node, sign_in

    async with running_node(fresh_db) as node:
        async with httpx.AsyncClient(timeout=30) as http:
            await sign_in(http, node, "bob")
        user_id = await node.store.fetchval("SELECT user_id FROM users WHERE subject = 'bob'")
        await node.sessions.revoke_user(user_id)
        command = [sys.executable, "-m", "examples.sdk_client", node.info.mcp_url, "--user", "bob"]
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        )
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr and "OAuth flow error" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines() == [
            "sdk_client: the sign-in was refused (403 access_denied): "
            "this user's access was revoked"
        ]
        assert out.stdout == ""


def test_serve_restarts_its_embedded_postgres_when_it_dies(data_dir: Path) -> None:
    """kill -9 of the embedded postmaster under `steward serve`: Steward starts it again by
    itself (a new postmaster), /readyz comes back, writes work, the process never exits; no
    password of the cluster reaches the log or the ready file."""
    import signal
    import time

    pgdata = data_dir / "data" / "postgres" / "pgdata"
    with steward_serve("--port", "0", folder=data_dir) as server:
        ready_url = server.ready["mcp_url"].removesuffix("/mcp") + "/readyz"
        with httpx.Client(timeout=30) as http:
            first = http.get(ready_url).json()
            assert first["ready"] is True and first["postgres"]["state"] == "running"
            before = int((pgdata / "postmaster.pid").read_text().split()[0])
            assert first["postgres"]["pid"] == before
            os.kill(before, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                report = http.get(ready_url).json()
                if report["ready"] and report["postgres"].get("pid") not in (None, before):
                    break
                assert server.proc is not None and server.proc.poll() is None, server.log_tail()
                assert time.monotonic() < deadline, report
                time.sleep(0.1)
            assert report["postgres"]["restarts"] == 1
            after = int((pgdata / "postmaster.pid").read_text().split()[0])
            assert after == report["postgres"]["pid"] != before
        assert obtain_token(server.ready, "carol")  # registration, sign-in, code: all written
        assert server.proc is not None and server.proc.poll() is None
        assert server.stop() == 0
    credentials = json.loads((data_dir / "data" / "postgres" / "credentials.json").read_text())
    written = server.log_path.read_text() + server.ready_path.read_text()
    assert "embedded_postgres_died" in written
    for secret in (credentials["admin"], credentials["runtime"]):
        assert secret not in written


async def test_doctor_checks_the_embedded_clusters_access_and_role(data_dir: Path) -> None:
    import trio

    from server.postgres._embedded import EmbeddedPostgres
    from tests.harness._pg import psql

    cluster = EmbeddedPostgres(data_dir / "data" / "postgres", durable=False)
    await cluster.start()
    args = ["--data-dir", str(data_dir / "data"), "--port", "0"]
    try:
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args))
        assert checks["database access"]["status"] == "ok", checks["database access"]
        assert checks["database role"]["status"] == "ok", checks["database role"]
        # a door opened by hand: a trust line, and the runtime role made a superuser
        with cluster.hba_file.open("a") as hba:
            hba.write("host all all 127.0.0.1/32 trust\n")
        psql(cluster.admin_dsn(), "ALTER ROLE steward_app SUPERUSER; SELECT pg_reload_conf()")
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args))
        assert code == 1
        access, role = checks["database access"], checks["database role"]
        assert access["status"] == "fail" and role["status"] == "fail"
        assert "'host all all 127.0.0.1/32 trust'" in access["detail"]
        assert "not scram-sha-256" in access["detail"]
        assert "rewrites pg_hba.conf" in access["fix"]
        assert role["detail"] == "Steward connects as steward_app, which has SUPERUSER"
        fix = "as the cluster's superuser: ALTER ROLE steward_app NOSUPERUSER"
        assert role["fix"] == fix
        psql(cluster.admin_dsn(), fix.partition(": ")[2])  # the fix, as written, works
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args))
        assert checks["database role"]["status"] == "ok"
    finally:
        await cluster.stop("immediate")


def test_a_database_role_that_cannot_create_tables_fails_the_doctor_and_serve_says_why_in_one_line(
    fresh_db: str, data_dir: Path, pg_cluster: Cluster
) -> None:
    """PostgreSQL 15 and later give no role but the owner CREATE on schema public: the doctor
    names the grant, and migrate and serve end with one line, not a traceback."""
    from tests.harness._pg import psql

    role = f"limited_{os.urandom(4).hex()}"
    password = os.urandom(12).hex()
    parts = urllib.parse.urlsplit(fresh_db)
    admin = pg_cluster.admin_dsn(parts.path.lstrip("/"))
    psql(admin, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    limited = parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}").geturl()
    try:
        args = ["--database-url", limited, "--data-dir", str(data_dir), "--port", "0"]
        code, checks = doctor(*args)
        assert code == 1
        assert checks["database"]["status"] == "ok", checks["database"]
        assert checks["database privileges"]["status"] == "fail", checks["database privileges"]
        assert "may not create tables in schema public" in checks["database privileges"]["detail"]
        assert (
            f"GRANT USAGE, CREATE ON SCHEMA public TO {role}"
            in checks["database privileges"]["fix"]
        )

        for command in (["migrate"], ["serve", "--port", "0"]):
            out = subprocess.run(
                [*STEWARD, command[0], "--database-url", limited, "--data-dir", str(data_dir),
                 *command[1:]],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
                env={**os.environ, "STEWARD_LOG_LEVEL": "error"},
            )  # fmt: skip
            assert out.returncode == 1, (command, out.stderr)
            assert "Traceback" not in out.stderr, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1, out.stderr
            assert lines[0].startswith("steward: migration 0001_initial.sql failed"), lines
            assert "permission denied for schema public" in lines[0]
            assert "GRANT USAGE, CREATE ON SCHEMA public" in lines[0]

        psql(admin, f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
        code, checks = doctor(*args)
        assert checks["database privileges"]["status"] == "ok", checks["database privileges"]
    finally:
        psql(admin, f"DROP OWNED BY {role}; DROP ROLE {role}")


def _take_port_when_free(port: int, limit: float = 10.0) -> socket.socket:
    """A socket listening on 127.0.0.1:``port`` as soon as the port is free."""
    deadline = time.monotonic() + limit
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        sock.listen()
        return sock


def _poll(check: Any, limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"{what} within {limit}s"
            raise AssertionError(msg)
        time.sleep(0.1)


def test_serve_brings_its_embedded_postgres_back_once_its_port_is_free(
    data_dir: Path,
) -> None:
    """Issue 14 §1: the embedded postmaster is SIGKILLed and its port is taken at once by
    another process, so it cannot come back there yet. Steward stays up, /readyz names the
    reason and the log has a clear line; once the port is free Steward starts the cluster
    again by itself (on the same port, so the store reconnects) and writes succeed. Before,
    nothing restarted it: the outage lasted until an operator came."""
    with steward_serve("--port", "0", folder=data_dir) as server:
        base = server.ready["base_url"]
        pid_file = data_dir / "data" / "postgres" / "pgdata" / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, signal.SIGKILL)
        squatter = _take_port_when_free(port)
        with httpx.Client(timeout=10) as http:

            def refused_reason() -> str | None:
                r = http.get(f"{base}/readyz")
                reasons = " ".join(r.json().get("reasons", []))
                refused = r.status_code == 503 and "embedded PostgreSQL is failing" in reasons
                return reasons if refused else None

            try:
                reason = _poll(refused_reason, 30, "no /readyz reason about the embedded cluster")
                assert "Address already in use" in reason or "TCP/IP sockets" in reason, reason
                assert http.get(f"{base}/healthz").status_code == 200
                assert server.proc is not None and server.proc.poll() is None
                _poll(
                    lambda: "embedded_postgres_cannot_start" in server.log_path.read_text(),
                    10,
                    "no embedded_postgres_cannot_start line in the log",
                )
            finally:
                squatter.close()
            _poll(
                lambda: http.get(f"{base}/readyz").status_code == 200,
                60,
                "the node was not ready again",
            )
            r = http.post(f"{base}/register", json={"redirect_uris": ["http://127.0.0.1/cb"]})
            assert r.status_code == 201, r.text
        new_pid = int(pid_file.read_text().splitlines()[0])
        assert new_pid != pid
        assert int(pid_file.read_text().splitlines()[3]) == port
        log_text = server.log_path.read_text()
        assert "embedded_postgres_recovered" in log_text
        assert server.stop() == 0


async def test_a_listing_piped_into_a_reader_that_leaves_ends_quietly(fresh_db: str) -> None:
    """`steward sessions list | head -1`: the reader closes the pipe before the listing is
    written; the command stops without a traceback."""
    import trio

    from tests.harness._steward import running_node, sign_in

    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        await sign_in(http, node, "alice")

    def listing(*args: str) -> subprocess.CompletedProcess[str]:
        read, write = os.pipe()
        os.close(read)  # the reader has already gone
        try:
            return subprocess.run(
                [*STEWARD, "sessions", "list", *args, "--database-url", fresh_db],
                cwd=ROOT,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write)

    for args in ((), ("--json",)):
        out = await trio.to_thread.run_sync(listing, *args)
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_doctor_warns_of_an_admin_token_short_enough_to_guess(data_dir: Path) -> None:
    """The admin token controls every session: one an operator chose short is named, with a
    way to make a strong one; a generated-length token passes."""
    args = ["--data-dir", str(data_dir), "--port", "0"]
    _, checks = doctor(*args, env={"STEWARD_ADMIN_TOKEN": "short"})
    assert checks["admin token"]["status"] == "warn"
    assert "5 characters" in checks["admin token"]["detail"]
    assert "secrets.token_urlsafe" in checks["admin token"]["fix"]
    _, checks = doctor(*args, env={"STEWARD_ADMIN_TOKEN": "a" * 32})
    assert "admin token" not in checks


def test_doctor_warns_of_a_configuration_file_with_secrets_open_to_other_users(
    data_dir: Path,
) -> None:
    """A configuration file that holds a secret and that other OS users may read is named with
    the secrets it holds (never their values) and the fix; closed, or holding none, it passes."""
    config = data_dir.parent / "steward.toml"
    config.write_text(
        'admin_token = "a-long-enough-admin-token-0123456789"\n'
        "[[clients]]\n"
        'client_id = "ops"\n'
        'redirect_uris = ["https://ops.example/cb"]\n'
        'client_secret = "pre-registered-secret"\n'
    )

    def run() -> dict[str, dict[str, str]]:
        out = subprocess.run(
            [*STEWARD, "--config", str(config), "doctor", "--json",
             "--data-dir", str(data_dir), "--port", "0"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "Traceback" not in out.stderr, out.stderr
        return {c["name"]: c for c in json.loads(out.stdout)["checks"]}

    config.chmod(0o644)
    found = run()["configuration file"]
    assert found["status"] == "warn"
    assert "admin_token" in found["detail"] and "clients[0].client_secret" in found["detail"]
    assert "0644" in found["detail"] and found["fix"] == f"chmod 600 {config}"
    assert "pre-registered-secret" not in json.dumps(found)
    config.chmod(0o600)
    assert "configuration file" not in run()
    config.write_text("port = 8000\n")
    config.chmod(0o644)
    assert "configuration file" not in run()
