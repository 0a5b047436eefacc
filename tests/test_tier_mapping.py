"""Tiers fail closed and follow the identity provider (docs/security.md, "Tiers").

The nodes here sign users in through an identity provider of their own configuration
(``[upstream]`` from its issuer alone, with ``[upstream.tiers]``): the standard OpenID Connect
provider of the tests (tests/harness/_oidc.py), shared by every node of a test. A test sets a
user's claims there; they reach Steward in the id_token and from userinfo."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.sessions import SessionPolicy
from server._node import Node
from server.config._settings import ConfigError, load_settings
from tests.harness._oidc import OidcProvider, oidc_provider
from tests.harness._pg import psql
from tests.harness._steward import (
    REDIRECT_URI,
    McpClient,
    get_stream,
    pkce,
    register,
    running_node,
    sign_in,
)
from tests.harness._wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()
ECHO = {"name": "echo", "arguments": {"text": "x"}}
ADMIN = "admin-token-for-the-tier-tests-0123456789"
# the free tier: 3 requests at once, then one a second; pro and enterprise: out of reach here
TIERS = [
    {"name": "free", "requests_per_minute": 60, "burst": 3},
    {"name": "pro", "requests_per_minute": 6000, "burst": 1000},
    {"name": "enterprise", "requests_per_minute": 6000, "burst": 1000},
]


def upstream(idp: OidcProvider, **tiers: Any) -> dict[str, Any]:
    """``[upstream]`` for the provider: its issuer, the client, and ``[upstream.tiers]``."""
    return idp.upstream_settings(**({"tiers": tiers} if tiers else {}))


async def mcp_for(http: httpx.AsyncClient, node: Node, user: str) -> McpClient:
    mcp = McpClient(http, node, (await sign_in(http, node, user))["access_token"])
    await mcp.initialize()
    return mcp


async def whoami(mcp: McpClient) -> dict[str, Any]:
    body = await mcp.call("tools/call", {"name": "whoami", "arguments": {}})
    result: dict[str, Any] = body["result"]["structuredContent"]
    return result


async def calls_until_refused(mcp: McpClient, most: int) -> tuple[int, str]:
    """Tool calls until the first 429 (at most ``most``): how many passed, and the refusal."""
    for passed in range(most):
        r = await mcp.post("tools/call", ECHO)
        if r.status_code == 429:
            return passed, r.json()["error"]["message"]
        assert r.status_code == 200, r.text
    return most, ""


def metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}


async def test_an_unknown_or_missing_tier_claim_gets_the_default_tier_never_no_limits(
    fresh_db: str,
) -> None:
    """Scenario: with the default mapping (each tier's own name, anything else the lowest
    tier), alice's provider says ``gold``, bob's ``Pro`` (the names match case exactly), and
    carol's says nothing at all. Each of them is free: the free rate limit refuses the fourth
    quick call, as for a free user; ``whoami`` says free; the pro tool is refused. Each sign-in
    is logged and counted in /metrics; nothing unconfigured reaches the database."""
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, upstream=upstream(idp), tiers=TIERS) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        idp.set_user("alice", tier="gold")
        idp.set_user("bob", tier="Pro")
        idp.set_user("carol")  # no tier claim at all
        for user in ("alice", "bob", "carol"):
            mcp = await mcp_for(http, node, user)
            assert (await whoami(mcp))["tier"] == "free"  # one call of the burst of 3
            report = await mcp.post("tools/call", {"name": "report", "arguments": {"topic": "x"}})
            assert report.status_code == 200 and report.json()["result"]["isError"] is True
            assert "this account is free" in report.text
            passed, refusal = await calls_until_refused(mcp, 40)
            assert passed == 1 and "rate limit of the free tier" in refusal, (user, passed)
        assert psql(fresh_db, "SELECT string_agg(DISTINCT tier, ',') FROM users") == "free"
        assert node.auth.tier_unmapped == {("unknown", "default"): 2, ("missing", "default"): 1}
        text = (await http.get(f"{node.info.listen_url}/metrics")).text
        assert metric(text, "steward_tier_claim_unmapped") == {
            (("outcome", "default"), ("reason", "unknown")): 2.0,
            (("outcome", "default"), ("reason", "missing")): 1.0,
        }


async def test_a_tier_claim_that_maps_to_nothing_refuses_the_sign_in_when_so_configured(
    fresh_db: str,
) -> None:
    """Scenario: ``default = "refuse"``. alice (``gold``) and carol (no claim) are refused at the
    callback with 403 access_denied naming the rule; no grant, no user row is made; bob (pro)
    signs in. The refusals are counted."""
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, upstream=upstream(idp, default="refuse"), tiers=TIERS) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        idp.set_user("alice", tier="gold")
        idp.set_user("bob", tier="pro")
        idp.set_user("carol")  # no tier claim at all
        client_id = await register(http, node)
        for user in ("alice", "carol"):
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
                    "login_hint": user,
                },
            )
            r = await http.get(r.headers["location"])  # the IdP signs the user in
            r = await http.get(r.headers["location"])  # Steward's callback
            assert r.status_code == 403, r.text
            body = r.json()
            assert body["error"] == "access_denied"
            assert "no subscription tier" in body["error_description"]
            assert "'tier'" in body["error_description"]
        assert psql(fresh_db, "SELECT count(*) FROM grants") == "0"
        assert psql(fresh_db, "SELECT count(*) FROM users") == "0"
        bob = await mcp_for(http, node, "bob")
        assert (await whoami(bob))["tier"] == "pro"
        assert node.auth.tier_unmapped == {("unknown", "refused"): 1, ("missing", "refused"): 1}


async def test_a_nested_list_claim_maps_to_the_highest_mapped_tier_in_any_case(
    fresh_db: str,
) -> None:
    """Scenario: Keycloak-style roles at ``realm_access.roles``, mapped without regard to case.
    alice's roles hold ``STEWARD-PRO`` among others: pro (the pro tool answers). bob holds both
    mapped roles: enterprise, the highest. carol holds only roles that map to nothing: the
    configured default, free, and it is logged."""
    tiers = {
        "claim": "realm_access.roles",
        "map": {"steward-pro": "pro", "Steward-Enterprise": "enterprise"},
        "case_sensitive": False,
        "default": "free",
    }
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, upstream=upstream(idp, **tiers), tiers=TIERS) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        roles = {
            "alice": ["offline_access", "STEWARD-PRO", "uma_authorization"],
            "bob": ["steward-enterprise", "steward-pro"],
            "carol": ["offline_access"],
        }
        for user, held in roles.items():
            # the top-level claim says enterprise for every one of them: it is not the claim
            idp.set_user(user, tier="enterprise", realm_access={"roles": held})
        alice, bob, carol = [await mcp_for(http, node, u) for u in ("alice", "bob", "carol")]
        assert (await whoami(alice))["tier"] == "pro"
        report = await alice.call("tools/call", {"name": "report", "arguments": {"topic": "t"}})
        assert "error" not in report and not report["result"].get("isError")
        assert (await whoami(bob))["tier"] == "enterprise"
        assert (await whoami(carol))["tier"] == "free"
        assert node.auth.tier_unmapped == {("unknown", "default"): 1}


async def test_a_change_at_the_identity_provider_reaches_every_grant_on_every_node_at_the_next_refresh(
    fresh_db: str,
) -> None:
    """Scenario: alice is pro at the IdP, with 3-second upstream tokens. She holds one grant used
    on nodes A and B (a stream open on each) and a second grant through another client on B.
    The IdP downgrades her to free. At the next upstream refresh every live session of hers on
    both nodes is free, her streams stay open, and the free rate limit applies to both grants
    on both nodes; the database holds one tier for the user."""
    settings = {
        "public_url": PUBLIC,
        "encryption_key": KEY,
        "tiers": TIERS,
        "session_policy": SessionPolicy(refresh_lead=1.5, refresh_jitter=0.0),
    }
    async with oidc_provider() as idp:
        settings["upstream"] = upstream(idp)
        async with (
            running_node(fresh_db, **settings) as a,
            running_node(fresh_db, **settings) as b,
            httpx.AsyncClient(timeout=20) as http,
        ):
            idp.set_user("alice", tier="pro")
            idp.set_lifetime(3)
            on_a = await mcp_for(http, a, "alice")
            on_b = McpClient(http, b, on_a.token)
            await on_b.initialize()
            other = await mcp_for(http, b, "alice")  # a second grant, another client
            for mcp in (on_a, on_b, other):
                assert (await whoami(mcp))["tier"] == "pro"
            assert (await calls_until_refused(on_b, 10))[0] == 10  # pro: no refusal
            async with get_stream(on_a) as stream_a, get_stream(on_b) as stream_b:
                for stream in (stream_a, stream_b):
                    assert (await stream.next()) is not None  # the priming event
                before = idp.calls["refresh:alice"]
                idp.set_user("alice", tier="free")

                def tiers_of_alice() -> set[str]:
                    return {
                        s.context.tier
                        for node in (a, b)
                        for s in node.sessions.live()
                        if s.context.user_id.endswith("|alice")
                    }

                await wait_until(lambda: tiers_of_alice() == {"free"}, within=30, every=0.05)
                assert idp.calls["refresh:alice"] > before
                assert sum(len(n.sessions.live()) for n in (a, b)) == 3  # 1 on A, 2 on B
                for node in (a, b):  # the streams stayed open
                    assert (
                        sum(
                            1
                            for s in node.sessions.live()
                            for c in s.connections()
                            if c.kind == "get"
                        )
                        == 1
                    )
                for mcp in (on_a, on_b, other):
                    passed, refusal = await calls_until_refused(mcp, 10)
                    assert passed <= 3 and "rate limit of the free tier" in refusal
        assert psql(fresh_db, "SELECT tier || ',' || idp_tier FROM users") == "free,free"
        assert a.sessions.tier_rereads["ok"] + b.sessions.tier_rereads["ok"] >= 1


async def test_an_operators_tier_override_holds_over_the_identity_provider_until_cleared(
    fresh_db: str,
) -> None:
    """Scenario: alice is free at the IdP. An operator sets her to pro (admin API): her live
    session is pro at once. The IdP then says enterprise: after a refresh the database records
    the IdP's enterprise, and she stays pro; a new sign-in keeps pro too. The operator clears
    the override: she is enterprise, the IdP's value, at once. ``steward users set-tier`` and
    ``clear-tier`` do the same from the command line and reach the running node; an unknown
    user or tier is a clear error (404 / 400)."""
    async with (
        oidc_provider() as idp,
        running_node(
            fresh_db,
            upstream=upstream(idp),
            tiers=TIERS,
            admin_token=ADMIN,
            session_policy=SessionPolicy(refresh_lead=1.5, refresh_jitter=0.0),
        ) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        admin = {"authorization": f"Bearer {ADMIN}"}
        api = f"{node.info.listen_url}/admin/api/users"
        idp.set_user("alice", tier="free")
        alice = await mcp_for(http, node, "alice")
        assert (await whoami(alice))["tier"] == "free"
        user_id = await node.store.fetchval("SELECT user_id FROM users WHERE subject = 'alice'")
        r = await http.post(
            f"{api}/set-tier", json={"user_id": user_id, "tier": "pro"}, headers=admin
        )
        assert r.status_code == 200 and r.json() == {
            "user_id": user_id,
            "tier": "pro",
            "override": "pro",
        }
        assert (await whoami(alice))["tier"] == "pro"

        idp.set_user("alice", tier="enterprise")
        idp.set_lifetime(3)
        again = await mcp_for(http, node, "alice")  # a sign-in: short upstream tokens from now
        assert (await whoami(again))["tier"] == "pro"
        assert (
            await node.store.fetchval("SELECT idp_tier FROM users WHERE user_id = $1", user_id)
            == "enterprise"
        )
        before = node.sessions.tier_rereads["ok"]
        # a refresh re-reads the IdP's enterprise: the override holds
        await wait_until(lambda: node.sessions.tier_rereads["ok"] != before, within=20, every=0.05)
        assert (await whoami(alice))["tier"] == "pro"

        r = await http.post(f"{api}/clear-tier", json={"user_id": user_id}, headers=admin)
        assert r.status_code == 200 and r.json()["tier"] == "enterprise", r.text
        for mcp in (alice, again):
            assert (await whoami(mcp))["tier"] == "enterprise"
        r = await http.post(
            f"{api}/set-tier", json={"user_id": "nobody", "tier": "pro"}, headers=admin
        )
        assert r.status_code == 404 and "nobody" in r.json()["error_description"]
        r = await http.post(
            f"{api}/set-tier", json={"user_id": user_id, "tier": "gold"}, headers=admin
        )
        assert r.status_code == 400 and "'gold'" in r.json()["error_description"]

        def steward(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "server.cli", *args, "--database-url", fresh_db],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )

        out = await trio.to_thread.run_sync(steward, "users", "set-tier", user_id, "free")
        assert out.returncode == 0 and "is now free (an override" in out.stdout, out.stderr
        # the command's tier_changed event reaches the running node
        await wait_until(lambda: node.sessions.live()[0].context.tier == "free", every=0.05)
        assert {s.context.tier for s in node.sessions.live()} == {"free"}
        out = await trio.to_thread.run_sync(steward, "users", "clear-tier", user_id, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {
            "user_id": user_id,
            "tier": "enterprise",
            "override": None,
        }
        await wait_until(
            lambda: {s.context.tier for s in node.sessions.live()} == {"enterprise"},
            every=0.05,
        )
        out = await trio.to_thread.run_sync(steward, "users", "clear-tier", "nobody")
        assert out.returncode == 2 and "no user 'nobody'" in out.stderr


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        (
            {"map": {"gold": "platinum"}},
            "sends 'gold' to 'platinum', which is not a configured tier",
        ),
        ({"default": "gold"}, "must be one of free, pro, enterprise or 'refuse', got 'gold'"),
        (
            {"map": {"Pro": "pro", "pro": "enterprise"}, "case_sensitive": False},
            "the same without case",
        ),
        ({"claim": "realm_access..roles"}, "a claim name or a dotted path"),
        ({"map": {"gold": 3}}, "maps names to names"),
    ],
)
def test_a_tier_mapping_is_checked_at_start_and_the_error_names_the_value(
    tiers: dict[str, Any], message: str
) -> None:
    upstream = {
        "issuer": "https://idp.example",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://idp.example/token",
        "client_id": "steward",
        "tiers": tiers,
    }
    with pytest.raises(ConfigError, match=r"upstream\.tiers") as caught:
        load_settings(environ={}, overrides={"upstream": upstream})
    assert message in str(caught.value)


def test_the_tier_mapping_from_the_environment_and_the_old_setting() -> None:
    env = {
        "STEWARD_UPSTREAM__ISSUER": "https://idp.example",
        "STEWARD_UPSTREAM__AUTHORIZATION_ENDPOINT": "https://idp.example/authorize",
        "STEWARD_UPSTREAM__TOKEN_ENDPOINT": "https://idp.example/token",
        "STEWARD_UPSTREAM__CLIENT_ID": "steward",
        "STEWARD_UPSTREAM__TIERS__CLAIM": "groups",
        "STEWARD_UPSTREAM__TIERS__MAP": "paying=pro, big=enterprise",
        "STEWARD_UPSTREAM__TIERS__DEFAULT": "refuse",
    }
    mapping = load_settings(environ=env).tier_mapping()
    assert mapping.resolve({"groups": ["big", "paying"]}).tier == "enterprise"
    assert mapping.resolve({"groups": ["other"]}).tier is None
    with pytest.raises(ConfigError, match=r"upstream.tier_claim.*\[upstream.tiers\] claim"):
        load_settings(environ={**env, "STEWARD_UPSTREAM__TIER_CLAIM": "tier"})


async def test_limit_lookups_of_a_tier_that_is_not_configured_get_the_strictest_limits(
    fresh_db: str,
) -> None:
    """A user row holding a tier the configuration no longer has (an operator removed it):
    every limit of the user is the strictest of the configured tiers', never none."""
    async with (
        running_node(fresh_db, tiers=TIERS) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        mcp = await mcp_for(http, node, "carol")
        # the row changes, and the tier_changed event another node (or the CLI) would publish
        psql(
            fresh_db,
            "UPDATE users SET tier = 'legacy-gold' WHERE subject = 'carol'; "
            "INSERT INTO cluster_events (kind, user_id, payload, origin_node) "
            "SELECT 'tier_changed', user_id, '{\"tier\": \"legacy-gold\"}', 'elsewhere' "
            "FROM users WHERE subject = 'carol'; SELECT pg_notify('steward_events', 'tier_changed')",
        )
        await wait_until(lambda: node.sessions.live()[0].context.tier == "legacy-gold", every=0.05)
        passed, refusal = await calls_until_refused(mcp, 40)
        assert passed == 3 and "rate limit of the legacy-gold tier" in refusal
        assert node.usage.unknown_tier_lookups >= 4
        strictest = node.usage.limit("legacy-gold")
        assert (strictest.requests_per_minute, strictest.burst, strictest.max_streams) == (
            60,
            3,
            10,
        )


async def test_a_sign_in_at_a_new_tier_changes_the_users_other_grants_too(fresh_db: str) -> None:
    """Tiers are per user: alice signs in through one client as pro; the IdP makes her free; her
    sign-in through another client is free, and so is her first grant, at once."""
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, upstream=upstream(idp), tiers=TIERS) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        idp.set_user("alice", tier="pro")
        first = await mcp_for(http, node, "alice")
        assert (await whoami(first))["tier"] == "pro"
        idp.set_user("alice", tier="free")
        second = await mcp_for(http, node, "alice")
        assert (await whoami(second))["tier"] == "free"
        assert (await whoami(first))["tier"] == "free"
        assert psql(fresh_db, "SELECT count(DISTINCT tier) FROM users") == "1"


