"""The admin view at /admin: signed in with the admin token (a cookie, never the token in a URL),
it renders the live supervision tree, finds sessions by user, and its actions take effect in the
database, in the JSON API and on the page. Driven in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness._steward import McpClient, get_stream, running_node, sign_in

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "admin-view-secret"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


async def test_the_admin_view_renders_the_tree_revokes_ends_and_reinstates_in_chromium(
    fresh_db: str, chromium: Path
) -> None:
    async with (
        running_node(fresh_db, admin_token=TOKEN) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        alice_tokens = await sign_in(http, node, "alice")
        alice = McpClient(http, node, alice_tokens["access_token"])
        await alice.initialize()
        bob = McpClient(http, node, (await sign_in(http, node, "bob"))["access_token"])
        await bob.initialize()
        alice_id = await node.store.fetchval("SELECT user_id FROM users WHERE subject = 'alice'")
        browser = [sys.executable, "-m", "tests.admin_browser", node.info.listen_url, alice_id]
        browser.append(TOKEN)
        async with get_stream(alice) as stream:
            await stream.next()
            out = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    browser,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            )
            assert out.returncode == 0, out.stderr[-3000:]
            seen = json.loads(out.stdout)
            with trio.fail_after(5):  # the open stream ends with the revocation
                event = await stream.next()
            assert event is not None and event["data"]["params"]["data"]["error"] == "revoked"

        assert seen["forged"] == 403
        assert seen["errors"] == []
        assert seen["restarts"] == "0"
        (cookie,) = seen["cookies"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]
        # the revocation, its lifting and the ended session are in the database and the API
        assert await node.store.fetchval(
            "SELECT revoked_at IS NULL FROM users WHERE user_id = $1", alice_id
        )
        kinds = await node.store.fetch(
            "SELECT kind FROM auth_events WHERE user_id = $1 AND kind IN ('revoked', 'reinstated') "
            "ORDER BY occurred_at",
            alice_id,
        )
        assert [r["kind"] for r in kinds] == ["revoked", "reinstated"]
        admin = {"authorization": f"Bearer {TOKEN}"}
        listed = (
            await http.get(f"{node.info.listen_url}/admin/api/sessions", headers=admin)
        ).json()["sessions"]
        assert {s["user_id"].rsplit("|", 1)[-1]: s["status"] for s in listed} == {
            "alice": "revoked",
            "bob": "ended",
        }
        assert (
            await node.store.fetchval(
                "SELECT status FROM grants g JOIN users u USING (user_id) WHERE u.subject = 'bob'"
            )
            == "ended"
        )
        assert (await alice.post("ping")).status_code == 401
        assert (await bob.post("ping")).status_code == 401


async def test_the_admin_view_needs_the_token_and_a_csrf_token_for_actions(
    fresh_db: str,
) -> None:
    async with (
        running_node(fresh_db, admin_token=TOKEN) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        base = node.info.listen_url
        page = await http.get(f"{base}/admin", params={"token": TOKEN})
        assert page.status_code == 200 and 'action="/admin/login"' in page.text
        assert "steward-csrf" not in page.text  # a token in the URL signs nobody in
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"

        foreign = await http.post(
            f"{base}/admin/login", data={"token": TOKEN}, headers={"origin": "http://evil.test"}
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        login = await http.post(f"{base}/admin/login", data={"token": TOKEN})
        assert login.status_code == 303 and login.headers["location"] == "/admin"
        set_cookie = login.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        assert TOKEN not in set_cookie
        cookie = {"cookie": set_cookie.split(";")[0]}

        view = await http.get(f"{base}/admin", headers=cookie)
        match = re.search(r'name="steward-csrf" content="([^"]+)"', view.text)
        assert match is not None
        csrf = match.group(1)
        js = await http.get(f"{base}/admin/static/admin.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")

        tree = await http.get(f"{base}/admin/api/tree", headers=cookie)
        assert tree.status_code == 200 and tree.json()["trees"][0]["id"] == "root"
        end = f"{base}/admin/api/sessions/end"
        body = {"grant_id": "00000000-0000-0000-0000-000000000000"}
        assert (await http.post(end, json=body, headers=cookie)).status_code == 403
        cross = {**cookie, "x-csrf-token": csrf, "origin": "http://evil.test"}
        assert (await http.post(end, json=body, headers=cross)).status_code == 403
        ok = await http.post(end, json=body, headers={**cookie, "x-csrf-token": csrf})
        assert ok.status_code == 200

        forged = {"cookie": "steward_admin=9999999999.bm90LWEtbWFj"}
        assert (await http.get(f"{base}/admin/api/tree", headers=forged)).status_code == 401
        out = await http.post(f"{base}/admin/logout", headers={**cookie, "x-csrf-token": csrf})
        assert out.status_code == 200 and "Max-Age=0" in out.headers["set-cookie"]


def test_the_tree_shows_a_bounded_number_of_children_and_counts_the_rest() -> None:
    from server._admin import _bounded

    def node(name: str, *children: dict[str, Any]) -> dict[str, Any]:
        return {"id": name, "children": list(children)}

    tree = node("root", node("sessions", *(node(f"s{i}") for i in range(5))), node("store"))
    shown = _bounded(tree, limit=3)
    sessions = shown["children"][0]
    assert [c["id"] for c in sessions["children"]] == ["s0", "s1", "s2"]
    assert sessions["more"] == 2 and "more" not in shown
