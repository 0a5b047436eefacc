"""The admin view driven in headless Chromium (Debian's /usr/bin/chromium) with Playwright.

Run as a script by tests/test_admin_view.py: Playwright's driver runs on asyncio, whose loop
policy trio-asyncio replaces in any process that imports Steward, so this module imports only
Playwright. It prints what it saw as JSON; its expectations fail it with a non-zero exit.

    python -m tests.admin_browser BASE_URL USER_ID ADMIN_TOKEN
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# set to a path to keep a screenshot of the view (docs/admin-view.png is made this way)
SCREENSHOT = os.environ.get("STEWARD_ADMIN_SCREENSHOT")


def browse_and_revoke(base: str, alice: str, token: str) -> dict[str, Any]:
    """Sign in to the view, check what it renders, revoke ``alice``, end bob's session and
    reinstate ``alice`` with the page's buttons."""
    from playwright.sync_api import expect, sync_playwright

    profile = tempfile.mkdtemp(prefix="stw-chromium-")
    seen: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1600, "height": 900},
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))  # uncaught script errors
                page.on("dialog", lambda d: d.accept())

                page.goto(f"{base}/admin")
                page.fill("#token", "not-the-token")
                page.click("button[type=submit]")
                expect(page.locator(".error")).to_have_text("That is not the admin token.")
                page.fill("#token", token)
                page.click("button[type=submit]")

                # the live tree: the node's actors with state and restart count
                for actor in ("store", "notifier", "janitor", "sessions", "http"):
                    item = page.locator(f'li.tnode[data-id="{actor}"]').first
                    expect(item).to_have_attribute("data-state", "running")
                sessions = page.locator('li.tnode[data-id="sessions"] > ul > li.tnode')
                expect(sessions).to_have_count(2)
                expect(page.locator('li.tnode[data-id="connections"] li.tnode')).to_have_count(1)
                expect(page.locator("#store-stats")).to_contain_text("store: connected")
                expect(page.locator('#events tr[data-kind="sign_in"]')).to_have_count(2)
                seen["restarts"] = page.locator(
                    'li.tnode[data-id="store"] .restarts'
                ).first.get_attribute("data-restarts")
                if SCREENSHOT:
                    page.screenshot(path=SCREENSHOT, full_page=True)

                # sessions searchable by user, with tier, scopes, status and streams
                page.fill("#user-search", "alice")
                rows = page.locator("#sessions tbody tr")
                expect(rows).to_have_count(1)
                expect(rows.first.locator("td.user")).to_have_text(alice)
                expect(rows.first).to_have_attribute("data-status", "active")
                expect(rows.first.locator("td").nth(1)).to_have_text("free")
                expect(rows.first.locator("td").nth(2)).to_contain_text("mcp:tools")
                expect(rows.first.locator("td.streams")).to_have_text("1 (live here)")

                # a POST without the page's CSRF token is refused, even with the cookie
                seen["forged"] = page.evaluate(
                    """async (user) => (await fetch('/admin/api/users/revoke', {method: 'POST',
                        headers: {'content-type': 'application/json'},
                        body: JSON.stringify({user_id: user})})).status""",
                    alice,
                )

                page.get_by_role("button", name="Revoke user").click()
                expect(page.locator("#flash")).to_have_text(
                    f"Revoked {alice}: every session of this user ended."
                )
                expect(rows.first).to_have_attribute("data-status", "revoked")
                expect(rows.first.locator("td.streams")).to_have_text("0")  # and no longer live
                expect(page.locator('#events tr[data-kind="revoked"]')).to_have_count(1)
                expect(page.locator('li.tnode[data-id="sessions"] > ul > li.tnode')).to_have_count(
                    1
                )
                # the other user is untouched; ending their session is the other action
                page.fill("#user-search", "bob")
                expect(rows).to_have_count(1)
                expect(rows.first).to_have_attribute("data-status", "active")
                page.get_by_role("button", name="End session").click()
                expect(page.locator("#flash")).to_contain_text("Ended session")
                expect(rows.first).to_have_attribute("data-status", "ended")
                expect(page.locator('li.tnode[data-id="sessions"] > ul > li.tnode')).to_have_count(
                    0
                )
                # the revoked user's row offers "Reinstate user" in place of "Revoke user"
                page.fill("#user-search", "alice")
                expect(rows).to_have_count(1)
                expect(rows.first).to_have_attribute("data-user-revoked", "true")
                page.get_by_role("button", name="Reinstate user").click()
                expect(page.locator("#flash")).to_contain_text(f"Reinstated {alice}")
                expect(rows.first).to_have_attribute("data-user-revoked", "false")
                expect(rows.first).to_have_attribute("data-status", "revoked")  # stays ended
                expect(page.locator('#events tr[data-kind="reinstated"]')).to_have_count(1)
                seen["cookies"] = browser.cookies()
                seen["errors"] = errors
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return seen


if __name__ == "__main__":
    print(json.dumps(browse_and_revoke(sys.argv[1], sys.argv[2], sys.argv[3])))
