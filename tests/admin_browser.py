"""The admin view driven in headless Chromium (Debian's /usr/bin/chromium) with Playwright.

Run as a script by tests/test_admin_view.py: Playwright's driver runs on asyncio, whose loop
policy trio-asyncio replaces in any process that imports Steward, so this module imports only
Playwright. It prints what it saw as JSON; its expectations fail it with a non-zero exit.

    python -m tests.admin_browser BASE_URL USER_ID ADMIN_TOKEN
    python -m tests.admin_browser pages AUTHORIZE_URL REDIRECT_URI
    python -m tests.admin_browser usage BASE_URL ADMIN_TOKEN MCP_TOKEN EXPECTED_JSON
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any
from urllib.parse import urlsplit

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
# set to a path to keep a screenshot of the Usage page (docs/admin-usage.png is made this way)
USAGE_SCREENSHOT = os.environ.get("STEWARD_USAGE_SCREENSHOT")
# set to a folder to keep screenshots of the sign-in and consent pages
PAGES_SCREENSHOTS = os.environ.get("STEWARD_PAGES_SCREENSHOTS")
VIEWPORT = {"width": 1280, "height": 800}  # a common laptop screen: everything fits

# Where each button of the sessions table is: inside the viewport once scrolled to, and the
# topmost element at each of its corners (so neither covered nor clipped by a scrolling box);
# each user cell on one line and not cut; the page no wider than the window.
LAYOUT = """() => {
  const corners = (r) => [[r.left + 2, r.top + 2], [r.right - 2, r.top + 2],
                          [r.left + 2, r.bottom - 2], [r.right - 2, r.bottom - 2]];
  const buttons = [...document.querySelectorAll('#sessions button')].map((b) => {
    b.scrollIntoView({block: 'center', inline: 'nearest'});
    const r = b.getBoundingClientRect();
    const inside = r.width > 0 && r.left >= 0 && r.top >= 0 &&
      r.right <= window.innerWidth && r.bottom <= window.innerHeight;
    const shown = corners(r).every(([x, y]) => {
      const hit = document.elementFromPoint(x, y);
      return hit !== null && (hit === b || b.contains(hit));
    });
    return {label: b.textContent, inside, shown};
  });
  window.scrollTo(0, 0);
  const users = [...document.querySelectorAll('td.user')].map((cell) => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    return {text: cell.textContent, title: cell.title, lines: range.getClientRects().length,
            cut: cell.scrollWidth > cell.clientWidth};
  });
  return {buttons, users,
          page_overflow: document.documentElement.scrollWidth - window.innerWidth};
}"""

# How a page looks: its computed colours (admin.css's) and the style sheets it loaded.
LOOK = """() => {
  const style = (selector, property) => {
    const node = document.querySelector(selector);
    return node === null ? null : getComputedStyle(node)[property];
  };
  return {
    title: document.title,
    sheets: [...document.styleSheets].map((s) => s.href),
    body_background: style('body', 'backgroundColor'),
    header_background: style('header', 'backgroundColor'),
    section_border: style('section', 'borderTopColor'),
    icon: [...document.querySelectorAll('link[rel=icon]')].map((l) => l.href),
  };
}"""


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
                viewport=VIEWPORT,
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))  # uncaught script errors
                console: list[str] = []  # a CSP violation, say
                page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
                failed: list[str] = []  # every answer of 400 or more (a missing icon, say)
                page.on(
                    "response", lambda r: failed.append(_failure(r)) if r.status >= 400 else None
                )
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
                expect(page.locator("#sessions tbody tr button")).to_have_count(4)
                seen["layout"] = page.evaluate(LAYOUT)
                if SCREENSHOT:
                    page.screenshot(path=SCREENSHOT, full_page=True)

                # sessions searchable by user, with tier, scopes, status and streams
                page.fill("#user-search", "alice")
                rows = page.locator("#sessions tbody tr")
                expect(rows).to_have_count(1)
                expect(rows.first.locator("td.user")).to_have_text(alice.partition("|")[2])
                expect(rows.first.locator("td.user")).to_have_attribute("title", alice)
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
                    f"Revoked {alice.partition('|')[2]}: every session of this user ended."
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
                expect(page.locator("#flash")).to_contain_text(
                    f"Reinstated {alice.partition('|')[2]}"
                )
                expect(rows.first).to_have_attribute("data-user-revoked", "false")
                expect(rows.first).to_have_attribute("data-status", "revoked")  # stays ended
                expect(page.locator('#events tr[data-kind="reinstated"]')).to_have_count(1)
                seen["cookies"] = browser.cookies()
                seen["errors"] = errors
                seen["console"] = [m for m in console if not m.startswith("Failed to load")]
                seen["failed"] = failed
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return seen


def _failure(response: Any) -> str:
    return f"{response.status} {response.request.method} {urlsplit(response.url).path}"


def sign_in_pages(authorize_url: str, redirect_uri: str) -> dict[str, Any]:
    """Sign in through the development IdP's page and Steward's consent page as a person does,
    noting how each page looks; the application's redirect URI answers from the browser."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="stw-chromium-")
    seen: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=VIEWPORT,
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
                failed: list[str] = []
                page.on(
                    "response", lambda r: failed.append(_failure(r)) if r.status >= 400 else None
                )
                page.route(
                    f"{redirect_uri}**",
                    lambda route: route.fulfill(status=200, body="back in the application"),
                )
                page.goto(authorize_url)
                page.wait_for_selector("a.choice")
                seen["sign_in"] = page.evaluate(LOOK)
                if PAGES_SCREENSHOTS:
                    page.screenshot(path=f"{PAGES_SCREENSHOTS}/sign-in.png")
                page.locator("a.choice", has_text="bob").click()
                page.wait_for_selector("button[value=allow]")
                seen["consent"] = page.evaluate(LOOK)
                seen["allow_background"] = page.evaluate(
                    "() => getComputedStyle(document.querySelector('button[value=allow]'))"
                    ".backgroundColor"
                )
                if PAGES_SCREENSHOTS:
                    page.screenshot(path=f"{PAGES_SCREENSHOTS}/consent.png")
                page.click("button[value=allow]")
                page.wait_for_url(f"{redirect_uri}**")
                seen["returned_to"] = page.url
                seen["console"] = console
                seen["failed"] = failed
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return seen


