"""Upstream refreshes fit any token lifetime (docs/sessions.md, "When the token keeper refreshes").

Two nodes on one database share one identity provider, as a deployment does: a standard OpenID
Connect provider (tests/harness/_oidc.py: discovery, JWKS, the code flow with PKCE, refresh with
rotation, userinfo, revocation), configured from its issuer alone as ``[upstream]``. A grant's
session lives on both nodes, each with its token keeper. The tests set the lifetimes the
provider issues and the ``expires_in`` it answers.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio

from actors._upstream import UpstreamClient, UpstreamConfig, UpstreamUnavailable
from actors.sessions import NO_REFRESH_TOKEN, SessionPolicy, refresh_gap
from server._node import Node
from server.http._plumbing import lifespan
from tests.harness._asgi_server import hypercorn_on_a_free_port
from tests.harness._oidc import OidcProvider, oidc_provider
from tests.harness._pg import psql
from tests.harness._steward import McpClient, get_stream, running_node, sign_in

PUBLIC = "http://steward.test"
KEY = base64.b64encode(bytes(range(32))).decode()  # every node shares the upstream-token key


@attrs.define
class Cluster:
    dsn: str
    a: Node
    b: Node
    idp: OidcProvider
    http: httpx.AsyncClient

    def refreshes(self, user: str) -> int:
        """The refresh calls the IdP answered for ``user``'s grants, from every node."""
        return self.idp.calls[f"refresh:{user}"]

    async def on_both(self, user: str) -> tuple[McpClient, McpClient, uuid.UUID]:
        """``user`` signed in through a; their session initialized on a and live on b too."""
        tokens = await sign_in(self.http, self.a, user)
        on_a = McpClient(self.http, self.a, tokens["access_token"])
        await on_a.initialize()
        on_b = McpClient(self.http, self.b, tokens["access_token"])
        on_b.session_id = on_a.session_id
        assert (await on_b.post("ping")).status_code == 200  # hydrated on b from the database
        grant = uuid.UUID(
            psql(
                self.dsn,
                f"SELECT g.grant_id FROM grants g JOIN users u USING (user_id) WHERE u.subject = '{user}'",
            )
        )
        return on_a, on_b, grant


@asynccontextmanager
async def two_nodes_one_idp(
    dsn: str,
    session_policy: SessionPolicy | None = None,
    provider: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Cluster]:
    async with oidc_provider(**(provider or {})) as idp:
        node = {
            "upstream": idp.upstream_settings(),
            "public_url": PUBLIC,
            "encryption_key": KEY,
            "session_policy": session_policy,
            **overrides,
        }
        async with (
            running_node(dsn, **node) as a,
            running_node(dsn, **node) as b,
            httpx.AsyncClient(timeout=10) as http,
        ):
            yield Cluster(dsn, a, b, idp, http)


class RefreshLog:
    """The Trio times of one user's refresh calls at the IdP, from every node, polled every
    10 ms in the background from before the user signs in."""

    def __init__(self, cluster: Cluster, user: str) -> None:
        self.cluster, self.user = cluster, user
        self.times: list[float] = []

    async def run(self) -> None:
        seen = self.cluster.refreshes(self.user)
        while True:
            await trio.sleep(0.01)
            now = self.cluster.refreshes(self.user)
            self.times.extend([trio.current_time()] * (now - seen))
            seen = now

    async def wait_for(self, count: int, within: float, *, at_most: int | None = None) -> None:
        """Wait until there are ``count`` refreshes, at most ``within`` seconds; fail as soon as
        there are more than ``at_most`` (default ``count``)."""
        at_most = count if at_most is None else at_most
        with trio.fail_after(within):
            while len(self.times) < count:
                await trio.sleep(0.01)
                assert len(self.times) <= at_most, f"{len(self.times)} refreshes: {self.times}"
        assert len(self.times) <= at_most, f"{len(self.times)} refreshes: {self.times}"

    async def none_for(self, seconds: float) -> None:
        """No more refreshes for ``seconds``."""
        before = len(self.times)
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            await trio.sleep(0.01)
            assert len(self.times) == before, f"refreshed again: {self.times[before:]}"


@asynccontextmanager
async def refresh_log(cluster: Cluster, user: str) -> AsyncIterator[RefreshLog]:
    log = RefreshLog(cluster, user)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        yield log
        nursery.cancel_scope.cancel()


