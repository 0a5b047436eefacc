"""OAuth 2.1: the authorization-server facade and the resource server, over real HTTP."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import trio

from server.config._redact import REDACTED, redact_secrets
from tests.harness._pg import Cluster, psql
from tests.harness._steward import (
    REDIRECT_URI,
    McpClient,
    authorize,
    pkce,
    register,
    running_node,
    sign_in,
)
from tests.harness._wait import wait_until


async def refresh(http: httpx.AsyncClient, base: str, token: str, client_id: str) -> httpx.Response:
    return await http.post(
        f"{base}/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
    )


async def test_metadata_documents(fresh_db: str) -> None:
    """MCP-R21, R22, R31: protected-resource and authorization-server metadata; S256 only; no offline_access."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        meta = (
            await http.get(f"{node.info.base_url}/.well-known/oauth-authorization-server")
        ).json()
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert meta["issuer"] == node.info.issuer_url
        assert meta["authorization_response_iss_parameter_supported"] is True
        assert "offline_access" not in meta["scopes_supported"]
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ):
            prm = (await http.get(f"{node.info.base_url}{path}")).json()
            assert prm["authorization_servers"] == [node.info.issuer_url]


async def test_refresh_rotates_and_any_reuse_revokes_the_family(fresh_db: str) -> None:
    """MCP-R27: refresh tokens rotate; any replay of a superseded one revokes the family (no
    grace window: RFC 9700 §4.14.2; tests/test_revocation_paths.py has the takeover attempt)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        first = await sign_in(http, node, "alice")
        base, cid = node.info.base_url, first["client_id"]
        second = (await refresh(http, base, first["refresh_token"], cid)).json()
        assert second["refresh_token"] != first["refresh_token"]
        fourth = (await refresh(http, base, second["refresh_token"], cid)).json()
        replay = await refresh(http, base, first["refresh_token"], cid)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert "reuse" in replay.json()["error_description"]
        # the whole family is revoked, including the newest tokens
        assert (await refresh(http, base, fourth["refresh_token"], cid)).status_code == 400
        mcp = McpClient(http, node, fourth["access_token"])
        r = await mcp.post("ping")
        assert r.status_code == 401
        events = psql(fresh_db, "SELECT string_agg(kind, ',') FROM auth_events")
        assert "refresh_reuse_detected" in events


async def test_codes_are_one_time_and_bound_to_pkce(fresh_db: str) -> None:
    """MCP-R22: PKCE S256 is required; codes are single use."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = await register(http, node)
        code, verifier = await authorize(http, node, client_id, "alice")
        base = node.info.base_url
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
        }
        wrong = await http.post(f"{base}/token", data={**form, "code_verifier": pkce()[0]})
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        # the failed attempt used the code up: a correct verifier now finds it spent
        again = await http.post(f"{base}/token", data={**form, "code_verifier": verifier})
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_authorize_refuses_bad_requests_without_redirecting(fresh_db: str) -> None:
    """MCP-R25, R26, R28: 400 for malformed requests, exact redirect URIs (localhost or https), `resource` bound."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = await register(http, node)
        _, challenge = pkce()
        good = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        cases = [
            ({"redirect_uri": "http://127.0.0.1:9/other"}, "invalid_request"),
            ({"client_id": "nobody"}, "invalid_client"),
            ({"code_challenge_method": "plain"}, "invalid_request"),
            ({"state": ""}, "invalid_request"),
            ({"resource": "https://elsewhere.example/mcp"}, "invalid_target"),
            ({"scope": "mcp:tools offline_access"}, "invalid_scope"),
        ]
        for change, error in cases:
            r = await http.get(f"{node.info.base_url}/authorize", params={**good, **change})
            assert r.status_code == 400, (change, r.text)
            assert r.json()["error"] == error
            assert "location" not in r.headers
        bad_client = await http.post(
            f"{node.info.base_url}/register", json={"redirect_uris": ["http://evil.example/cb"]}
        )
        assert (
            bad_client.status_code == 400 and bad_client.json()["error"] == "invalid_redirect_uri"
        )


async def test_consent_is_remembered_and_csrf_protected(fresh_db: str) -> None:
    """MCP-R30: consent per user and client, CSRF-bound form, no framing, __Host- cookies.
    (Remembered for an https redirect URI; a native app's is asked every time,
    tests/test_redirect_uris.py.)"""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        r = await http.post(
            f"{node.info.base_url}/register",
            json={"redirect_uris": ["https://app.example/callback"]},
        )
        client_id = r.json()["client_id"]
        _, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": "https://app.example/callback",
            "state": "first",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": "carol",
        }
        r = await http.get(f"{node.info.base_url}/authorize", params=params)
        r = await http.get(r.headers["location"])
        page = await http.get(r.headers["location"])
        assert page.status_code == 200  # the first time: the consent page
        fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', page.text))
        allowed = await http.post(
            f"{node.info.base_url}/consent",
            data={**fields, "decision": "allow"},
            headers={"cookie": page.headers["set-cookie"].split(";")[0]},
        )
        assert allowed.status_code == 302 and "code=" in allowed.headers["location"]
        # second time: no consent page, straight back to the client
        params["state"] = "again"
        r = await http.get(f"{node.info.base_url}/authorize", params=params)
        r = await http.get(r.headers["location"])
        r = await http.get(r.headers["location"])
        assert r.status_code == 302 and "code=" in r.headers["location"]
        # another user on the same client is asked, and a form without the cookie is refused
        other = await http.get(
            f"{node.info.base_url}/authorize", params={**params, "login_hint": "bob"}
        )
        other = await http.get(other.headers["location"])
        page = await http.get(other.headers["location"])
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
        assert page.headers["set-cookie"].startswith("__Host-steward_csrf=")
        assert "Secure" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
        fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', page.text))
        forged = await http.post(
            f"{node.info.base_url}/consent", data={**fields, "decision": "allow"}
        )
        assert forged.status_code == 403


async def test_scopes_are_enforced_with_403_and_tiers_in_the_mcp_answer(fresh_db: str) -> None:
    """MCP-R25: 403 insufficient_scope listing existing and needed scopes; a tier too low is no
    OAuth matter: the tool result says it (tests/test_tier_refusal.py)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        narrow = await sign_in(http, node, "bob", scope="mcp:resources")
        mcp = McpClient(http, node, narrow["access_token"])
        await mcp.initialize()
        r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert (
            'error="insufficient_scope"' in challenge
            and "mcp:tools" in challenge
            and "mcp:resources" in challenge
        )
        free = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, free["access_token"])
        await mcp.initialize()
        r = await mcp.post("tools/call", {"name": "report", "arguments": {"topic": "x"}})
        assert r.status_code == 200 and "www-authenticate" not in r.headers
        assert r.json()["result"] == {
            "content": [
                {
                    "type": "text",
                    "text": "tool 'report' needs the pro tier or above; this account is free",
                }
            ],
            "isError": True,
        }


