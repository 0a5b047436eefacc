"""A live Steward node in a test (real Hypercorn on 127.0.0.1:0, real PostgreSQL), and real clients
that sign in through the development IdP."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import trio

from server._node import Node, run_node
from server.app._steward import Steward
from server.config._settings import load_settings
from server.dev._demo import demo

# https: a remembered consent is used for an https redirect URI only (docs/security.md)
REDIRECT_URI = "https://client.test/callback"

# Every test client comes from 127.0.0.1, so the suites that register and sign in many clients
# in one module would meet the per-address limits (server/http/_limits.py): a node in a test has them
# out of reach unless the test passes ``address_limits`` (tests/test_abuse_limits.py does).
UNLIMITED_ADDRESSES = {
    f"{kind}_{what}": 1_000_000
    for kind in ("register", "authorize", "token", "consent", "sign_in")
    for what in ("per_minute", "burst")
} | {"register_node_per_minute": 1_000_000, "authorize_node_per_minute": 1_000_000}


@asynccontextmanager
async def running_node(
    dsn: str,
    app: Steward = demo,
    *,
    store_policy: Any = None,
    session_policy: Any = None,
    sock: socket.socket | None = None,
    root_policy: Any = None,
    **overrides: Any,
) -> AsyncIterator[Node]:
    if "public_url" in overrides and "upstream" not in overrides:
        # nodes of one test behind a public URL they name (never served): still the
        # development IdP, on loopback
        overrides.setdefault("dev_idp_allow_public_insecure", True)
    data_dir = Path(tempfile.mkdtemp(prefix="stw-node-"))
    try:
        settings = load_settings(
            environ={},
            overrides={
                "port": 0,
                "data_dir": data_dir,
                "address_limits": UNLIMITED_ADDRESSES,
                **overrides,
            },
        )
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(
                lambda task_status: run_node(
                    settings,
                    app,
                    dsn=dsn,
                    store_policy=store_policy,
                    session_policy=session_policy,
                    sock=sock,
                    **({"root_policy": root_policy} if root_policy is not None else {}),
                    task_status=task_status,
                )
            )
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    return verifier, challenge


async def register(http: httpx.AsyncClient, node: Node, name: str = "test client") -> str:
    r = await http.post(
        f"{node.info.listen_url}/register",
        json={"redirect_uris": [REDIRECT_URI], "client_name": name},
    )
    assert r.status_code == 201, r.text
    client_id: str = r.json()["client_id"]
    return client_id


async def authorize(
    http: httpx.AsyncClient, node: Node, client_id: str, user: str, *, scope: str | None = None
) -> tuple[str, str]:
    """Run the browser part of the flow; returns (code, verifier)."""
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(8)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": node.info.mcp_url,
        "login_hint": user,
    }
    if scope:
        params["scope"] = scope
    r = await http.get(f"{node.info.listen_url}/authorize", params=params)
    assert r.status_code == 302, r.text
    r = await http.get(r.headers["location"])  # the development IdP signs the user in
    assert r.status_code == 302, r.text
    callback = r.headers["location"].replace(node.info.base_url, node.info.listen_url, 1)
    r = await http.get(callback)  # back to Steward's callback
    if r.status_code == 200:  # the consent page
        cookie = r.headers["set-cookie"].split(";")[0]
        fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
        r = await http.post(
            f"{node.info.listen_url}/consent",
            data={**fields, "decision": "allow"},
            headers={"cookie": cookie, "origin": node.info.base_url},
        )
    assert r.status_code == 302, r.text
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["state"] == [state]
    assert query["iss"] == [node.info.issuer_url]
    return query["code"][0], verifier


async def sign_in(
    http: httpx.AsyncClient,
    node: Node,
    user: str = "alice",
    *,
    client_id: str | None = None,
    scope: str | None = None,
) -> dict[str, Any]:
    """Register a client (unless given), sign ``user`` in, and exchange the code: the token response
    plus ``client_id``."""
    client_id = client_id or await register(http, node)
    code, verifier = await authorize(http, node, client_id, user, scope=scope)
    r = await http.post(
        f"{node.info.listen_url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "resource": node.info.mcp_url,
        },
    )
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()
    tokens["client_id"] = client_id
    return tokens


MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


class McpClient:
    """A raw MCP client over Streamable HTTP (2025-11-25), for exact assertions on the wire."""

    def __init__(self, http: httpx.AsyncClient, node: Node, token: str) -> None:
        self.http = http
        self.url = f"{node.info.listen_url}/mcp"
        self.token = token
        self.session_id: str | None = None
        self._id = 0

    def headers(self, **extra: str) -> dict[str, str]:
        # an empty token sends no Authorization header at all
        auth = {"authorization": f"Bearer {self.token}"} if self.token else {}
        h = {**MCP_HEADERS, **auth, **extra}
        if self.session_id:
            h["mcp-session-id"] = self.session_id
            h["mcp-protocol-version"] = "2025-11-25"
        return h

    async def initialize(self) -> dict[str, Any]:
        r = await self.post(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
        assert r.status_code == 200, r.text
        self.session_id = r.headers["mcp-session-id"]
        note = await self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=self.headers(),
        )
        assert note.status_code == 202
        result: dict[str, Any] = r.json()["result"]
        return result

    async def post(
        self, method: str, params: dict[str, Any] | None = None, **headers: str
    ) -> httpx.Response:
        self._id += 1
        return await self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "id": self._id, "method": method, "params": params or {}},
            headers=self.headers(**headers),
        )

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.post(method, params)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = (
            r.json()
            if r.headers["content-type"].startswith("application/json")
            else sse_messages(r.text)[-1]
        )
        return body


def sse_messages(text: str) -> list[dict[str, Any]]:
    import json

    out = []
    for block in text.split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data and data[0]:
            out.append(json.loads("\n".join(data)))
    return out


class SseReader:
    """Reads events from a streaming httpx response in a background task, so that a reader may
    stop waiting (a timeout) without tearing the HTTP stream down. Keep-alive comments are
    skipped; ``next()`` returns None once the stream ended."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments = 0  # keep-alive comments seen (they are not events)
        self._send, self._receive = trio.open_memory_channel[dict[str, Any] | None](10_000)

    async def _pump(self) -> None:
        import json

        event: dict[str, Any] = {}
        data: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if data or event:
                        raw = "\n".join(data)
                        try:
                            event["data"] = json.loads(raw) if raw.strip() else None
                        except ValueError:
                            event["data"] = raw
                        await self._send.send(event)
                    event, data = {}, []
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                key, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if key == "data":
                    data.append(value)
                else:
                    event[key] = value
        except (httpx.HTTPError, trio.ClosedResourceError):
            pass
        await self._send.send(None)

    async def next(self) -> dict[str, Any] | None:
        return await self._receive.receive()

    async def next_message(self) -> dict[str, Any] | None:
        """The next event that carries data (priming events are skipped)."""
        while True:
            event = await self.next()
            if event is None or event.get("data") is not None:
                return event


@asynccontextmanager
async def get_stream(mcp: McpClient, **headers: str) -> AsyncIterator[SseReader]:
    headers = {**mcp.headers(**headers), "accept": "text/event-stream"}
    async with sse_stream(mcp.http, "GET", mcp.url, headers=headers) as reader:
        yield reader


@asynccontextmanager
async def sse_stream(
    http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[SseReader]:
    """An SSE response (which must be 200) read in the background while the block runs."""
    async with http.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        reader = SseReader(response)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader._pump)
            try:
                yield reader
            finally:
                nursery.cancel_scope.cancel()