async def test_tokens_of_30_and_60_seconds_are_refreshed_once_per_lifetime_across_two_nodes(
    fresh_db: str,
) -> None:
    """With the default settings (lead 60 s, at most a quarter of the lifetime, jitter ±20%),
    each token is refreshed once, 0.70 to 0.80 of its lifetime after it was issued, by one of
    the two nodes holding the session; the other node takes the result from the database.
    alice's tokens live 30 s and bob's 60 s, both at once on the same two nodes: over 102 s
    that is exactly four refresh calls for alice and two for bob (and as many token writes and
    ``upstream_refresh`` events), where the fixed 60 s lead refreshed in a tight loop."""
    window = 102.0
    expected = {"alice": (30, 4), "bob": (60, 2)}
    async with (
        two_nodes_one_idp(fresh_db) as cluster,
        refresh_log(cluster, "alice") as alice_log,
        refresh_log(cluster, "bob") as bob_log,
    ):
        logs = {"alice": alice_log, "bob": bob_log}
        signed_in: dict[str, float] = {}
        sessions: dict[str, tuple[McpClient, McpClient, uuid.UUID]] = {}
        for user, (lifetime, _) in expected.items():
            cluster.idp.set_lifetime(lifetime, user=user)
            signed_in[user] = trio.current_time()
            sessions[user] = await cluster.on_both(user)
        end = signed_in["alice"] + window
        for user, (_, count) in expected.items():
            await logs[user].wait_for(count, signed_in[user] + window - trio.current_time())
        await alice_log.none_for(end - trio.current_time())
        assert len(bob_log.times) == expected["bob"][1], bob_log.times
        await cluster.a.store.write()
        await cluster.b.store.write()
        for user, (lifetime, count) in expected.items():
            times = logs[user].times
            # the first token was issued during the sign-in, a little after ``signed_in``
            gaps = [t - s for s, t in zip([signed_in[user], *times], times, strict=False)]
            assert 0.7 * lifetime <= gaps[0] <= 0.8 * lifetime + 2.0, (user, gaps)
            assert all(0.69 * lifetime <= gap <= 0.81 * lifetime for gap in gaps[1:]), (user, gaps)
            on_a, on_b, grant = sessions[user]
            generation = (
                f"SELECT refresh_generation FROM upstream_tokens WHERE grant_id = '{grant}'"
            )
            assert psql(fresh_db, generation) == str(count), user
            events = (
                "SELECT count(*) FROM auth_events WHERE kind = 'upstream_refresh' "
                f"AND grant_id = '{grant}'"
            )
            assert psql(fresh_db, events) == str(count), user
            for node in (cluster.a, cluster.b):  # both keepers hold the newest tokens
                session = node.sessions.registry.lookup(grant)
                assert session is not None and session._keeper is not None
                assert session._keeper.state is not None
                assert session._keeper.state.generation == count, user
            for client in (on_a, on_b):
                profile = await client.call("tools/call", {"name": "profile", "arguments": {}})
                assert profile["result"]["isError"] is False, profile


async def settled(dsn: str, query: str, expected: str, within: float = 2.0) -> None:
    """``query`` answers ``expected`` within ``within`` seconds (a batched write lands)."""
    value = psql(dsn, query)
    with trio.move_on_after(within):
        while value != expected:
            await trio.sleep(0.05)
            value = psql(dsn, query)
    assert value == expected, (query, value)


async def test_tokens_of_0_to_5_seconds_meet_the_floor_and_its_backoff_on_every_node(
    fresh_db: str,
) -> None:
    """The IdP answers ``expires_in`` 0, then -30, then 5 s tokens, then none. Never a tight
    loop: refreshes of the grant, from both nodes together, start at least the floor apart
    (1 s here: the setting ``upstream_refresh_floor``, scaled down from its 5 s default), the
    gap doubles while the answers stay too short for the floor (1, 2, 4, then 4: the
    ``upstream_refresh_backoff_max``), a 5 s token (refreshed 3.75 s in, later than the floor)
    resets it, and an answer without ``expires_in`` counts as an hour."""
    floor, most = 1.0, 4.0
    policy = SessionPolicy(refresh_floor=floor, refresh_backoff_max=most)
    async with (
        two_nodes_one_idp(
            fresh_db, upstream_refresh_floor=floor, upstream_refresh_backoff_max=most
        ) as cluster,
        refresh_log(cluster, "alice") as log,
    ):
        assert cluster.a.sessions.policy.refresh_floor == floor
        assert cluster.b.sessions.policy.refresh_backoff_max == most
        row = "SELECT {} FROM upstream_tokens WHERE grant_id = '{}'"
        cluster.idp.answer_expires_in(0, user="alice")
        _, _, grant = await cluster.on_both("alice")
        # 0 s tokens: due at once; then the floor holds them 1, 2, 4 and 4 s apart
        await log.wait_for(5, 1 + 2 + 4 + 4 + 3)
        gaps = [t - s for s, t in zip(log.times, log.times[1:], strict=False)]
        expected = [refresh_gap(policy, n) for n in (1, 2, 3, 4)]
        assert expected == [1.0, 2.0, 4.0, 4.0]
        for gap, least in zip(gaps, expected, strict=True):
            assert least - 0.05 <= gap <= least + 0.6, (gaps, expected)
        # the counter is written by the persistence actor's next batch, just after the refresh
        await settled(fresh_db, row.format("short_lifetimes", grant), "5")
        # a negative lifetime: still too short, the gap stays at its bound
        cluster.idp.answer_expires_in(-30, user="alice")
        await log.wait_for(6, most + 1)
        assert most - 0.05 <= log.times[5] - log.times[4] <= most + 0.6, log.times
        # 5 s tokens: the next refresh after the floor, then one per token, 3.5 to 4 s after
        # it was issued (refresh_lead_fraction 0.25 ±20%): the backoff is reset
        cluster.idp.answer_expires_in("lifetime", user="alice")
        cluster.idp.set_lifetime(5, user="alice")
        await log.wait_for(8, most + 4 + 1.5)
        assert most - 0.05 <= log.times[6] - log.times[5] <= most + 0.6, log.times
        assert 3.45 <= log.times[7] - log.times[6] <= 4.1, log.times
        await settled(fresh_db, row.format("short_lifetimes", grant), "0")
        # no expires_in: an hour, so nothing more for now
        cluster.idp.answer_expires_in(None, user="alice")
        await log.wait_for(9, 4 + 1.5)
        await log.none_for(5.0)
        lifetime = "round(extract(epoch FROM access_expires_at - access_issued_at))"
        assert psql(fresh_db, row.format(lifetime, grant)) == "3600"


