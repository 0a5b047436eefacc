"""The admin view at /admin: signed in with the admin token (a cookie, never the token in a URL),
it renders the live supervision tree, finds sessions by user, and its actions take effect in the
database, in the JSON API and on the page. Driven in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import trio

from tests.harness._extras import require_browser
from tests.harness._steward import (
    REDIRECT_URI,
    McpClient,
    get_stream,
    pkce,
    register,
    running_node,
    sign_in,
)

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "admin-view-secret"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def chromium() -> Path:
    return require_browser()


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
        # nothing failed to load (the icon included) but the wrong token and the forged POST
        assert seen["console"] == []
        assert sorted(seen["failed"]) == [
            "401 POST /admin/login",
            "403 POST /admin/api/users/revoke",
        ], seen["failed"]
        # at 1280x800 each button is in the window and nothing covers or clips it; user
        # names sit on one line, the full id as their title; the page is no wider than the window
        layout = seen["layout"]
        assert [b["label"] for b in layout["buttons"]] == ["End session", "Revoke user"] * 2
        assert all(b["inside"] and b["shown"] for b in layout["buttons"]), layout["buttons"]
        assert layout["page_overflow"] <= 0, layout
        assert {(u["text"], u["title"]) for u in layout["users"]} >= {
            ("alice", alice_id),
            ("bob", alice_id.replace("|alice", "|bob")),
        }
        named = [u for u in layout["users"] if u["text"]]  # an event may have no user
        assert all(u["lines"] == 1 and not u["cut"] for u in named), named
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


async def test_the_sign_in_and_consent_pages_have_the_admin_views_look_in_chromium(
    fresh_db: str, chromium: Path
) -> None:
    """A person signs in through the development IdP's page and the consent page in Chromium:
    both load Steward's style sheet and icon under their Content-Security-Policy (no error in the
    console, where Chromium reports a refused style or a missing icon)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        client_id = await register(http, node)
        _, challenge = pkce()
        authorize = f"{node.info.listen_url}/authorize?" + urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": REDIRECT_URI,
                "state": "st8",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "resource": node.info.mcp_url,
            }
        )
        script = [sys.executable, "-m", "tests.admin_browser", "pages", authorize, REDIRECT_URI]
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=120)
        )
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout)
    assert seen["console"] == [] and seen["failed"] == []
    for page, origin in (("sign_in", node.info.dev_idp_url), ("consent", node.info.listen_url)):
        look = seen[page]
        assert look["sheets"] == [f"{origin}/static/steward.css"], look
        assert look["icon"] == [f"{origin}/favicon.ico"], look
        # admin.css's colours: the page background, the header band, the section's border
        assert look["body_background"] == "rgb(246, 247, 249)", look
        assert look["header_background"] == "rgb(31, 45, 61)", look
        assert look["section_border"] == "rgb(221, 225, 230)", look
    assert seen["allow_background"] == "rgb(31, 45, 61)"
    returned = parse_qs(urlsplit(seen["returned_to"]).query)
    assert returned["state"] == ["st8"] and returned["code"]


async def test_the_pages_serve_their_style_and_icon_under_a_policy_without_inline_style(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        assert node.info.dev_idp_url is not None
        for origin in (node.info.listen_url, node.info.dev_idp_url):
            icon = await http.get(f"{origin}/favicon.ico")
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
            assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
            css = await http.get(f"{origin}/static/steward.css")
            assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
            assert "body.page" in css.text
            assert (await http.post(f"{origin}/favicon.ico")).status_code in (404, 405)
        sign_in_page = await http.get(
            f"{node.info.dev_idp_url}/authorize",
            params={
                "response_type": "code",
                "client_id": "steward",
                "redirect_uri": REDIRECT_URI,
                "state": "s",
                "code_challenge": "c",
                "code_challenge_method": "S256",
            },
        )
        assert sign_in_page.status_code == 200 and 'class="choice"' in sign_in_page.text
        csp = sign_in_page.headers["content-security-policy"]
        assert "style-src 'self'" in csp and "unsafe-inline" not in csp
        assert "style=" not in sign_in_page.text and "<style" not in sign_in_page.text
        admin = await http.get(f"{node.info.listen_url}/admin")
        assert '<link rel="icon" href="/favicon.ico">' in admin.text


def test_the_tree_shows_a_bounded_number_of_children_and_counts_the_rest() -> None:
    from server.ops._admin import _bounded

    def node(name: str, *children: dict[str, Any]) -> dict[str, Any]:
        return {"id": name, "children": list(children)}

    tree = node("root", node("sessions", *(node(f"s{i}") for i in range(5))), node("store"))
    shown = _bounded(tree, limit=3)
    sessions = shown["children"][0]
    assert [c["id"] for c in sessions["children"]] == ["s0", "s1", "s2"]
    assert sessions["more"] == 2 and "more" not in shown


async def test_guessing_the_admin_token_is_bounded_per_address(fresh_db: str) -> None:
    """Past ADMIN_GUESSES wrong tokens from one address in a window (bearer or the sign-in form,
    counted together), a token from that address is refused with 429 before it is compared,
    the right one included; a signed-in view's cookie keeps working."""
    from server.ops._admin import ADMIN_GUESSES
    from tests.harness._steward import running_node

    token = "guess-test-" + "x" * 24
    async with running_node(fresh_db, admin_token=token) as node, httpx.AsyncClient() as http:
        base = node.info.listen_url
        async with httpx.AsyncClient() as view:  # the signed-in view: its own cookie jar
            login = await view.post(f"{base}/admin/login", data={"token": token})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].split(";")[0]
        api = f"{base}/admin/api/tree"
        for i in range(ADMIN_GUESSES):
            wrong = {"authorization": f"Bearer wrong-{i}"}
            if i % 2:
                r = await http.post(f"{base}/admin/login", data={"token": f"wrong-{i}"})
            else:
                r = await http.get(api, headers=wrong)
            assert r.status_code == 401, (i, r.text)
        refused = await http.get(api, headers={"authorization": f"Bearer {token}"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        form = await http.post(f"{base}/admin/login", data={"token": token})
        assert form.status_code == 429
        assert (await http.get(api, headers={"cookie": cookie})).status_code == 200