async def test_tokens_in_query_strings_and_for_other_audiences_are_refused(fresh_db: str) -> None:
    """MCP-R23: bearer in the header only; the audience must be this server (RFC 8707)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        r = await http.post(
            f"{node.info.mcp_url}?access_token={tokens['access_token']}",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        )
        assert r.status_code == 400 and "query strings" in r.json()["error_description"]
        psql(fresh_db, "UPDATE tokens SET resource = 'https://other.example/mcp'")
        other = await sign_in(http, node, "bob")  # this one stays ours
        psql(
            fresh_db,
            "UPDATE tokens SET resource = 'https://other.example/mcp' WHERE kind = 'access' AND user_id LIKE '%|bob'",
        )
        r = await McpClient(http, node, other["access_token"]).post("ping")
        assert r.status_code == 401


async def test_revocation_ends_the_token_family(fresh_db: str) -> None:
    """MCP-R27: revocation (RFC 7009) ends the family."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        r = await http.post(
            f"{node.info.base_url}/revoke",
            data={"token": tokens["refresh_token"], "client_id": tokens["client_id"]},
        )
        assert r.status_code == 200
        assert (await mcp.post("ping")).status_code == 401
        assert (
            await refresh(http, node.info.base_url, tokens["refresh_token"], tokens["client_id"])
        ).status_code == 400
        unknown = await http.post(
            f"{node.info.base_url}/revoke",
            data={"token": "never-issued", "client_id": tokens["client_id"]},
        )
        assert unknown.status_code == 200  # RFC 7009


async def test_a_database_outage_is_503_for_new_tokens_and_cached_tokens_keep_working(
    pg_cluster: Cluster, fresh_db: str
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=30) as http:
        known = await sign_in(http, node, "alice")
        stranger = await sign_in(http, node, "bob")
        mcp = McpClient(http, node, known["access_token"])
        await mcp.initialize()
        await pg_cluster.stop("immediate")
        try:
            ok = await mcp.post("ping")
            assert ok.status_code == 200
            r = await McpClient(http, node, stranger["access_token"]).post("ping")
            assert r.status_code == 503 and r.headers["retry-after"]
        finally:
            await pg_cluster.start()
        late = McpClient(http, node, stranger["access_token"])
        with trio.fail_after(20):
            while (await late.post("tools/list")).status_code == 503:
                await trio.sleep(0.1)
        assert (await late.initialize())["protocolVersion"] == "2025-11-25"


