"""The MCP Inspector's web UI in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright), as a person uses it: connect to Steward, sign in at the development IdP's page by
clicking the user's name, allow the consent, open the Tools tab, and run tools. Prints what the
page showed as JSON.

Run as a script by test_inspector_web.py (Playwright runs on asyncio, which a process that imports
Steward gives to trio-asyncio; tests/admin_browser.py says more):

    python -m tests.interop.inspector_web INSPECTOR_URL USER SCREENSHOT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from tests.admin_browser import CHROMIUM, CHROMIUM_ARGS

STEP = 20_000  # ms for any one step of the page


def run(inspector_url: str, user: str, shots: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(STEP)
            context.on("request", lambda r: seen["requests"].append(f"{r.method} {r.url}"))
            try:
                page.goto(inspector_url)
                page.locator(".mantine-Switch-track").first.click()  # connect
                page.get_by_role("link", name=user).click()  # the IdP's sign-in page
                page.get_by_role("button", name="Allow").click()  # Steward's consent page
                page.get_by_text("Connected", exact=True).wait_for()
                seen["connected"] = True
                seen["body"] = page.inner_text("body")
                page.get_by_text("Tools", exact=True).first.click()
                page.get_by_text("echo", exact=True).first.wait_for()
                seen["tools_page"] = page.inner_text("body")
                seen["tools"] = tool_names(seen["tools_page"])
                page.get_by_text("echo", exact=True).first.click()
                page.get_by_role("textbox", name=re.compile(r"^text\b")).first.fill(
                    "from the web ui"
                )
                page.get_by_role("button", name="Execute Tool").click()
                page.get_by_text("Results", exact=True).wait_for()
                page.get_by_text("from the web ui", exact=True).wait_for()
                seen["echo"] = "from the web ui"
                if "report" in seen["tools"]:
                    page.get_by_text("report", exact=True).first.click()
                    page.get_by_role("textbox", name=re.compile(r"^topic\b")).first.fill("q3")
                    page.get_by_role("button", name="Execute Tool").click()
                    result = page.get_by_text(re.compile(r"^report on q3"))
                    result.wait_for()
                    seen["report"] = result.inner_text()
                page.screenshot(path=shots / f"{user}-done.png")
            except Exception as exc:
                page.screenshot(path=shots / f"{user}-failed.png")
                seen["error"] = f"{type(exc).__name__}: {exc}"
                seen["body"] = page.inner_text("body")
                seen["url"] = page.url
        finally:
            browser.close()
    return seen


def run_direct(inspector_url: str, user: str, shots: Path, mcp_url: str) -> dict[str, Any]:
    """The Inspector v1 web UI with its Connection Type set to Direct: the page itself fetches
    Steward's metadata, /register, /token and /mcp (cross-origin: CORS)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"cors": []}

    def on_response(r: Any) -> None:
        if r.url.split("?")[0].startswith(
            mcp_url.rsplit("/", 1)[0]
        ) and r.request.resource_type in (
            "fetch",
            "xhr",
        ):
            path = "/" + r.url.split("/", 3)[3].split("?")[0]
            seen["cors"].append(
                [r.request.method, path, r.status, r.headers.get("access-control-allow-origin")]
            )

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(STEP)
            context.on("response", on_response)
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            seen["console"] = console
            try:
                page.goto(inspector_url)
                page.get_by_role("combobox").nth(1).click()  # Connection Type
                page.get_by_role("option", name="Direct").click()
                page.get_by_role("button", name="Connect", exact=True).click()
                page.get_by_role("link", name=user).click()  # the IdP's sign-in page
                page.get_by_role("button", name="Allow").click()  # Steward's consent page
                connected = page.get_by_text("Connected", exact=True)
                try:
                    connected.wait_for(timeout=STEP / 2)
                except PlaywrightTimeout:
                    # now and then this version's callback page exchanges the code twice, the
                    # first request cut off by its own navigation: the second is refused
                    # (invalid_grant, a code is used once) and the page returns to the sidebar,
                    # disconnected. The person clicks Connect: the page connects on a token it
                    # kept, or sends the person to sign in once more.
                    seen["connect_again"] = page.url
                    page.get_by_role("button", name="Connect", exact=True).click()
                    choice = page.get_by_role("link", name=user)
                    connected.or_(choice).first.wait_for()
                    if choice.count():
                        seen["signed_in_again"] = True
                        choice.click()
                        page.get_by_role("button", name="Allow").click()
                    connected.wait_for()
                seen["connected"] = True
                page.get_by_role("tab", name="Tools").click()
                page.get_by_role("button", name="List Tools").click()
                page.get_by_text("echo", exact=True).first.wait_for()
                seen["tools"] = [
                    name
                    for name in ("echo", "count", "report")
                    if page.get_by_text(name, exact=True).count()
                ]
                page.get_by_text("echo", exact=True).first.click()
                page.get_by_role("textbox", name=re.compile(r"^text\b")).first.fill(
                    "from the browser, direct"
                )
                page.get_by_role("button", name="Run Tool").click()
                page.get_by_text(re.compile(r"from the browser, direct")).last.wait_for()
                seen["echo"] = "from the browser, direct"
                if "report" in seen["tools"]:
                    page.get_by_text("report", exact=True).first.click()
                    page.get_by_role("textbox", name=re.compile(r"^topic\b")).first.fill("q3")
                    page.get_by_role("button", name="Run Tool").click()
                    result = page.get_by_text(re.compile(r"report on q3 for ")).last
                    result.wait_for()
                    seen["report"] = result.inner_text()
                page.screenshot(path=shots / f"direct-{user}-done.png")
            except Exception as exc:
                page.screenshot(path=shots / f"direct-{user}-failed.png")
                seen["error"] = f"{type(exc).__name__}: {exc}"
                seen["body"] = page.inner_text("body")
                seen["url"] = page.url
        finally:
            browser.close()
    return seen


def tool_names(body: str) -> list[str]:
    """The names in the Tools panel: the lines between "Tools (N)" and the tool pane."""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Tools ("))
    names = []
    for line in lines[start + 1 :]:
        if line.startswith("Select a tool") or line == "Logs":
            break
        if line != "Paginated":
            names.append(line)
    return names


if __name__ == "__main__":
    if sys.argv[1] == "direct":
        print(json.dumps(run_direct(sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5])))
    else:
        print(json.dumps(run(sys.argv[1], sys.argv[2], Path(sys.argv[3]))))