# The Usage page's chart as drawn: each bar's tier and value, per chart (calls, errors).
CHART = """() => [...document.querySelectorAll('svg.usage-chart')].map((chart) => ({
  field: chart.dataset.field,
  max: Number(chart.dataset.max),
  bars: [...chart.querySelectorAll('rect[data-tier]')].map((r) => ({
    tier: r.dataset.tier, value: Number(r.dataset.value), height: Number(r.getAttribute('height')),
    fill: getComputedStyle(r).fill})),
}))"""


def usage_page(base: str, token: str, mcp_token: str, expected: dict[str, Any]) -> dict[str, Any]:
    """Sign in, read the Usage page (its chart, top tools, top users, quota), make one more tool
    call as carol and see the page take it up without a reload, then open bob's usage."""
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
                viewport=VIEWPORT,
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
                failed: list[str] = []
                page.on(
                    "response", lambda r: failed.append(_failure(r)) if r.status >= 400 else None
                )
                page.goto(f"{base}/admin")
                page.fill("#token", token)
                page.click("button[type=submit]")
                totals = page.locator("#usage-totals")
                expect(totals).to_have_attribute("data-calls", str(expected["calls"]))
                for tool, calls in expected["tools"].items():
                    row = page.locator(f'#usage-tools tr[data-tool="{tool}"]')
                    expect(row.locator("td").nth(1)).to_have_text(str(calls))
                seen["tools"] = page.locator("#usage-tools tbody tr").evaluate_all(
                    "(rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))"
                )
                seen["users"] = page.locator("#usage-users tbody tr td.user").all_text_contents()
                seen["quota"] = page.locator("#usage-quota tbody tr").evaluate_all(
                    "(rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))"
                )
                expect(page.locator("#usage-legend .legend-item")).to_have_count(3)
                seen["chart"] = page.evaluate(CHART)
                seen["page_overflow"] = page.evaluate(
                    "() => document.documentElement.scrollWidth - window.innerWidth"
                )
                if USAGE_SCREENSHOT:
                    page.locator("#usage-section").screenshot(path=USAGE_SCREENSHOT)

                # one more call, made outside the page: the page shows it without a reload
                api = p.request.new_context(base_url=base)
                auth = {
                    "authorization": f"Bearer {mcp_token}",
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                }
                init = api.post(
                    "/mcp",
                    headers=auth,
                    data=json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": 1,
                            "method": "initialize",
                            "params": {
                                "protocolVersion": "2025-11-25",
                                "capabilities": {},
                                "clientInfo": {"name": "browser-test", "version": "1"},
                            },
                        }
                    ),
                )
                assert init.status == 200, init.text()
                session = {
                    **auth,
                    "mcp-session-id": init.headers["mcp-session-id"],
                    "mcp-protocol-version": "2025-11-25",
                }
                api.post(
                    "/mcp",
                    headers=session,
                    data=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                )
                call = api.post(
                    "/mcp",
                    headers=session,
                    data=json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": 2,
                            "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "live"}},
                        }
                    ),
                )
                assert call.status == 200, call.text()
                expect(totals).to_have_attribute("data-calls", str(expected["calls"] + 1))
                echo = page.locator('#usage-tools tr[data-tool="echo"]')
                expect(echo.locator("td").nth(1)).to_have_text(str(expected["tools"]["echo"] + 1))
                seen["chart_after"] = page.evaluate(CHART)

                # a user's own usage: their link opens the panel
                page.locator("#usage-users td.user a", has_text="bob").click()
                panel = page.locator("#user-usage")
                expect(panel).to_be_visible()
                expect(panel).to_have_attribute("data-user", expected["bob_id"])
                expect(page.locator("#user-usage-name")).to_have_text("bob (pro)")
                seen["bob_tools"] = page.locator("#user-usage-tools tbody tr").evaluate_all(
                    "(rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))"
                )
                page.click("#user-usage-close")
                expect(panel).to_be_hidden()
                # from the sessions table: carol's row opens carol's usage
                page.locator("#sessions td.user", has_text="carol").first.click()
                expect(panel).to_be_visible()
                expect(page.locator("#user-usage-name")).to_have_text("carol (enterprise)")
                seen["errors"] = errors
                seen["console"] = console
                seen["failed"] = failed
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return seen


if __name__ == "__main__":
    if sys.argv[1] == "usage":
        print(
            json.dumps(usage_page(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])))
        )
    elif sys.argv[1] == "pages":
        print(json.dumps(sign_in_pages(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(browse_and_revoke(sys.argv[1], sys.argv[2], sys.argv[3])))