async def test_no_secret_reaches_the_audit_table(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "bob")
        again = (
            await refresh(http, node.info.base_url, tokens["refresh_token"], tokens["client_id"])
        ).json()
        await node.store.write()  # flush queued audit events
        await wait_until(lambda: not node.store.statistics().queue_depth, within=5, every=0.01)
        audit = psql(fresh_db, "SELECT json_agg(a) FROM auth_events a")
        kinds = {e["kind"] for e in json.loads(audit)}
        assert {"sign_in", "token_issued", "token_refresh", "consent_granted"} <= kinds
        for secret in (
            tokens["access_token"],
            tokens["refresh_token"],
            again["access_token"],
            again["refresh_token"],
        ):
            assert secret not in audit
        stored = psql(fresh_db, "SELECT string_agg(encode(token_hash, 'escape'), '') FROM tokens")
        assert tokens["access_token"] not in stored


def test_the_log_redactor_hides_secrets() -> None:
    event = {
        "event": "x",
        "access_token": "abc",
        "headers": {"authorization": "Bearer abc", "accept": "json"},
        "url": "https://h/cb?code=xyz&state=s1&ok=1",
        "note": "sent Bearer eyJhbGciOi to upstream",
        "dsn": "postgresql://u:pw@h/db",
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["access_token"] == REDACTED
    assert out["headers"] == {"authorization": REDACTED, "accept": "json"}
    assert "xyz" not in out["url"] and "ok=1" in out["url"]
    assert "eyJhbGciOi" not in out["note"]
    assert out["dsn"] == REDACTED


async def test_a_session_id_is_never_authentication(fresh_db: str) -> None:
    """MCP-R18: a valid Mcp-Session-Id without a valid bearer token is refused with 401."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        headers = {k: v for k, v in mcp.headers().items() if k != "authorization"}
        r = await http.post(
            mcp.url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers=headers
        )
        assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]


async def test_state_is_single_use(fresh_db: str) -> None:
    """MCP-R28: the state Steward sent upstream works once; a replayed callback is refused."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = await register(http, node)
        _, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": "alice",
        }
        r = await http.get(f"{node.info.listen_url}/authorize", params=params)
        r = await http.get(r.headers["location"])
        callback = r.headers["location"].replace(node.info.base_url, node.info.listen_url, 1)
        first = await http.get(callback)
        assert first.status_code == 200  # the consent page
        replay = await http.get(callback)
        assert replay.status_code == 400 and "state" in replay.json()["error_description"]


async def test_the_client_token_is_never_passed_upstream(fresh_db: str) -> None:
    """MCP-R24: tools reach the upstream IdP with the upstream token, never the client's."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "bob")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        session = node.sessions.live()[0]
        upstream = await session.upstream_access_token()
        assert upstream != tokens["access_token"]
        assert node.dev_idp is not None and node.dev_idp.issued(upstream)
        assert not node.dev_idp.issued(tokens["access_token"])


async def test_client_id_metadata_documents_and_configured_clients(fresh_db: str) -> None:
    """MCP-R29: a URL client id is fetched as a metadata document (bounded); clients from the
    configuration need no registration."""
    import json as _json

    from server._node import bind_socket, serve_http

    doc: dict[str, object] = {}

    async def metadata_app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()  # type: ignore[operator]
                await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
                if message["type"] == "lifespan.shutdown":
                    return
        body = _json.dumps(doc).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    sock = bind_socket("127.0.0.1", 0)
    client_url = f"http://127.0.0.1:{sock.getsockname()[1]}/client.json"
    doc.update(
        {"client_id": client_url, "client_name": "Doc Client", "redirect_uris": [REDIRECT_URI]}
    )
    configured = [{"client_id": "desk", "client_name": "Desk", "redirect_uris": [REDIRECT_URI]}]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http, metadata_app, sock, 1.0)
        async with (
            running_node(fresh_db, clients=configured, client_metadata_allow_private=True) as node,
            httpx.AsyncClient() as http,
        ):
            for client_id in (client_url, "desk"):
                _, challenge = pkce()
                params = {
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": REDIRECT_URI,
                    "state": "s",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
                r = await http.get(f"{node.info.listen_url}/authorize", params=params)
                assert r.status_code == 302, r.text  # on to the identity provider
            doc["client_id"] = "https://someone.else/client.json"
            psql(
                fresh_db,
                "UPDATE oauth_clients SET fetched_at = now() - interval '2 hours' WHERE source = 'metadata_document'",
            )
            r = await http.get(
                f"{node.info.listen_url}/authorize", params={**params, "client_id": client_url}
            )
            assert r.status_code == 400 and r.json()["error"] == "invalid_client", r.text
        nursery.cancel_scope.cancel()


async def test_the_development_idp_fault_controls_over_http(fresh_db: str) -> None:
    """The fault harness drives the development IdP over HTTP, behind its control secret."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        assert node.dev_idp is not None and node.info.dev_idp_url is not None
        control = f"{node.info.dev_idp_url}/_control"
        secret = {"x-control-secret": node.dev_idp.control_secret}
        assert (await http.post(f"{control}/fail_refresh", json={"mode": "5xx"})).status_code == 403
        r = await http.post(
            f"{control}/fail_refresh", json={"mode": "invalid_grant", "count": 2}, headers=secret
        )
        assert r.json()["pending_refresh_faults"] == ["invalid_grant", "invalid_grant"]
        assert (
            await http.post(f"{control}/fail_refresh", json={"mode": "bogus"}, headers=secret)
        ).status_code == 400
        assert (
            await http.post(
                f"{control}/set_tier", json={"user": "alice", "tier": "pro"}, headers=secret
            )
        ).status_code == 200
        await sign_in(http, node, "alice")
        assert psql(fresh_db, "SELECT tier FROM users WHERE subject = 'alice'") == "pro"
        stats = (await http.get(f"{control}/stats", headers=secret)).json()
        assert stats["calls"]["/token"] >= 1


