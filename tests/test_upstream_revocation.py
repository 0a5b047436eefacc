"""Revocation reaches the identity provider, and can be undone.

Every way a grant ends (an operator ending a session or revoking a user, from the admin API or
the command line; a client's /revoke; code and refresh-token reuse) revokes the grant's upstream
tokens at the IdP (RFC 7009, refresh token first) and deletes their ciphertext. The IdP being
away delays that, never the local revocation, and never forever. A revoked user is refused at
sign-in with a page that says so, until an operator reinstates them (CLI, admin API).

The upstream revocations go to a standard OpenID Connect provider (tests/harness/_oidc.py),
configured from its issuer alone: it advertises its RFC 7009 endpoint in discovery, requires the
client to authenticate there, records every /revoke it answers and can fail them with 503.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import httpx
import trio

from runtime import Backoff
from server._node import Node
from tests.harness._oidc import oidc_provider
from tests.harness._steward import (
    REDIRECT_URI,
    McpClient,
    authorize,
    pkce,
    register,
    running_node,
    sign_in,
)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "revocation-admin"
STEWARD = [sys.executable, "-m", "server.cli"]


async def admin(http: httpx.AsyncClient, node: Node, route: str, body: dict[str, Any]) -> Any:
    return await http.post(
        f"{node.info.listen_url}/admin/api/{route}",
        json=body,
        headers={"authorization": f"Bearer {TOKEN}"},
    )


async def grant_of(node: Node, user: str) -> uuid.UUID:
    grant: uuid.UUID = await node.store.fetchval(
        "SELECT grant_id FROM grants g JOIN users u USING (user_id) WHERE u.subject = $1 "
        "ORDER BY g.created_at DESC LIMIT 1",
        user,
    )
    return grant


async def user_id_of(node: Node, user: str) -> str:
    found: str = await node.store.fetchval("SELECT user_id FROM users WHERE subject = $1", user)
    return found


async def upstream_row(node: Node, grant_id: uuid.UUID) -> dict[str, Any] | None:
    return await node.store.fetchrow(
        "SELECT revoke_requested_at, revoke_attempts FROM upstream_tokens WHERE grant_id = $1",
        grant_id,
    )


async def wait_deleted(node: Node, grant_id: uuid.UUID, within: float = 10.0) -> None:
    with trio.fail_after(within):
        while await upstream_row(node, grant_id) is not None:
            await trio.sleep(0.05)


def steward(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEWARD, *args, "--database-url", dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def exchange(
    http: httpx.AsyncClient, node: Node, client_id: str, code: str, verifier: str
) -> httpx.Response:
    return await http.post(
        f"{node.info.listen_url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
        },
    )


async def test_every_way_a_grant_ends_revokes_its_upstream_tokens_and_deletes_them(
    fresh_db: str,
) -> None:
    """Six grants end six ways; for each, the IdP receives the refresh token's revocation and
    then the access token's, and the grant's upstream_tokens row (its ciphertext) is deleted.
    Active grants keep theirs."""
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, admin_token=TOKEN, upstream=idp.upstream_settings()) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"]
        tokens = {u: await sign_in(http, node, u) for u in users if u != "frank"}
        # frank: the code is exchanged twice (code reuse)
        frank_client = await register(http, node)
        code, verifier = await authorize(http, node, frank_client, "frank")
        assert (await exchange(http, node, frank_client, code, verifier)).status_code == 200
        grants = {u: await grant_of(node, u) for u in users}
        assert await node.store.fetchval("SELECT count(*) FROM upstream_tokens") == len(users)

        # alice: an operator ends her session (admin API)
        assert (
            await admin(http, node, "sessions/end", {"grant_id": str(grants["alice"])})
        ).is_success
        # bob: the client revokes its refresh token (RFC 7009 at Steward)
        r = await http.post(
            f"{node.info.listen_url}/revoke",
            data={"token": tokens["bob"]["refresh_token"], "client_id": tokens["bob"]["client_id"]},
        )
        assert r.status_code == 200
        # carol: an operator revokes her (admin API)
        carol = await user_id_of(node, "carol")
        assert (await admin(http, node, "users/revoke", {"user_id": carol})).is_success
        # dave: a superseded refresh token is presented again (reuse detection)
        old = tokens["dave"]["refresh_token"]
        for _ in range(2):
            await http.post(
                f"{node.info.listen_url}/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": old,
                    "client_id": tokens["dave"]["client_id"],
                },
            )
        # erin: an operator revokes her from the command line (another process)
        erin = await user_id_of(node, "erin")
        out = await trio.to_thread.run_sync(steward, fresh_db, "users", "revoke", erin)
        assert out.returncode == 0, out.stderr
        # frank: the authorization code is used a second time
        assert (await exchange(http, node, frank_client, code, verifier)).status_code == 400

        ended = ["alice", "bob", "carol", "dave", "erin", "frank"]
        for user in ended:
            await wait_deleted(node, grants[user])
        revocations = idp.revocations
        for user in ended:
            mine = [(r["kind"], r["token_type_hint"]) for r in revocations if r["user"] == user]
            assert mine == [("refresh", "refresh_token"), ("access", "access_token")], (
                user,
                revocations,
            )
        assert all(r["client_id"] == "steward" for r in revocations)  # authenticated there
        # grace's grant is active: her tokens stay, and were not sent to the IdP
        assert await upstream_row(node, grants["grace"]) is not None
        assert not [r for r in revocations if r["user"] == "grace"]
        events = await node.store.fetch(
            "SELECT grant_id, detail->>'outcome' AS outcome FROM auth_events WHERE kind = 'upstream_revoked'"
        )
        assert {e["grant_id"] for e in events} == {grants[u] for u in ended}
        assert {e["outcome"] for e in events} == {"revoked"}


async def test_the_idp_being_away_delays_upstream_revocation_not_the_revocation(
    fresh_db: str,
) -> None:
    """The IdP answers 503 to the first two /revoke calls: the user is revoked at once (their
    next request is refused), the upstream tokens are kept and retried with backoff, and revoked
    and deleted once the IdP answers."""
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, admin_token=TOKEN, upstream=idp.upstream_settings()) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        assert node.revoker is not None
        node.revoker.policy = attrs.evolve(
            node.revoker.policy, backoff=Backoff(min=0.3, max=1.0, jitter=0.0)
        )
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        grant = await grant_of(node, "alice")
        idp.fail_revoke(2)

        alice = await user_id_of(node, "alice")
        with trio.fail_after(2):  # not held up by the IdP
            assert (await admin(http, node, "users/revoke", {"user_id": alice})).is_success
        assert (await mcp.post("ping")).status_code == 401
        with trio.fail_after(10):  # kept while the IdP fails, attempt after attempt
            while idp.revoke_faults > 0:
                row = await upstream_row(node, grant)
                assert row is not None and row["revoke_requested_at"] is not None
                await trio.sleep(0.05)
        await wait_deleted(node, grant)
        assert idp.calls["/revoke"] == 4  # two refused with 503, then both tokens
        assert [r["kind"] for r in idp.revocations] == ["refresh", "access"]
        attempts = await node.store.fetchval(
            "SELECT (detail->>'attempts')::int FROM auth_events WHERE kind = 'upstream_revoked' AND grant_id = $1",
            grant,
        )
        assert attempts == 3


async def test_ciphertext_is_deleted_when_the_idp_never_answers_or_offers_no_revocation(
    fresh_db: str,
) -> None:
    """An IdP that keeps failing: after ``max_attempts`` the ciphertext is deleted unrevoked and
    the event audited (``abandoned``). An IdP whose metadata names no revocation endpoint:
    deleted at once, no call made."""
    async with (
        oidc_provider() as idp,
        running_node(fresh_db, admin_token=TOKEN, upstream=idp.upstream_settings()) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        assert node.revoker is not None
        node.revoker.policy = attrs.evolve(
            node.revoker.policy, backoff=Backoff(min=0.1, max=0.2, jitter=0.0), max_attempts=3
        )
        await sign_in(http, node, "alice")
        idp.fail_revoke(1000)
        alice = await grant_of(node, "alice")
        assert (await admin(http, node, "sessions/end", {"grant_id": str(alice)})).is_success
        await wait_deleted(node, alice)
        assert idp.calls["/revoke"] == 3 and idp.revocations == []
        detail = await node.store.fetchval(
            "SELECT detail FROM auth_events WHERE kind = 'upstream_tokens_deleted' AND grant_id = $1",
            alice,
        )
        assert detail is not None and detail["outcome"] == "abandoned"

    async with (
        oidc_provider(revocation=False) as idp,
        running_node(fresh_db, admin_token=TOKEN, upstream=idp.upstream_settings()) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        await sign_in(http, node, "bob")
        bob = await grant_of(node, "bob")
        assert (await admin(http, node, "sessions/end", {"grant_id": str(bob)})).is_success
        await wait_deleted(node, bob)
        assert idp.calls["/revoke"] == 0  # no call made
        detail = await node.store.fetchval(
            "SELECT detail FROM auth_events WHERE kind = 'upstream_tokens_deleted' AND grant_id = $1",
            bob,
        )
        assert detail is not None and detail["outcome"] == "not_offered"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("id") and a.get("href"):
            self.hrefs[str(a["id"])] = str(a["href"])


async def browser_sign_in(
    http: httpx.AsyncClient, node: Node, client_id: str, user: str
) -> tuple[httpx.Response, str]:
    """/authorize, the IdP and the callback as a browser asks for them; the callback's answer
    and the client's state."""
    _, challenge = pkce()
    state = secrets.token_urlsafe(8)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": user,
    }
    browser = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    r = await http.get(f"{node.info.listen_url}/authorize", params=params, headers=browser)
    r = await http.get(r.headers["location"], headers=browser)
    callback = r.headers["location"].replace(node.info.base_url, node.info.listen_url, 1)
    return await http.get(callback, headers=browser), state


