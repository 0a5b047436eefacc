"""A live Steward node served from a background thread, for synchronous Hypothesis tests.

The node (real Hypercorn on 127.0.0.1:0, real PostgreSQL) runs under its own ``trio.run`` in a
thread and stays up across examples; the test thread talks to it over HTTP with a blocking httpx
client and reaches into it with :meth:`LiveNode.run` (``trio.from_thread``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import httpx
import structlog
import trio

from server._node import Node
from tests.harness._steward import McpClient, running_node, sign_in

T = TypeVar("T")

START_LIMIT = 60.0  # seconds for the node to start in its thread
STOP_LIMIT = 30.0  # seconds for it to stop
LONG_RUN = 7 * 86400.0  # seconds: longer than any fuzz run
# The fuzzer measures rejection, not rate limiting: every tier far above what it sends.
UNLIMITED_TIERS = [
    {"name": tier, "requests_per_minute": 100_000_000, "burst": 1_000_000}
    for tier in ("free", "pro", "enterprise")
]

# Tables whose content rejected input must leave as it was, with the columns that legitimately
# move on any authenticated request left out (activity timestamps). Left out entirely, because a
# rejected request is rightly recorded there: auth_events (the audit log of refused sign-ins,
# token attempts and registrations), usage_events and usage_rollups (a request refused for its
# params is still a call the caller made), cluster_events, nodes and store_applied_ops (the
# cluster's own bookkeeping: heartbeats, the store's applied write groups).
FINGERPRINTED: dict[str, str] = {
    "users": "*",
    "oauth_clients": "*",
    "grants": "grant_id, user_id, client_id, resource, status, status_reason, tier, scopes, "
    "created_at, expires_at, ended_at",
    "consents": "*",
    "token_families": "*",
    "tokens": "*",
    "upstream_tokens": "*",
    "authorization_requests": "*",
    "authorization_codes": "*",
    "transport_sessions": "session_id, grant_id, user_id, client_id, protocol_version, "
    "client_info, capabilities, log_level, created_at, ended_at",
    "connections": "connection_id, node_id, grant_id, user_id, session_id, kind, opened_at, "
    "closed_at, close_reason",
    "stream_events": "*",
}
FINGERPRINT_SQL = "SELECT json_build_object({})::text".format(
    ", ".join(
        f"'{table}', (SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, '|' ORDER BY "
        f"r::text)), '') FROM (SELECT {columns} FROM {table}) r)"
        for table, columns in FINGERPRINTED.items()
    )
)


@attrs.frozen
class Caller:
    """A signed-in user with an initialized 2025 transport session."""

    user: str
    client_id: str
    access_token: str
    refresh_token: str
    session_id: str


class LiveNode:
    """``with LiveNode(dsn) as live:`` a started node; ``live.url``; ``live.run(afn, *args)``."""

    def __init__(self, dsn: str, **overrides: Any) -> None:
        self.dsn = dsn
        self.overrides = {"tiers": UNLIMITED_TIERS, "access_token_ttl": LONG_RUN, **overrides}
        self.node: Node | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._log_config: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._main, name="live-steward", daemon=True)

    def __enter__(self) -> LiveNode:
        # info events for each of thousands of requests would dominate the run: warnings only
        self._log_config = structlog.get_config()
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        self._thread.start()
        if not self._ready.wait(START_LIMIT):
            msg = f"the node did not start within START_LIMIT ({START_LIMIT}s)"
            raise RuntimeError(msg)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(STOP_LIMIT)
        structlog.configure(**self._log_config)
        if self._thread.is_alive():
            msg = f"the node did not stop within STOP_LIMIT ({STOP_LIMIT}s)"
            raise RuntimeError(msg)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with running_node(self.dsn, **self.overrides) as node:
            # Long runs: nothing may change the fingerprinted tables on its own clock. The
            # janitor's retention sweep (expired authorization requests) runs no more, and the
            # tokens of the setup's sign-ins (ours and the development IdP's) outlive the run.
            node.janitor.policy = attrs.evolve(node.janitor.policy, interval=LONG_RUN)
            if node.dev_idp is not None:
                node.dev_idp.access_ttl = LONG_RUN
            self.node = node
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    @property
    def url(self) -> str:
        assert self.node is not None
        return self.node.info.listen_url

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` in the node's trio loop and return its result."""
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def caller(self, user: str) -> Caller:
        """Sign ``user`` in through the real OAuth flow and initialize a transport session."""

        async def go() -> Caller:
            assert self.node is not None
            async with httpx.AsyncClient(timeout=20) as http:
                tokens = await sign_in(http, self.node, user)
                mcp = McpClient(http, self.node, tokens["access_token"])
                await mcp.initialize()
                assert mcp.session_id is not None
                return Caller(
                    user,
                    tokens["client_id"],
                    tokens["access_token"],
                    tokens["refresh_token"],
                    mcp.session_id,
                )

        return self.run(go)

    def fingerprint(self) -> dict[str, str]:
        """Row count and checksum per table in FINGERPRINTED, once every queued write committed."""

        async def go() -> str:
            assert self.node is not None
            await self.node.store.write()
            value: str = await self.node.store.fetchval(FINGERPRINT_SQL)
            return value

        import json

        snapshot: dict[str, str] = json.loads(self.run(go))
        return snapshot