async def test_registration_refuses_json_nested_too_deeply_with_400(fresh_db: str) -> None:
    """A body nested deeper than the JSON parser's recursion limit is bad JSON, not a 500."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        for body in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
            r = await http.post(
                f"{node.info.base_url}/register",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "invalid_client_metadata"
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == "0"


async def test_a_wrong_method_on_an_oauth_endpoint_is_a_405_that_names_the_right_one(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        r = await http.get(f"{node.info.base_url}/register")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json() == {
            "error": "method_not_allowed",
            "error_description": "/register accepts POST only",
        }
        r = await http.post(f"{node.info.base_url}/authorize")
        assert r.status_code == 405 and r.headers["allow"] == "GET"


async def test_a_refresh_token_presented_by_another_client_is_refused_without_effect(
    fresh_db: str,
) -> None:
    """The refusal leaves the token unrotated: its own client refreshes with it afterwards (a
    rotation would have made that a reuse and revoked the family)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        other = await register(http, node, "another client")
        base = node.info.base_url
        stolen = await refresh(http, base, tokens["refresh_token"], other)
        assert stolen.status_code == 400
        assert (
            stolen.json()["error_description"] == "the refresh token was issued to another client"
        )
        assert psql(fresh_db, "SELECT count(*) FROM tokens WHERE rotated_at IS NOT NULL") == "0"
        own = await refresh(http, base, tokens["refresh_token"], tokens["client_id"])
        assert own.status_code == 200, own.text


async def test_registration_refuses_grant_types_that_are_not_strings(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        for grant_types in ([[]], [{"a": 1}], "authorization_code", [1]):
            r = await http.post(
                f"{node.info.base_url}/register",
                json={"redirect_uris": [REDIRECT_URI], "grant_types": grant_types},
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "invalid_client_metadata"
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == "0"


async def test_state_is_optional_with_pkce_and_returned_exactly_when_sent(fresh_db: str) -> None:
    """OAuth 2.1 §4.1.1: with PKCE a client may send no state (the TypeScript SDK's example
    provider sends none); the code then comes back without one, and the sign-in completes. A
    state that is sent comes back as it was; an empty or oversize one is refused."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        client_id = await register(http, node)
        for state in (None, "s-ü &=?"):
            verifier, challenge = pkce()
            params = {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": REDIRECT_URI,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "login_hint": "alice",
                **({"state": state} if state is not None else {}),
            }
            r = await http.get(f"{node.info.listen_url}/authorize", params=params)
            assert r.status_code == 302, r.text
            r = await http.get(r.headers["location"])
            r = await http.get(
                r.headers["location"].replace(node.info.base_url, node.info.listen_url, 1)
            )
            if r.status_code == 200:  # the consent page, the first time
                cookie = r.headers["set-cookie"].split(";")[0]
                fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
                r = await http.post(
                    f"{node.info.listen_url}/consent",
                    data={**fields, "decision": "allow"},
                    headers={"cookie": cookie},
                )
            assert r.status_code == 302, r.text
            back = parse_qs(urlsplit(r.headers["location"]).query)
            assert back.get("state") == ([state] if state is not None else None)
            assert back["iss"] == [node.info.issuer_url]
            r = await http.post(
                f"{node.info.listen_url}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": back["code"][0],
                    "code_verifier": verifier,
                    "client_id": client_id,
                    "redirect_uri": REDIRECT_URI,
                },
            )
            assert r.status_code == 200 and r.json()["access_token"], r.text
        _, challenge = pkce()
        for bad in ("", "x" * 1025):
            r = await http.get(
                f"{node.info.listen_url}/authorize",
                params={
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": REDIRECT_URI,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "state": bad,
                },
            )
            assert r.status_code == 400 and "location" not in r.headers
            assert "1 to 1024 characters" in r.json()["error_description"]
