"""Users by name: the CLI and the admin API show ``bob`` (the full id at hand in ``--json`` and the
API), and the CLI takes ``bob`` where only one user is called so, refusing with the candidates
where several are (a data folder from before the development IdP kept its port)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.harness._steward import running_node, sign_in

ROOT = Path(__file__).resolve().parent.parent
STEWARD = [sys.executable, "-m", "server.cli"]
OLD_BOB = "http://127.0.0.1:42161|bob"  # as a development IdP on a random port named bob


async def test_the_cli_and_the_admin_api_name_users_and_take_unambiguous_names(
    fresh_db: str,
) -> None:
    async def steward(*args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [*STEWARD, *args, "--database-url", fresh_db],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )

    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        assert node.info.dev_idp_url is not None
        alice_id = f"{node.info.dev_idp_url}|alice"
        bob_id = f"{node.info.dev_idp_url}|bob"
        await sign_in(http, node, "alice")
        await sign_in(http, node, "bob")
        listed = await steward("sessions", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {(r["user_name"], r["user_id"]) for r in json.loads(listed.stdout)} == {
            ("alice", alice_id),
            ("bob", bob_id),
        }

        # a name only alice has, and her email address, are alice
        out = await steward("users", "set-tier", "alice", "pro")
        assert out.returncode == 0, out.stderr
        assert alice_id in out.stdout
        assert (
            await node.store.fetchval(
                "SELECT tier_override FROM users WHERE user_id = $1", alice_id
            )
            == "pro"
        )
        out = await steward("users", "clear-tier", "Alice@Example.com", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["user_id"] == alice_id

        # a second "bob" (another issuer): the name is refused with both candidates
        await node.store.fetchval(
            "INSERT INTO users (user_id, issuer, subject, email, tier) VALUES ($1, $2, 'bob', "
            "'bob@example.com', 'free') RETURNING 1",
            OLD_BOB,
            OLD_BOB.split("|")[0],
        )
        out = await steward("users", "revoke", "bob")
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert "'bob' names 2 users" in line and OLD_BOB in line and bob_id in line
        assert (
            await node.store.fetchval("SELECT count(*) FROM users WHERE revoked_at IS NOT NULL")
            == 0
        )
        out = await steward("sessions", "end", "--user", "bob")
        assert out.returncode == 2 and "names 2 users" in out.stderr
        nobody = await steward("users", "reinstate", "dave")
        assert nobody.returncode == 2 and "no user 'dave'" in nobody.stderr

        # the full id still names exactly one; shared names show their issuer's host
        out = await steward("sessions", "end", "--user", bob_id)
        assert out.returncode == 0 and f"ended 1 sessions of {bob_id}" in out.stdout, out.stderr
        listed = await steward("sessions", "list")
        assert listed.returncode == 0, listed.stderr
        users = {line.split("  ")[-1] for line in listed.stdout.splitlines()[1:]}
        host = node.info.dev_idp_url.removeprefix("http://")
        assert users == {"alice", f"bob ({host})"}, listed.stdout
        shown = await steward("sessions", "list", "--user", "alice", "--json")
        (grant,) = json.loads(shown.stdout)
        shown = await steward("sessions", "show", str(grant["grant_id"]))
        assert f"user      alice  ({alice_id})" in shown.stdout, shown.stdout

        admin = {"authorization": f"Bearer {node.admin_token}"}
        sessions = (
            await http.get(f"{node.info.listen_url}/admin/api/sessions", headers=admin)
        ).json()["sessions"]
        assert {(s["user_name"], s["user_id"]) for s in sessions} == {
            ("alice", alice_id),
            (f"bob ({host})", bob_id),
        }
        events = (await http.get(f"{node.info.listen_url}/admin/api/events", headers=admin)).json()[
            "events"
        ]
        assert {e["user_name"] for e in events if e["user_id"] == alice_id} == {"alice"}
