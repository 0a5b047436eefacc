"""Client ID metadata documents are fetched without making Steward a port scanner (SSRF): only
global addresses, checked after every redirect, connected to as checked, bounded in size and
time, and every failure told with one text."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from server._node import Node, bind_socket, serve_http
from server.oauth._client_metadata import (
    GENERIC_ERROR,
    IPAddress,
    MetadataFetcher,
    MetadataFetchFailed,
    address_refused,
)
from tests.harness._pg import psql
from tests.harness._steward import REDIRECT_URI, pkce, running_node

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class DocumentServer:
    """A real HTTP server on 127.0.0.1 serving a client metadata document, and worse."""

    def __init__(self) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.hits: list[str] = []

    def doc(self, path: str) -> dict[str, Any]:
        return {
            "client_id": f"{self.base}{path}",
            "client_name": "Doc Client",
            "redirect_uris": [REDIRECT_URI],
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        self.hits.append(path)
        status, headers, body = 200, [(b"content-type", b"application/json")], b""
        if path == "/client.json":
            body = json.dumps(self.doc(path)).encode()
        elif path == "/big.json":
            doc = {**self.doc(path), "padding": "a" * (70 * 1024)}
            body = json.dumps(doc).encode()
        elif path == "/chunked.json":  # no content-length: the cap is on what is read
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for _ in range(20):
                await send({"type": "http.response.body", "body": b" " * 8192, "more_body": True})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        elif path == "/not-json":
            body = b"<html>an admin console</html>"
        elif path == "/slow.json":
            await trio.sleep(30)  # kept: a slow server, past the fetch's timeout
        elif path == "/missing.json":
            status = 404
        elif path == "/redirect.json":
            status, headers = 302, [(b"location", b"/client.json")]
        elif path == "/loop.json":
            status, headers = 302, [(b"location", b"/loop.json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def document_server() -> AsyncIterator[DocumentServer]:
    server = DocumentServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http, server, server.sock, 1.0)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def authorize_params(client_id: str) -> dict[str, str]:
    _, challenge = pkce()
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "state": "s",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }


async def authorize(http: httpx.AsyncClient, node: Node, client_id: str) -> httpx.Response:
    return await http.get(f"{node.info.listen_url}/authorize", params=authorize_params(client_id))


def assert_generic_refusal(r: httpx.Response) -> None:
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_client", "error_description": GENERIC_ERROR}


async def test_a_document_on_loopback_is_refused_unless_private_addresses_are_allowed(
    fresh_db: str,
) -> None:
    """With the setting off (the default), a document on 127.0.0.1 or on a name resolving to
    loopback is refused before any connection; with it on, the same document registers."""
    async with document_server() as docs, httpx.AsyncClient() as http:
        async with running_node(fresh_db) as node:
            for url in (
                f"{docs.base}/client.json",
                f"https://localhost:{docs.port}/client.json",
                f"https://127.0.0.1:{docs.port}/client.json",
                f"https://[::ffff:127.0.0.1]:{docs.port}/client.json",
            ):
                assert_generic_refusal(await authorize(http, node, url))
            assert docs.hits == []  # refused before connecting
            assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == "0"
        async with running_node(fresh_db, client_metadata_allow_private=True) as node:
            r = await authorize(http, node, f"{docs.base}/client.json")
            assert r.status_code == 302, r.text
            assert docs.hits == ["/client.json"]
            r = await authorize(http, node, f"{docs.base}/redirect.json")
            assert r.status_code == 400  # the redirect is followed, but the doc names another URL
            assert docs.hits[-2:] == ["/redirect.json", "/client.json"]
            assert (
                psql(fresh_db, "SELECT client_id FROM oauth_clients") == f"{docs.base}/client.json"
            )


async def test_every_failure_has_the_same_text(fresh_db: str) -> None:
    """A closed port, a timeout, a 404, HTML, an oversize or endless body, a redirect loop and a
    refused address cannot be told apart by the client: one status, one text."""
    async with (
        document_server() as docs,
        running_node(fresh_db, client_metadata_allow_private=True) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        node.oauth.metadata.time_limit = 1.0
        closed = bind_socket("127.0.0.1", 0)  # bound, not listening: connections are refused
        urls = [
            f"http://127.0.0.1:{closed.getsockname()[1]}/client.json",
            f"{docs.base}/slow.json",
            f"{docs.base}/missing.json",
            f"{docs.base}/not-json",
            f"{docs.base}/big.json",
            f"{docs.base}/chunked.json",
            f"{docs.base}/loop.json",
            "http://10.0.0.1/client.json",  # http is for loopback only
            "https://user:pw@example.com/client.json",
        ]
        for url in urls:
            with trio.fail_after(5):
                r = await authorize(http, node, url)
            assert_generic_refusal(r)
        closed.close()
        assert docs.hits.count("/loop.json") == 4  # the first request and 3 redirects
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == "0"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "::8.8.8.8",
        "fe80::1",
        "fec0::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "2001:db8::1",
    ],
)
def test_addresses_that_are_not_global_unicast_are_refused(address: str) -> None:
    assert address_refused(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_global_unicast_addresses_are_allowed(address: str) -> None:
    assert not address_refused(ipaddress.ip_address(address))


class Recorder:
    """An httpx transport standing in for the internet (tests reach nothing beyond 127.0.0.1):
    it answers from a table and records every request it is asked to send."""

    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.answers.get(str(request.url), httpx.Response(404))

        return httpx.MockTransport(handle)


def resolver(table: dict[str, list[str]]) -> tuple[Any, list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve, asked


PUBLIC_DOC = {"client_id": "https://app.example/client.json", "redirect_uris": [REDIRECT_URI]}


async def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    """No second DNS answer between the check and the connection (DNS rebinding): the request
    names the checked address; Host and the TLS server name are the host's name."""
    answers = {"https://93.184.215.14/client.json": httpx.Response(200, json=PUBLIC_DOC)}
    recorder = Recorder(answers)
    calls = 0

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        nonlocal calls
        calls += 1  # a public address first, loopback after
        return [ipaddress.ip_address("93.184.215.14" if calls == 1 else "127.0.0.1")]

    fetcher = MetadataFetcher(resolver=rebinding, transport=recorder.transport())
    assert await fetcher.fetch("https://app.example/client.json") == PUBLIC_DOC
    assert calls == 1
    (sent,) = recorder.requests
    assert sent.url.host == "93.184.215.14"
    assert sent.headers["host"] == "app.example"
    assert sent.extensions["sni_hostname"] == "app.example"