async def test_a_refresh_that_maps_to_no_tier_ends_the_users_grants_when_refusing(
    fresh_db: str,
) -> None:
    """Scenario: ``default = "refuse"``; alice is pro and holds a stream. The IdP's claim becomes
    ``gold``. At the next refresh her grant ends with ``reauth_required`` (the stream's final
    event says so) and a new sign-in is refused."""
    async with (
        oidc_provider() as idp,
        running_node(
            fresh_db,
            upstream=upstream(idp, default="refuse"),
            tiers=TIERS,
            session_policy=SessionPolicy(refresh_lead=1.5, refresh_jitter=0.0),
        ) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        idp.set_user("alice", tier="pro")
        idp.set_lifetime(3)
        alice = await mcp_for(http, node, "alice")
        async with get_stream(alice) as stream:
            assert (await stream.next()) is not None
            idp.set_user("alice", tier="gold")
            with trio.fail_after(20):
                event = await stream.next_message()
        assert event is not None
        assert event["data"]["params"]["data"]["error"] == "reauth_required"
        assert "no longer gives this account a tier" in event["data"]["params"]["data"]["message"]
        assert psql(fresh_db, "SELECT status FROM grants") == "reauth_required"
        assert node.sessions.tier_rereads["refused"] == 1
        assert (await alice.post("ping")).status_code == 401
