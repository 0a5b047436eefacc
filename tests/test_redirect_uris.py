"""Redirect URIs over HTTP: what /register takes (RFC 3986 characters, no fragment, bounded;
https, loopback http, private-use schemes), and how /authorize matches (exactly, but any port
for loopback http, RFC 8252 §7.3)."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from actors import Op
from server._node import Node
from tests.harness._pg import psql
from tests.harness._steward import pkce, running_node

REFUSED = [
    "https://evil.example/cb\r\nSet-Cookie: session=stolen",
    "https://evil.example/cb\nLocation: https://elsewhere.example/",
    "https://evil.example/c b",
    "https://evil.example/cb\t",
    "https://evil.example/cb\x7f",
    "https://app.example/cb#fragment",
    "https://app.example/cb#",
    "https://app.example/" + "a" * 2000,
    "https://app.example/caf\u00e9",
    "https://app.example/%zz",
    "https://user:pw@app.example/cb",
    "http://evil.example/cb",
    "http://127.0.0.1:99999/cb",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "ftp://app.example/cb",
    "myapp:/cb",  # a private-use scheme must be in reverse-domain form
    "https:///cb",
    "",
]

ACCEPTED = [
    "https://app.example/cb",
    "https://app.example:8443/cb?tenant=1",
    "http://127.0.0.1/cb",
    "http://127.0.0.1:3000/cb",
    "http://[::1]/cb",
    "http://localhost:3000/cb",
    "com.example.app:/oauth2redirect",
    "com.example.app://callback",
    "https://app.example/" + "a" * (2000 - len("https://app.example/")),
]


async def test_registration_refuses_redirect_uris_that_could_inject_or_mislead(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        for uri in REFUSED:
            r = await http.post(
                f"{node.info.listen_url}/register",
                json={"redirect_uris": ["https://app.example/ok", uri]},
            )
            assert r.status_code == 400, (uri, r.text)
            assert r.json()["error"] == "invalid_redirect_uri", r.text
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == "0"
        for uri in ACCEPTED:
            r = await http.post(f"{node.info.listen_url}/register", json={"redirect_uris": [uri]})
            assert r.status_code == 201, (uri, r.text)
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == str(len(ACCEPTED))


async def register(http: httpx.AsyncClient, node: Node, *uris: str) -> str:
    r = await http.post(f"{node.info.listen_url}/register", json={"redirect_uris": list(uris)})
    assert r.status_code == 201, r.text
    client_id: str = r.json()["client_id"]
    return client_id


def authorize_params(client_id: str, redirect_uri: str, challenge: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": "alice",
    }


async def sign_in(
    http: httpx.AsyncClient, node: Node, client_id: str, redirect_uri: str
) -> dict[str, Any]:
    """The whole flow with ``redirect_uri``: where the code lands, and the tokens."""
    verifier, challenge = pkce()
    base = node.info.listen_url
    r = await http.get(
        f"{base}/authorize", params=authorize_params(client_id, redirect_uri, challenge)
    )
    assert r.status_code == 302, r.text
    r = await http.get(r.headers["location"])  # the development IdP
    r = await http.get(r.headers["location"].replace(node.info.base_url, base, 1))
    asked = r.status_code == 200
    if asked:  # the consent page (unless remembered), naming the requested URI
        assert redirect_uri in r.text
        cookie = r.headers["set-cookie"].split(";")[0]
        fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
        r = await http.post(
            f"{base}/consent",
            data={**fields, "decision": "allow"},
            headers={"cookie": cookie, "origin": node.info.base_url},
        )
    assert r.status_code == 302, r.text
    landed = r.headers["location"]
    code = parse_qs(urlsplit(landed).query)["code"][0]
    r = await http.post(
        f"{base}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
        },
    )
    assert r.status_code == 200, r.text
    return {"landed": landed, "asked_consent": asked, **r.json()}


async def test_remembered_consent_sends_no_code_unasked_to_a_native_app_redirect_uri(
    fresh_db: str,
) -> None:
    """RFC 8252 §8.6: a loopback port or a private-use scheme can be taken by any program on
    the user's machine, so the client behind such a redirect URI is not known. Alice allowed
    a native app once (port 50001); someone else starts the flow with that app's public
    client id and a port of their own (their PKCE), and sends alice the link. Alice is asked
    again, on a page naming that port, instead of her browser silently carrying a code
    there. An https redirect URI, which only its host receives, keeps its remembered consent."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        native = await register(
            http, node, "http://127.0.0.1/callback", "com.example.app:/oauth2redirect"
        )
        first = await sign_in(http, node, native, "http://127.0.0.1:50001/callback")
        assert first["asked_consent"] is True
        stolen = await sign_in(http, node, native, "http://127.0.0.1:50002/callback")
        assert stolen["asked_consent"] is True  # the page names http://127.0.0.1:50002/callback
        same_port = await sign_in(http, node, native, "http://127.0.0.1:50001/callback")
        assert same_port["asked_consent"] is True  # another program may hold it by now
        scheme = await sign_in(http, node, native, "com.example.app:/oauth2redirect")
        again = await sign_in(http, node, native, "com.example.app:/oauth2redirect")
        assert scheme["asked_consent"] is True and again["asked_consent"] is True
        web = await register(http, node, "https://app.example/callback")
        first_web = await sign_in(http, node, web, "https://app.example/callback")
        again_web = await sign_in(http, node, web, "https://app.example/callback")
        assert first_web["asked_consent"] is True
        assert again_web["asked_consent"] is False


