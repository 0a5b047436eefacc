"""A page on an allowed origin and one on a foreign origin use /mcp with fetch() in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Run as a script by tests/test_cors.py (Playwright runs on asyncio, which Steward's processes
give to trio-asyncio; tests/admin_browser.py says more). It serves a blank page on each of the
two listening sockets it is given, runs the same script on both, and prints what each saw.

    python -m tests.cors_browser ALLOWED_FD FOREIGN_FD MCP_URL ACCESS_TOKEN
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import sys
import tempfile
import threading
from typing import Any

from tests.admin_browser import CHROMIUM, CHROMIUM_ARGS

PAGE = b"<!doctype html><html><head><title>MCP in a browser</title></head><body></body></html>"

# initialize, read Mcp-Session-Id, notifications/initialized, a tool call, a 401's challenge,
# and the DELETE that ends the session: what a browser client (the Inspector's web UI) does
CLIENT = """async ([url, token]) => {
  const headers = {
    "authorization": "Bearer " + token,
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
  };
  const post = (body, extra) => fetch(url, {
    method: "POST", headers: {...headers, ...extra}, body: JSON.stringify(body),
  });
  try {
    let r = await post({jsonrpc: "2.0", id: 1, method: "initialize", params: {
      protocolVersion: "2025-11-25", capabilities: {},
      clientInfo: {name: "browser", version: "1"}}});
    const sessionId = r.headers.get("mcp-session-id");
    const init = await r.json();
    const session = {"mcp-session-id": sessionId, "mcp-protocol-version": "2025-11-25"};
    r = await post({jsonrpc: "2.0", method: "notifications/initialized"}, session);
    const initialized = r.status;
    r = await post({jsonrpc: "2.0", id: 2, method: "tools/call",
                    params: {name: "echo", arguments: {text: "from the browser"}}}, session);
    const call = await r.json();
    r = await fetch(url, {method: "POST", headers: {...headers, ...session, authorization: "Bearer wrong"},
                          body: JSON.stringify({jsonrpc: "2.0", id: 3, method: "ping"})});
    const unauthorized = r.status;
    const challenge = r.headers.get("www-authenticate");
    r = await fetch(url, {method: "DELETE", headers: {...headers, ...session}});
    return {ok: true, sessionId, server: init.result.serverInfo.name, initialized,
            text: call.result.content[0].text, unauthorized, challenge, deleted: r.status};
  } catch (e) {
    return {ok: false, error: String(e)};
  }
}"""


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(fd: int) -> tuple[http.server.HTTPServer, str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Page, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=fd)
    port = server.socket.getsockname()[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}"


def run(allowed_fd: int, foreign_fd: int, mcp_url: str, token: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    servers = [serve(allowed_fd), serve(foreign_fd)]
    profile = tempfile.mkdtemp(prefix="stw-chromium-")
    seen: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                for name, (_server, origin) in zip(("allowed", "foreign"), servers, strict=True):
                    page = browser.new_page()
                    page.set_default_timeout(15_000)
                    console: list[str] = []
                    page.on("console", lambda m, c=console: c.append(m.text))
                    page.goto(f"{origin}/")
                    result = page.evaluate(CLIENT, [mcp_url, token])
                    result["console"] = console
                    result["origin"] = origin
                    seen[name] = result
                    page.close()
            finally:
                browser.close()
    finally:
        for server, _origin in servers:
            server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return seen


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])))
