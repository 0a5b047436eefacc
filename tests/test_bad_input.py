"""Input that PostgreSQL or the parsers cannot take is a clear 4xx at the edge, never a 500 (the
cases the fuzzer in tests/fuzz found, kept as plain regression tests)."""

from __future__ import annotations

import json

import httpx

from server.app._steward import Context, Steward
from tests.harness._pg import psql
from tests.harness._steward import (
    REDIRECT_URI,
    McpClient,
    pkce,
    register,
    running_node,
    sign_in,
)


async def test_a_nul_character_in_any_input_is_a_400(fresh_db: str) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: a query string, form or JSON value with one is
    refused before it reaches a query."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        base = node.info.base_url
        tokens = await sign_in(http, node, "alice")
        client_id = await register(http, node)
        before = psql(fresh_db, "SELECT count(*) FROM oauth_clients")
        r = await http.get(f"{base}/authorize", params={"client_id": "a\x00b"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await http.post(
            f"{base}/token", data={"grant_type": "refresh_token", "client_id": client_id + "\x00"}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await http.post(
            f"{base}/register", json={"redirect_uris": [REDIRECT_URI], "client_name": "\x00"}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata", r.text
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == before
        mcp = McpClient(http, node, tokens["access_token"])
        r = await http.post(
            f"{base}/messages?session_id=%00",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers=mcp.headers(),
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await mcp.post(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "\x00"}},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
        assert psql(fresh_db, "SELECT count(*) FROM transport_sessions") == "0"


async def test_a_cancellation_naming_an_id_no_request_can_have_is_accepted_and_ignored(
    fresh_db: str,
) -> None:
    """notifications/cancelled with a list or object as requestId: 202, like any unknown id."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        for request_id in ([], {"a": 1}, None, 1.5):
            r = await http.post(
                mcp.url,
                json={
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": request_id},
                },
                headers=mcp.headers(),
            )
            assert r.status_code == 202, r.text
        assert (await mcp.call("ping"))["result"] == {}


async def test_a_reply_holding_what_postgresql_cannot_store_is_a_400(fresh_db: str) -> None:
    """A client's answer to an unknown server request is relayed through the outbox (jsonb):
    NaN, Infinity and NUL are refused when the message is parsed, not by the database (a 500)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        for body, code in (
            (b'{"jsonrpc": "2.0", "id": 7, "result": [Infinity]}', -32700),
            (b'{"jsonrpc": "2.0", "id": 7, "result": {"x": NaN}}', -32700),
            (b'{"jsonrpc": "2.0", "id": 7, "result": {"x": "\\u0000"}}', -32600),
        ):
            r = await http.post(mcp.url, content=body, headers=mcp.headers())
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        ok = b'{"jsonrpc": "2.0", "id": 7, "result": {"x": "\\\\u0000"}}'  # an escaped backslash
        assert (await http.post(mcp.url, content=ok, headers=mcp.headers())).status_code == 202


broken = Steward("bad-input-test")


@broken.prompt()
async def greet(ctx: Context, name: str) -> str:
    return f"hello {name}"


@broken.completion("ref/prompt", "greet")
async def complete_name(
    ctx: Context, argument: str, value: str, context: dict[str, object]
) -> list[str]:
    return [n for n in ("alice", "bob") if n.startswith(value)]


@broken.resource("bad://resource")
async def failing(ctx: Context) -> str:
    raise RuntimeError("a bug in the application")


async def test_completion_params_of_the_wrong_type_and_failing_handlers_are_jsonrpc_errors(
    fresh_db: str,
) -> None:
    """completion/complete with a list as ref.name or a number as argument.value is -32602, and
    a resource whose function raises is -32603: answers to the request, not HTTP 500s."""
    async with running_node(fresh_db, broken) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        for ref, argument in (
            ({"type": "ref/prompt", "name": []}, {"name": "name", "value": "a"}),
            ({"type": "ref/prompt", "name": "greet"}, {"name": "name", "value": 5}),
            ({"type": "ref/prompt", "name": "greet"}, {"name": {}, "value": "a"}),
        ):
            answer = await mcp.call("completion/complete", {"ref": ref, "argument": argument})
            assert answer["error"]["code"] == -32602, answer
        ok = await mcp.call(
            "completion/complete",
            {
                "ref": {"type": "ref/prompt", "name": "greet"},
                "argument": {"name": "name", "value": "a"},
            },
        )
        assert ok["result"]["completion"]["values"] == ["alice"]
        failed = await mcp.call("resources/read", {"uri": "bad://resource"})
        assert failed["error"] == {"code": -32603, "message": "resources/read failed: RuntimeError"}


async def test_non_ascii_credentials_are_refused_with_4xx(fresh_db: str) -> None:
    """``hmac.compare_digest`` raises TypeError for a str holding non-ASCII characters: the admin
    bearer token, cookie, CSRF header and sign-in form, and the development IdP's control
    header, are compared as bytes and refused like any wrong value."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        base = node.info.listen_url
        api = f"{base}/admin/api/tree"
        for value in ("Bearer t\xf6ken".encode("latin-1"), b"Bearer \xff\xfe"):
            r = await http.get(api, headers={"authorization": value})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        for cookie in (b"steward_admin=9999999999.\xe9t\xe9", b"steward_admin=\xb2.abc"):
            r = await http.get(api, headers={"cookie": cookie})
            assert r.status_code == 401, r.text
            r = await http.get(f"{base}/admin", headers={"cookie": cookie})
            assert r.status_code == 200 and "sign in" in r.text  # the sign-in form
        r = await http.post(f"{base}/admin/login", data={"token": "t\u00f6ken \u2603"})
        assert r.status_code == 401, r.text
        r = await http.post(f"{base}/admin/login", data={"token": node.admin_token})
        assert r.status_code == 303, r.text
        cookie = r.headers["set-cookie"].split(";")[0].encode()
        r = await http.post(
            f"{base}/admin/api/users/revoke",
            json={"user_id": "nobody"},
            headers={"cookie": cookie, "x-csrf-token": b"\xe9\xe9"},
        )
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        assert node.info.dev_idp_url is not None
        r = await http.post(
            f"{node.info.dev_idp_url}/_control/stats", headers={"x-control-secret": b"s\xe9cret"}
        )
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text


async def test_the_development_idp_refuses_bad_control_arguments_and_redirect_uris(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        assert node.dev_idp is not None and node.info.dev_idp_url is not None
        control = f"{node.info.dev_idp_url}/_control"
        secret = {"x-control-secret": node.dev_idp.control_secret}
        for action, body in (
            ("revoke_user", {}),
            ("revoke_user", {"user": ["alice"]}),
            ("set_tier", {"user": "nobody", "tier": "pro"}),
            ("token_ttl", {"seconds": "soon"}),
            ("token_ttl", {"seconds": -1}),
            ("fail_refresh", {"count": 10**12}),
            ("fail_refresh", {"seconds": "NaN"}),
            ("stats", [1]),
        ):
            r = await http.post(f"{control}/{action}", json=body, headers=secret)
            assert r.status_code == 400, (action, body, r.text)
            assert r.json()["error_description"], r.text
        assert (await http.get(f"{control}/stats", headers=secret)).json()[
            "pending_refresh_faults"
        ] == []
        _, challenge = pkce()
        r = await http.get(
            f"{node.info.dev_idp_url}/authorize",
            params={
                "client_id": "steward",
                "redirect_uri": "http://127.0.0.1:9/cb\r\nSet-Cookie: a=b",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "response_type": "code",
                "state": "s",
                "login_hint": "alice",
            },
        )
        assert r.status_code == 400 and "location" not in r.headers, r.text
        r = await http.get(f"{node.info.dev_idp_url}/authorize?state=%00")  # found by the fuzzer
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await http.post(f"{node.info.dev_idp_url}/token", content=b"grant_type=%00")
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text


async def test_json_that_postgresql_cannot_store_is_a_400_at_registration_and_admin(
    fresh_db: str,
) -> None:
    """NaN, Infinity and lone surrogates (``"\\ud800"``): Python's json takes them, jsonb and
    text refuse them (a 500 after the request was taken). Refused when the body is parsed."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        base = node.info.listen_url
        uri = json.dumps(REDIRECT_URI)
        for body in (
            f'{{"redirect_uris": [{uri}], "x": NaN}}',
            f'{{"redirect_uris": [{uri}], "x": [Infinity]}}',
            f'{{"redirect_uris": [{uri}], "x": {{"y": -Infinity}}}}',
            f'{{"redirect_uris": [{uri}], "client_name": "\\ud800"}}',
            f'{{"redirect_uris": [{uri}], "x": {{"\\udfff": 1}}}}',
        ):
            r = await http.post(
                f"{base}/register", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"] == "invalid_client_metadata", r.text
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == "0"
        admin = {"authorization": f"Bearer {node.admin_token}", "content-type": "application/json"}
        for body in ('{"user_id": "\\u0000"}', '{"user_id": "\\ud800"}', '{"user_id": NaN}'):
            r = await http.post(f"{base}/admin/api/users/revoke", content=body, headers=admin)
            assert r.status_code == 400 and r.json()["error"] == "invalid_request", (body, r.text)