async def test_a_revoked_user_sees_a_page_at_sign_in_until_reinstated_from_the_cli(
    fresh_db: str,
) -> None:
    async with (
        running_node(fresh_db, admin_token=TOKEN) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        client_id = await register(http, node)
        first = await sign_in(http, node, "alice", client_id=client_id)
        alice = await user_id_of(node, "alice")
        out = await trio.to_thread.run_sync(steward, fresh_db, "users", "revoke", alice)
        assert out.returncode == 0, out.stderr

        idp = node.dev_idp
        assert idp is not None
        idp.revocations.clear()
        page, state = await browser_sign_in(http, node, client_id, "alice")
        assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
        # the tokens the IdP issued for the refused sign-in are revoked there, none stored
        assert [(r["kind"], r["user"]) for r in idp.revocations] == [
            ("refresh", "alice"),
            ("access", "alice"),
        ]
        assert "Access revoked" in page.text and alice in page.text
        links = _Links()
        links.feed(page.text)
        back = urlsplit(links.hrefs["return"])
        assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
        assert parse_qs(back.query) == {
            "error": ["access_denied"],
            "error_description": ["this user's access was revoked"],
            "state": [state],
            "iss": [node.info.issuer_url],
        }
        assert "location" not in page.headers  # no code, no redirect by itself

        reinstated = await trio.to_thread.run_sync(
            steward, fresh_db, "users", "reinstate", alice, "--json"
        )
        assert reinstated.returncode == 0, reinstated.stderr
        assert json.loads(reinstated.stdout) == {"user_id": alice, "reinstated": True}
        again = await trio.to_thread.run_sync(steward, fresh_db, "users", "reinstate", alice)
        assert again.returncode == 0 and "is not revoked; nothing changed" in again.stdout
        nobody = await trio.to_thread.run_sync(steward, fresh_db, "users", "reinstate", "x|nobody")
        assert nobody.returncode == 2 and "no user 'x|nobody'" in nobody.stderr

        # she signs in again and works; the session the revocation ended stays ended
        second = await sign_in(http, node, "alice", client_id=client_id)
        mcp = McpClient(http, node, second["access_token"])
        await mcp.initialize()
        assert (await mcp.post("ping")).status_code == 200
        assert (await McpClient(http, node, first["access_token"]).post("ping")).status_code == 401
        statuses = await node.store.fetch(
            "SELECT status FROM grants WHERE user_id = $1 ORDER BY created_at", alice
        )
        assert [r["status"] for r in statuses] == ["revoked", "active"]
        kinds = await node.store.fetch(
            "SELECT kind, node_id FROM auth_events WHERE user_id = $1 "
            "AND kind IN ('revoked', 'sign_in_refused', 'reinstated') ORDER BY occurred_at",
            alice,
        )
        assert [(r["kind"], r["node_id"]) for r in kinds] == [
            ("revoked", "cli"),
            ("sign_in_refused", node.info.node_id),
            ("reinstated", "cli"),
        ]


async def test_the_admin_api_reinstates_a_user(fresh_db: str) -> None:
    async with (
        running_node(fresh_db, admin_token=TOKEN) as node,
        httpx.AsyncClient(timeout=20) as http,
    ):
        client_id = await register(http, node)
        await sign_in(http, node, "bob", client_id=client_id)
        bob = await user_id_of(node, "bob")
        assert (await admin(http, node, "users/revoke", {"user_id": bob})).is_success
        listed = (
            await http.get(
                f"{node.info.listen_url}/admin/api/sessions",
                headers={"authorization": f"Bearer {TOKEN}"},
            )
        ).json()["sessions"]
        assert [s["user_revoked"] for s in listed] == [True]
        refused, _ = await browser_sign_in(http, node, client_id, "bob")
        assert refused.status_code == 403

        r = await admin(http, node, "users/reinstate", {"user_id": bob})
        assert r.status_code == 200 and r.json() == {"user_id": bob, "reinstated": True}
        r = await admin(http, node, "users/reinstate", {"user_id": bob})
        assert r.status_code == 200 and r.json() == {"user_id": bob, "reinstated": False}
        r = await admin(http, node, "users/reinstate", {"user_id": "x|nobody"})
        assert r.status_code == 404 and "no user" in r.json()["error_description"]
        assert (await admin(http, node, "users/reinstate", {})).status_code == 400
        await sign_in(http, node, "bob", client_id=client_id)  # signs in again
        reasons = await node.store.fetch(
            "SELECT detail->>'reason' AS reason FROM auth_events WHERE kind = 'reinstated'"
        )
        assert [r["reason"] for r in reasons] == ["reinstated by an operator"]