@pytest.mark.parametrize(
    "location",
    [
        "https://internal.example/client.json",  # a name resolving to 10.0.0.5
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/client.json",
        "http://app.example/client.json",  # a downgrade to http
    ],
)
async def test_a_redirect_from_a_public_name_to_a_private_address_is_refused(location: str) -> None:
    answers = {
        "https://93.184.215.14/client.json": httpx.Response(302, headers={"location": location})
    }
    recorder = Recorder(answers)
    resolve, asked = resolver({"app.example": ["93.184.215.14"], "internal.example": ["10.0.0.5"]})
    fetcher = MetadataFetcher(resolver=resolve, transport=recorder.transport())
    with pytest.raises(MetadataFetchFailed):
        await fetcher.fetch("https://app.example/client.json")
    assert [str(r.url) for r in recorder.requests] == ["https://93.184.215.14/client.json"]
    if "internal.example" in location:  # the hop's name was looked up, and its answer refused
        assert asked == ["app.example", "internal.example"]


async def test_a_name_with_any_private_address_is_refused() -> None:
    """A name resolving to a public and a private address is refused: no connection at all."""
    recorder = Recorder({})
    resolve, _ = resolver({"mixed.example": ["93.184.215.14", "10.0.0.5"]})
    fetcher = MetadataFetcher(resolver=resolve, transport=recorder.transport())
    with pytest.raises(MetadataFetchFailed, match="refused address"):
        await fetcher.fetch("https://mixed.example/client.json")
    assert recorder.requests == []


async def test_an_oversize_document_is_refused_whatever_its_length_header_says() -> None:
    big = b'{"client_id": "' + b"a" * (70 * 1024) + b'"}'

    async def stream() -> Any:  # no content-length: the cap is on what is read
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    answers = {
        "https://93.184.215.14/declared.json": httpx.Response(200, content=big),
        "https://93.184.215.14/undeclared.json": httpx.Response(200, content=stream()),
    }
    recorder = Recorder(answers)
    resolve, _ = resolver({"app.example": ["93.184.215.14"]})
    fetcher = MetadataFetcher(resolver=resolve, transport=recorder.transport())
    for path in ("declared.json", "undeclared.json"):
        with pytest.raises(MetadataFetchFailed, match="bytes"):
            await fetcher.fetch(f"https://app.example/{path}")
