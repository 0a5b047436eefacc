"""The MCP endpoints of one node, built in one pass from the services they use: each part holds
one role (server/mcp/__init__.py lists them), and this object only composes them, implements the
relay's ports by delegation, and reports the statistics of their tables."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import attrs

from actors import Connection, Principal, SessionManager, Store, StreamEvent, UsageMeter
from server.http import FastPath, OriginPolicy, Receive, Send
from server.mcp._admission import Admission
from server.mcp._dispatch import Dispatcher
from server.mcp._errors import ErrorAnswers
from server.mcp._exchange import ServerRequests
from server.mcp._gate import Gate
from server.mcp._legacy_sse import LegacySse
from server.mcp._listen import Listen
from server.mcp._notify import Notifier
from server.mcp._outlet import StreamOutlet
from server.mcp._ports import CrossNode
from server.mcp._pump import SsePump
from server.mcp._runner import RequestRunner
from server.mcp._stateless import Stateless
from server.mcp._streamable import McpHttp
from server.mcp._streams import StreamTable
from server.mcp._subscriptions import Subscriptions
from server.oauth import ResourceServer

__all__ = ["LocalStreams", "McpEdge", "McpHttpStatistics", "McpOptions"]


@attrs.frozen(kw_only=True)
class McpOptions:
    """The bounds and durations of the MCP endpoints (seconds, bytes, entries)."""

    max_body: int = 4 * 1024 * 1024
    allowed_origins: tuple[str, ...] = ()
    own_origin: str | None = None
    client_request_timeout: float = 60.0
    max_pending: int = 10_000
    max_inflight: int = 10_000
    max_remembered: int = 50_000
    stream_token_grace: float = 60.0
    stream_fast_path: bool = True


@attrs.frozen(kw_only=True)
class McpHttpStatistics:
    """A snapshot of the MCP endpoints' in-memory state on this node (``McpEdge.statistics()``),
    each bounded table next to its bound."""

    live_exchanges: int  # requests being answered now (2025 and 2026 eras, legacy included)
    max_inflight: int
    parked_requests: int  # 2026 requests that asked for input and await the client's retry
    pending_client_answers: int  # server requests (sampling, elicitation…) awaiting an answer
    max_pending: int
    resumable_streams: int  # live request streams a client can resume on this node
    get_streams: int  # one per 2025 transport session at most
    legacy_streams: int
    listen_streams: int
    subscribed_resources: int  # resource URIs with at least one subscriber
    remembered_log_levels: int
    max_remembered: int
    events_stored: int  # stream events handed to the store for resumption, since start
    # the Hypercorn fast path (server/http/_stream_end.py): on (1) until the setting or a failed
    # fact turns it off (0); streams it ended; ends that raised and went through ASGI instead
    stream_fast_path: int
    stream_ends_direct: int
    stream_fast_path_fallbacks: int

    @property
    def open_streams(self) -> int:
        """Long-lived streams open on this node (GET, legacy, listen)."""
        return self.get_streams + self.legacy_streams + self.listen_streams


class LocalStreams:
    """The relay's port into this node's tables (``StreamsHere``): the stream table, the
    server-request table and the sessions' subscriptions, read and changed through their own
    methods. Built before the relay, which the MCP endpoints then use."""

    def __init__(
        self,
        *,
        streams: StreamTable,
        requests: ServerRequests,
        subscriptions: Subscriptions,
    ) -> None:
        self.streams = streams
        self.requests = requests
        self.subscriptions = subscriptions

    @classmethod
    def new(cls, store: Store, *, node_id: str, options: McpOptions) -> LocalStreams:
        return cls(
            streams=StreamTable(),
            requests=ServerRequests(
                node_id=node_id,
                max_pending=options.max_pending,
                timeout=options.client_request_timeout,
            ),
            subscriptions=Subscriptions(store, max_remembered=options.max_remembered),
        )

    def stream_sessions(self) -> list[str]:
        return self.streams.stream_sessions()

    def session_stream(self, session_id: str) -> Connection | None:
        return self.streams.session_stream(session_id)

    def listen_streams(self) -> list[Connection]:
        return self.streams.listen_streams()

    def awaited_answers(self) -> list[str]:
        return self.requests.awaited()

    def awaits_answer(self, request_id: str) -> bool:
        return self.requests.awaits(request_id)

    def resolve(self, message: dict[str, Any]) -> bool:
        return self.requests.resolve(message)

    def set_subscriptions(
        self, session_ids: Iterable[str], rows: Iterable[tuple[str, str]]
    ) -> None:
        self.subscriptions.set_subscriptions(session_ids, rows)

    @contextlib.contextmanager
    def hold(self, conns: Iterable[Connection]) -> Iterator[list[Connection]]:
        with self.streams.hold(conns) as held:
            yield held

    def for_stream(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        return self.streams.for_stream(conn, message)

    def stream_event(
        self, conn: Connection, message: dict[str, Any], event_id: str, *, final: bool = False
    ) -> StreamEvent:
        return StreamOutlet.stream_event(conn, message, event_id, final=final)


class McpEdge:
    """``/mcp``, ``/sse`` and ``/messages`` on one node: the parts, each built once here."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        sessions: SessionManager,
        resource_server: ResourceServer,
        store: Store,
        usage: UsageMeter,
        local: LocalStreams,
        relay: CrossNode | None,
        options: McpOptions,
    ) -> None:
        self.options = options
        self.dispatcher = dispatcher
        self.local = local
        self.streams = local.streams
        self.requests = local.requests
        self.session_subscriptions = local.subscriptions
        self.origins = OriginPolicy(options.allowed_origins, options.own_origin)
        self.gate = Gate(resource_server, sessions)
        self.errors = ErrorAnswers(resource_server)
        self.admission = Admission(
            usage, store, sessions, stream_token_grace=options.stream_token_grace
        )
        # idle streams ended in the caller's step while Hypercorn's objects are as expected
        self.fast_path = FastPath(enabled=options.stream_fast_path)
        self.pump = SsePump(self.fast_path)
        self.outlet = StreamOutlet(store, self.streams, relay)
        self.notifier = Notifier(
            dispatcher.app, self.streams, self.session_subscriptions, self.outlet, relay
        )
        self.runner = RequestRunner(
            dispatcher,
            usage=usage,
            admission=self.admission,
            requests=self.requests,
            streams=self.streams,
            outlet=self.outlet,
            notifier=self.notifier,
            pump=self.pump,
            resource_server=resource_server,
            relay=relay,
            max_inflight=options.max_inflight,
        )
        self.listen = Listen(store, self.admission, self.streams, self.outlet, self.pump)
        self.stateless = Stateless(
            dispatcher, self.runner, self.requests, self.listen, relay, node_id=sessions.node_id
        )
        self.http = McpHttp(
            dispatcher=dispatcher,
            sessions=sessions,
            store=store,
            origins=self.origins,
            gate=self.gate,
            errors=self.errors,
            admission=self.admission,
            runner=self.runner,
            streams=self.streams,
            subscriptions=self.session_subscriptions,
            pump=self.pump,
            relay=relay,
            max_body=options.max_body,
            stateless=self.stateless,
        )
        self.legacy = LegacySse(
            dispatcher=dispatcher,
            sessions=sessions,
            store=store,
            origins=self.origins,
            gate=self.gate,
            errors=self.errors,
            admission=self.admission,
            runner=self.runner,
            streams=self.streams,
            subscriptions=self.session_subscriptions,
            pump=self.pump,
            relay=relay,
            max_body=options.max_body,
            outlet=self.outlet,
        )

    # -- the relay's port for what another node forwards here (ForwardedHere) --------------------

    async def answer(self, send: Send, handler: Callable[[], Awaitable[None]]) -> None:
        await self.errors.answer(send, handler)

    async def retry(
        self,
        state: Any,
        grant_id: Any,
        message: dict[str, Any],
        send: Send,
        receive: Receive,
        *,
        stream_ok: bool,
    ) -> None:
        await self.stateless.retry(state, grant_id, message, send, receive, stream_ok=stream_ok)

    async def handle_forwarded(
        self, principal: Principal, session_id: str, message: dict[str, Any], send: Send
    ) -> None:
        await self.legacy.handle_forwarded(principal, session_id, message, send)

    # -- what the node and the app do with it ---------------------------------------------------

    def origin_allowed(self, origin: str) -> bool:
        return self.origins.allowed(origin)

    def notify_resource_updated(self, uri: str) -> int:
        return self.notifier.resource_updated(uri)

    def notify_list_changed(self, kind: str) -> int:
        return self.notifier.list_changed(kind)

    def tier_changed(self, user_id: str, tier: str) -> int:
        return self.notifier.tier_changed(user_id, tier)

    def emit(self, conn: Connection, message: dict[str, Any], *, final: bool = False) -> None:
        self.outlet.emit(conn, message, final=final)

    def session_stream(self, session_id: str) -> Connection | None:
        return self.streams.session_stream(session_id)

    def statistics(self) -> McpHttpStatistics:
        return McpHttpStatistics(
            live_exchanges=len(self.runner.inflight),
            max_inflight=self.runner.max_inflight,
            parked_requests=len(self.requests.parked),
            pending_client_answers=len(self.requests.pending),
            max_pending=self.requests.max_pending,
            resumable_streams=len(self.streams.live_streams),
            get_streams=len(self.streams.get_streams),
            legacy_streams=len(self.streams.legacy_streams),
            listen_streams=len(self.streams.listeners),
            subscribed_resources=self.session_subscriptions.count,
            remembered_log_levels=self.session_subscriptions.remembered_log_levels,
            max_remembered=self.session_subscriptions.max_remembered,
            events_stored=self.outlet.events_stored,
            stream_fast_path=int(self.fast_path.on),
            stream_ends_direct=self.fast_path.ended,
            stream_fast_path_fallbacks=self.fast_path.fallbacks,
        )

    # -- what the node's introspection reads (server/_introspection.py, Observed) -----------------

    def held_streams(self) -> list[Connection]:
        """Every GET, legacy and listen stream in the stream table, closing ones included."""
        return self.streams.held()

    def subscribers(self, uri: str) -> frozenset[str]:
        """The transport sessions on this node subscribed to ``uri``."""
        return frozenset(self.session_subscriptions.subscribers(uri))
