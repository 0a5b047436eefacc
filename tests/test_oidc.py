"""Steward against a standard OpenID Connect provider (tests/harness/_oidc.py): configured from
the issuer alone, the id_token validated through the provider's JWK Set, two nodes."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import trio

from actors import Op
from server._node import Node
from tests.harness._oidc import OidcProvider, oidc_provider
from tests.harness._steward import REDIRECT_URI, McpClient, pkce, register, running_node, sign_in
from tests.harness._wait import wait_until

PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()


async def test_two_nodes_sign_in_through_discovery_alone_and_share_the_session(
    fresh_db: str,
) -> None:
    """Only the issuer and the client are configured; the provider has no userinfo endpoint, so
    the user comes from the validated id_token. Signed in on A, used and refreshed on B."""
    async with oidc_provider(userinfo=False) as idp:
        idp.set_user("dora", email="dora@example.com", name="Dora")
        upstream = idp.upstream_settings()
        assert set(upstream) == {"issuer", "client_id", "client_secret"}
        async with (
            running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY, upstream=upstream) as a,
            running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY, upstream=upstream) as b,
            httpx.AsyncClient(timeout=10) as http,
        ):
            tokens = await sign_in(http, a, "dora")
            user = await a.store.fetchrow("SELECT user_id, subject, email FROM users")
            assert user is not None
            assert user["user_id"] == f"{idp.issuer}|dora"
            assert user["email"] == "dora@example.com"  # a claim of the id_token
            assert idp.calls["/userinfo"] == 0
            assert idp.calls["/jwks"] == 1  # node A checked the signature

            on_b = McpClient(http, b, tokens["access_token"])
            await on_b.initialize()
            listed = await on_b.call("tools/list")
            assert listed["result"]["tools"]

            # the client's refresh, on the other node
            r = await http.post(
                f"{b.info.listen_url}/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": tokens["client_id"],
                },
            )
            assert r.status_code == 200, r.text
            on_b.token = r.json()["access_token"]
            assert (await on_b.post("ping")).status_code == 200

            # the upstream refresh (due now), through the provider's refresh grant
            grant_id = await a.store.fetchval("SELECT grant_id FROM grants")
            first = await upstream_access_token(b, grant_id)
            assert idp.access_token_user(first) == "dora"
            await a.store.write(
                Op(
                    "UPDATE upstream_tokens SET access_expires_at = now() WHERE grant_id = $1",
                    (grant_id,),
                )
            )
            await a.sessions.refresh_upstream(grant_id)
            assert idp.calls["refresh"] == 1
            fresh = await upstream_access_token(b, grant_id)
            assert fresh != first and idp.access_token_user(fresh) == "dora"


async def upstream_access_token(node: Node, grant_id: Any) -> str:
    row = await node.store.fetchrow("SELECT * FROM upstream_tokens WHERE grant_id = $1", grant_id)
    assert row is not None
    return node.auth.decrypt_upstream(dict(row)).access_token


async def start_sign_in(http: httpx.AsyncClient, node: Node, user: str) -> str:
    """Register a client and follow /authorize through the provider: the callback URL."""
    client_id = await register(http, node)
    _, challenge = pkce()
    r = await http.get(
        f"{node.info.listen_url}/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": user,
        },
    )
    assert r.status_code == 302, r.text
    sent = parse_qs(urlsplit(r.headers["location"]).query)
    assert len(sent["nonce"][0]) >= 43  # OpenID Connect: a nonce of 256 bits
    r = await http.get(r.headers["location"])
    assert r.status_code == 302, r.text
    return r.headers["location"].replace(node.info.base_url, node.info.listen_url, 1)


async def test_a_bad_id_token_is_refused_with_the_rule_and_nothing_is_stored(
    fresh_db: str,
) -> None:
    """Each broken id_token fails the sign-in with 502 naming the rule; no user, grant or
    upstream token is written, and the authorization request is used up."""
    async with (
        oidc_provider(userinfo=False) as idp,
        running_node(fresh_db, upstream=idp.upstream_settings()) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        expected = {
            "bad_signature": "signature does not verify",
            "unknown_kid": "not in the provider's JWK Set",
            "wrong_aud": "does not hold the client id 'steward'",
            "wrong_iss": "is not the issuer",
            "wrong_nonce": "nonce is missing or not the one of this sign-in",
            "no_nonce": "nonce is missing",
            "expired": "expired",
            "alg_none": "algorithm 'none' is not one of",
        }
        for mode, words in expected.items():
            idp.tamper(mode)
            callback = await start_sign_in(http, node, "erin")
            r = await http.get(callback)
            assert r.status_code == 502, (mode, r.text)
            body = r.json()
            assert body["error"] == "server_error"
            assert "id_token" in body["error_description"], (mode, body)
            assert words in body["error_description"], (mode, body)
            again = await http.get(callback)  # the request was used up
            assert again.status_code == 400, (mode, again.text)
        counts = await node.store.fetchrow(
            "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM grants) AS grants, "
            "(SELECT count(*) FROM upstream_tokens) AS upstream, "
            "(SELECT count(*) FROM authorization_requests WHERE consumed_at IS NULL) AS open, "
            "(SELECT count(*) FROM authorization_requests WHERE upstream_ciphertext IS NOT NULL) AS held"
        )
        assert dict(counts or {}) == {"users": 0, "grants": 0, "upstream": 0, "open": 0, "held": 0}
        refused = await node.store.fetchval(
            "SELECT count(*) FROM auth_events WHERE kind = 'sign_in_refused'"
        )
        assert refused == len(expected)
        # the same provider, untampered: the sign-in goes through
        tokens = await sign_in(http, node, "erin")
        assert tokens["access_token"]


async def test_rfc8414_metadata_under_an_issuer_path_userinfo_and_a_key_rotation(
    fresh_db: str,
) -> None:
    """An issuer with a path and only RFC 8414 metadata; userinfo and the id_token agree; a new
    signing key is fetched when an id_token names it; userinfo naming another subject fails."""
    async with (
        oidc_provider(path="/realms/test", openid_configuration=False) as idp,
        running_node(fresh_db, upstream=idp.upstream_settings()) as node,
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert node.auth.upstream.discovery_url == (
            f"{idp.issuer.replace('/realms/test', '')}/.well-known/oauth-authorization-server/realms/test"
        )
        idp.set_user("fred", email="fred@example.com", tier="pro")
        await sign_in(http, node, "fred")
        assert idp.calls["/realms/test/userinfo"] == 1
        assert idp.calls["/realms/test/jwks"] == 1
        idp.rotate_key()
        await sign_in(http, node, "fred")
        assert idp.calls["/realms/test/jwks"] == 2  # the new kid was looked up
        await sign_in(http, node, "fred")
        assert idp.calls["/realms/test/jwks"] == 2  # and kept
        email = await node.store.fetchval("SELECT email FROM users WHERE subject = 'fred'")
        assert email == "fred@example.com"


async def test_sign_in_waits_for_discovery_and_the_node_starts_without_the_idp(
    fresh_db: str,
) -> None:
    """The IdP away at start: the node starts, sign-in answers 503 with Retry-After and the
    reason; a metadata document naming another issuer is refused; once discovery succeeds
    (retried with backoff) the sign-in works."""
    async with oidc_provider(available=False) as idp:
        async with (
            running_node(fresh_db, upstream=idp.upstream_settings()) as node,
            httpx.AsyncClient(timeout=10) as http,
        ):
            client_id = await register(http, node)
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
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0
            assert "discovery of " + idp.issuer in r.json()["error_description"]
            assert "answered 503" in r.json()["error_description"]
            ready = (await http.get(f"{node.info.listen_url}/readyz")).json()
            assert ready["identity_provider"] == "discovering"
            requests = await node.store.fetchval("SELECT count(*) FROM authorization_requests")
            assert requests == 0  # nothing stored for a sign-in that cannot start

            idp.advertised_issuer = "https://impostor.invalid"
            idp.available = True
            await wait_until(
                lambda: "names issuer" in (node.auth.upstream.discovery_problem or ""),
                every=0.05,
            )
            r = await http.get(f"{node.info.listen_url}/authorize", params=params)
            assert r.status_code == 503
            assert "'https://impostor.invalid', not the configured" in r.json()["error_description"]

            idp.advertised_issuer = None
            await wait_until(lambda: node.auth.upstream.ready, within=20, every=0.05)
            assert (await http.get(f"{node.info.listen_url}/readyz")).json()[
                "identity_provider"
            ] == "ok"
            tokens = await sign_in(http, node, "gina")
            assert tokens["access_token"]


async def test_explicit_settings_win_over_discovery(fresh_db: str) -> None:
    """An endpoint set in the configuration is used although the metadata names another."""
    async with oidc_provider() as idp, oidc_provider() as other:
        upstream = idp.upstream_settings(authorization_endpoint=f"{other.issuer}/authorize")
        async with (
            running_node(fresh_db, upstream=upstream) as node,
            httpx.AsyncClient(timeout=10) as http,
        ):
            client_id = await register(http, node)
            _, challenge = pkce()
            r = await http.get(
                f"{node.info.listen_url}/authorize",
                params={
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": REDIRECT_URI,
                    "state": "s",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                },
            )
            assert r.status_code == 302
            assert r.headers["location"].startswith(f"{other.issuer}/authorize?")
            assert node.auth.upstream.metadata.token_endpoint == f"{idp.issuer}/token"


def doctor_env(idp: OidcProvider) -> dict[str, str]:
    return {
        "STEWARD_UPSTREAM__ISSUER": idp.issuer,
        "STEWARD_UPSTREAM__CLIENT_ID": idp.client_id,
        "STEWARD_ADMIN_TOKEN": "doctor-test",
    }


async def test_the_doctor_checks_discovery_the_keys_and_the_grants_of_the_idp(
    fresh_db: str, tmp_path: Path
) -> None:
    from tests.test_cli import doctor

    args = ["--database-url", fresh_db, "--data-dir", str(tmp_path), "--port", "0"]
    async with oidc_provider() as idp:
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args, env=doctor_env(idp)))
        assert code == 0, checks
        assert checks["identity provider"]["detail"] == (
            f"{idp.issuer}/.well-known/openid-configuration answers for {idp.issuer}"
        )
        assert checks["identity provider keys"]["status"] == "ok"
        assert checks["identity provider keys"]["detail"].endswith("1 signing keys (RSA RS256)")
        assert checks["identity provider grants"]["status"] == "ok"

        idp.refresh_tokens = False
        idp.keys = []  # a JWK Set without keys
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args, env=doctor_env(idp)))
        assert code == 1
        assert checks["identity provider keys"]["status"] == "fail"
        assert "holds no usable signing key" in checks["identity provider keys"]["detail"]
        grants = checks["identity provider grants"]
        assert grants["status"] == "warn" and "no refresh_token grant" in grants["detail"]

        idp.advertised_issuer = "https://impostor.invalid"
        code, checks = await trio.to_thread.run_sync(lambda: doctor(*args, env=doctor_env(idp)))
        assert code == 1
        assert checks["identity provider"]["status"] == "fail"
        assert "names issuer 'https://impostor.invalid'" in checks["identity provider"]["detail"]


async def test_without_userinfo_the_tier_follows_the_refreshed_id_token(fresh_db: str) -> None:
    """A provider with no userinfo endpoint carries the tier in its id_tokens: the one a
    refresh returns is validated and its tier claim applied; one naming another subject is
    refused and changes nothing."""
    async with oidc_provider(userinfo=False) as idp:
        idp.set_user("dora", tier="free")
        upstream = idp.upstream_settings()
        async with (
            running_node(fresh_db, public_url=PUBLIC, encryption_key=KEY, upstream=upstream) as a,
            httpx.AsyncClient(timeout=10) as http,
        ):
            await sign_in(http, a, "dora")
            grant_id = await a.store.fetchval("SELECT grant_id FROM grants")
            assert await a.store.fetchval("SELECT tier FROM users") == "free"

            async def refresh_now() -> None:
                await a.store.write(
                    Op(
                        "UPDATE upstream_tokens SET access_expires_at = now() WHERE grant_id = $1",
                        (grant_id,),
                    )
                )
                await a.sessions.refresh_upstream(grant_id)

            idp.set_user("dora", tier="pro")
            await refresh_now()
            assert await a.store.fetchval("SELECT tier FROM users") == "pro"
            assert a.sessions.tier_rereads["ok"] == 1

            idp.tamper("wrong_aud")  # the next id_token is issued for another client
            idp.set_user("dora", tier="enterprise")
            await refresh_now()
            assert await a.store.fetchval("SELECT tier FROM users") == "pro"
            assert a.sessions.tier_rereads["failed"] == 1


async def test_the_discovery_log_line_says_whether_the_provider_refreshes(fresh_db: str) -> None:
    """``idp_discovered`` reports the refresh grant under a name the log's redaction leaves
    alone: a field named like a token is masked, and the operator would read ``[redacted]``."""
    from structlog.testing import capture_logs

    from server.config._redact import redact_secrets

    async with oidc_provider() as idp:
        with capture_logs() as logs:
            async with running_node(
                fresh_db, public_url=PUBLIC, encryption_key=KEY, upstream=idp.upstream_settings()
            ):
                pass
    found = [e for e in logs if e["event"] == "idp_discovered"]
    assert len(found) == 1, logs
    shown = redact_secrets(None, "info", dict(found[0]))  # as the log prints it
    assert shown["refresh_grant"] is True and shown["issuer"] == idp.issuer, shown
    assert "[redacted]" not in str(shown.values()), shown