async def test_without_a_refresh_token_the_session_lives_until_the_token_expires_then_asks_to_sign_in(
    fresh_db: str,
) -> None:
    """The IdP issues no refresh token and 8 s access tokens. The session serves (the upstream
    token works in a tool) and its streams on both nodes stay open until the token expires; then
    each stream ends with ``reauth_required`` and a message that says why, the grant is
    ``reauth_required`` and a request gets the 401 challenge. The IdP is never asked to refresh."""
    async with two_nodes_one_idp(fresh_db, provider={"refresh_tokens": False}) as cluster:
        cluster.idp.set_lifetime(8, user="bob")
        on_a, on_b, grant = await cluster.on_both("bob")
        expires = float(
            psql(
                fresh_db,
                "SELECT extract(epoch FROM access_expires_at) FROM upstream_tokens "
                f"WHERE grant_id = '{grant}'",
            )
        )
        async with get_stream(on_a) as stream_a, get_stream(on_b) as stream_b:
            assert await stream_a.next() is not None and await stream_b.next() is not None
            profile = await on_b.call("tools/call", {"name": "profile", "arguments": {}})
            assert profile["result"]["isError"] is False, profile
            finals = []
            with trio.fail_after(8 + 5):
                for stream in (stream_a, stream_b):
                    event = await stream.next_message()
                    finals.append((time.time(), event))
                    assert await stream.next() is None
        for ended, event in finals:
            assert event is not None
            data = event["data"]["params"]["data"]
            assert data["error"] == "reauth_required", data
            assert data["message"] == NO_REFRESH_TOKEN
            assert "revoked" not in data["message"]
            assert ended >= expires - 0.2, (ended, expires)
        assert (await on_a.post("ping")).status_code == 401
        assert (await on_b.post("ping")).status_code == 401
        assert psql(fresh_db, f"SELECT status FROM grants WHERE grant_id = '{grant}'") == (
            "reauth_required"
        )
        assert cluster.idp.calls["refresh"] == 0  # no refresh attempted, by any node


async def test_an_expires_in_that_is_not_a_finite_number_is_a_malformed_answer() -> None:
    """A token endpoint answering ``expires_in`` as infinity, NaN, a word or a boolean gets
    UpstreamUnavailable (a retry after the floor), never a token that would never or always be
    due; an absent one counts as an hour, 0 and negative ones are kept (the floor holds against
    them) and a huge one is bounded to a year."""
    answer: list[bytes] = []

    async def token_endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer[-1]})

    async with hypercorn_on_a_free_port(token_endpoint) as port:
        url = f"http://127.0.0.1:{port}"
        client = UpstreamClient(UpstreamConfig(url, f"{url}/authorize", f"{url}/token", "steward"))
        try:
            for raw in ("1e999", "-1e999", "NaN", '"soon"', "true", "[30]"):
                answer.append(b'{"access_token": "a", "expires_in": %s}' % raw.encode())
                with pytest.raises(UpstreamUnavailable, match="malformed"):
                    await client.refresh("r")
            said: tuple[tuple[str | None, float], ...] = (
                (None, 3600.0),
                ("0", 0.0),
                ("-30", -30.0),
                ('"45"', 45.0),
                ("1e12", 366 * 86400.0),
            )
            for given, lifetime in said:
                extra = b"" if given is None else b', "expires_in": %s' % given.encode()
                answer.append(b'{"access_token": "a"%s}' % extra)
                before = time.time()
                tokens = await client.refresh("r")
                assert before + lifetime <= tokens.expires_at <= time.time() + lifetime, given
                assert tokens.refresh_token == "r"  # none answered: the one presented stays
        finally:
            await client.aclose()