async def test_a_loopback_redirect_uri_matches_any_port(fresh_db: str) -> None:
    """A native app registers http://127.0.0.1/callback and listens on the port it got."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = await register(http, node, "http://127.0.0.1/callback", "http://[::1]/cb")
        for requested in ("http://127.0.0.1:53124/callback", "http://[::1]:6001/cb"):
            done = await sign_in(http, node, client_id, requested)
            assert done["landed"].startswith(requested + "?code=")
            assert done["access_token"]
        _, challenge = pkce()
        for requested in (
            "http://127.0.0.1:53124/other",  # the path still matches exactly
            "http://127.0.0.1:53124/callback?x=1",
            "http://localhost:53124/callback",  # another host name
            "https://127.0.0.1:53124/callback",
        ):
            r = await http.get(
                f"{node.info.listen_url}/authorize",
                params=authorize_params(client_id, requested, challenge),
            )
            assert r.status_code == 400 and "location" not in r.headers, (requested, r.text)
        https_client = await register(http, node, "https://app.example/cb")
        r = await http.get(
            f"{node.info.listen_url}/authorize",
            params=authorize_params(https_client, "https://app.example:8443/cb", challenge),
        )
        assert r.status_code == 400, r.text  # any port is for loopback http only


async def test_a_private_use_scheme_receives_the_code(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = await register(http, node, "com.example.app:/oauth2redirect")
        done = await sign_in(http, node, client_id, "com.example.app:/oauth2redirect")
        assert done["landed"].startswith("com.example.app:/oauth2redirect?code=")


@pytest.mark.parametrize(
    "stored",
    [
        "https://evil.example/cb\r\nSet-Cookie: a=b",
        "https://evil.example/cb#frag",
        "javascript:alert(1)",
    ],
)
async def test_a_redirect_uri_stored_before_these_rules_is_refused_at_authorize(
    fresh_db: str, stored: str
) -> None:
    """A client registered before these rules (here written to the table directly) cannot use
    such a URI: /authorize refuses it before anything is stored, where /consent used to answer
    500 after creating the grant and the code."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = f"stw-{secrets.token_hex(8)}"
        await node.store.write(
            Op(
                "INSERT INTO oauth_clients (client_id, redirect_uris, source) "
                "VALUES ($1, $2, 'dynamic')",
                (client_id, [stored]),
            )
        )
        _, challenge = pkce()
        r = await http.get(
            f"{node.info.listen_url}/authorize",
            params=authorize_params(client_id, stored, challenge),
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        assert "location" not in r.headers
        assert psql(fresh_db, "SELECT count(*) FROM authorization_requests") == "0"
