"""MCP Streamable HTTP on ``/mcp``, both protocol eras, chosen per request (MCP-R17).

``initialize`` starts a 2025-era transport session; a request carrying
``_meta["io.modelcontextprotocol/protocolVersion"]`` is a 2026-07-28 stateless request; anything
else needs an ``Mcp-Session-Id``. A request's reply is JSON unless the handler sends something
before its result (progress, logging, sampling, elicitation): then it becomes an SSE stream owned by
a connection actor under the user's session (docs/protocol.md, "JSON or SSE").
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from actors import (
    AuthenticationRequiredError,
    CloseReason,
    Connection,
    QuotaExceeded,
    RateLimited,
    RelayAddress,
    SessionLimitReached,
    SessionManager,
    SessionRestarting,
    Store,
    StoreUnavailable,
    StreamEvent,
    StreamLimitReached,
    TransportSession,
    UsageMeter,
    UserContext,
    UserSession,
    forget_subscriptions_op,
    log_level_op,
    store_stream_event_op,
    stream_events_after,
    subscribe_op,
    subscribe_session_op,
    unsubscribe_op,
)
from runtime import MaxChildrenError
from server._dispatch import (
    LOG_LEVELS,
    SUPPORTED_2025,
    SUPPORTED_VERSIONS,
    V2026,
    Dispatcher,
    ScopeRequired,
    TierRefused,
    stamp_2026,
)
from server._http import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
    send_response,
    unavailable,
)
from server._jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    REQUEST_CANCELLED,
    REQUEST_TIMEOUT,
    UNSUPPORTED_VERSION,
    InvalidMessage,
    RpcError,
    error_response,
    notification,
    parse_message,
    request,
    result_response,
)
from server._oauth import AuthError, ResourceServer
from server._sse import SSE_HEADERS, encode_event
from server._stream_end import FastPath

if TYPE_CHECKING:
    from server._relay import Relay

__all__ = ["McpHttp", "McpHttpStatistics"]

log = structlog.get_logger("mcp_http")

SESSION_HEADER = b"mcp-session-id"
SERVER_REQUEST_ID = re.compile(r"s-[0-9a-f]{16}")  # what server_request_id() gives


def server_request_id() -> str:
    """The id of a server request on a stateful stream (sampling, elicitation, roots)."""
    return f"s-{secrets.token_hex(8)}"


VERSION_HEADER = b"mcp-protocol-version"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
DEFAULT_2025 = "2025-03-26"  # MCP-R12: a request without MCP-Protocol-Version
STREAM_RETRY_AFTER = 5  # the Retry-After of a refused stream: streams end at no known time
SESSION_RETRY_AFTER = 60  # the Retry-After of a refused transport session: sessions end when
# their client deletes them or after transport_session_idle
RETRY_MS = 1000  # the `retry:` of priming events: how soon a client reconnects a closed stream
TAIL = 256  # events of a live request stream kept in memory, for resumption on this node
REQUEST_STREAM = "r"  # a request's stream id starts with it (a GET stream's is hexadecimal)
_NAMED = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}
_UNCOUNTED = frozenset({"initialize", "ping", "tools/list"})
_ONLY_2026 = frozenset({V2026})  # versions that exist only in the stateless era
_METHODS_2026 = frozenset({"server/discover", "subscriptions/listen"})
_REMOVED_2026 = frozenset(
    {"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
META_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
_NEEDS = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
_LISTEN_KEYS = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")


@attrs.frozen
class McpHttpStatistics:
    """A snapshot of the ``/mcp`` endpoint's in-memory state on this node (``McpHttp.statistics()``),
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
    # the Hypercorn fast path (server/_stream_end.py): on (1) until the setting or a failed fact
    # turns it off (0); streams it ended; ends that raised and went through ASGI instead
    stream_fast_path: int
    stream_ends_direct: int
    stream_fast_path_fallbacks: int

    @property
    def open_streams(self) -> int:
        """Long-lived streams open on this node (GET, legacy, listen)."""
        return self.get_streams + self.legacy_streams + self.listen_streams


class Reply(Exception):
    """A finished HTTP answer raised out of the request path."""

    def __init__(
        self, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


def rpc_reply(status: int, request_id: Any, code: int, message: str, data: Any = None) -> Reply:
    return Reply(status, error_response(request_id, RpcError(code, message, data)))


def too_many(
    request_id: Any, message: str, retry_after: int, data: dict[str, Any] | None = None
) -> Reply:
    """429 with Retry-After and a JSON-RPC error whose data carries ``retryAfter`` (seconds)."""
    reply = rpc_reply(
        429, request_id, INVALID_REQUEST, message, {"retryAfter": retry_after, **(data or {})}
    )
    reply.headers.append((b"retry-after", str(retry_after).encode()))
    return reply


def outcome_of(
    exc: RpcError | ScopeRequired | TierRefused | AuthenticationRequiredError,
) -> str:
    """A request's outcome for usage from what its handler raised: the one mapping, for both
    transports (a request that ends normally is ``ok``, one cancelled ``cancelled``)."""
    if isinstance(exc, (ScopeRequired, TierRefused)):
        return "forbidden"
    if isinstance(exc, AuthenticationRequiredError):
        return "reauth_required"
    return "error"


def _unavailable(description: str = "the database is unreachable; retry shortly") -> Reply:
    return Reply(503, *unavailable(description))


def _first_leaf(group: BaseExceptionGroup[Any]) -> Reply | AuthenticationRequiredError:
    first = group.exceptions[0]
    if isinstance(first, BaseExceptionGroup):
        return _first_leaf(first)
    assert isinstance(first, (Reply, AuthenticationRequiredError))
    return first


class Exchange:
    """The outbound side of one request: JSON until the handler sends something first, then SSE.

    Once the stream is open every message gets an event id ``<stream>:<seq>``, is kept in a
    bounded tail (resumption on this node) and, on a 2025 transport session, stored in
    ``stream_events`` (resumption after a restart or on another node).
    """

    def __init__(
        self,
        owner: McpHttp,
        request_id: Any,
        *,
        session_id: str | None,
        user_id: str,
        log_level: str | None,
        legacy_conn: Connection | None = None,
    ) -> None:
        self.owner = owner
        self.request_id = request_id
        self.session_id = session_id
        self.user_id = user_id
        self.log_level = log_level
        self.legacy_conn = legacy_conn
        self.stream_id = ""  # named when the reply becomes a stream (most replies are JSON)
        self.cancel_scope = trio.CancelScope()
        self.buffer: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self.denied: ScopeRequired | None = None
        self.decided = trio.Event()
        self.attached = trio.Event()
        self.conn: Connection | None = None
        self.seq = 0
        self.tail: collections.deque[tuple[int, dict[str, Any], bool]] | None = None
        self.close_requested = False
        self.session: UserSession | None = None
        self.stateless = False  # 2026-07-28: server requests travel as input_required results
        self.grant_id: Any = None
        self.client_capabilities: dict[str, Any] = {}
        self.asked: dict[str, dict[str, Any]] = {}  # 2026: input requests still unanswered
        self.asked_ids: dict[str, str] = {}
        self.state: str | None = None  # 2026: the requestState the client must echo
        self.provided: dict[str, Any] = {}  # 2026: inputResponses sent without a requestState

    # -- what the handler's Context calls ------------------------------------------------------------

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        self._out(notification(method, params))
        await trio.lowlevel.checkpoint()

    async def log(self, params: dict[str, Any]) -> None:
        level = params.get("level")
        if (self.stateless and self.log_level is None) or (
            self.log_level in LOG_LEVELS
            and level in LOG_LEVELS
            and LOG_LEVELS.index(level) < LOG_LEVELS.index(self.log_level)
        ):
            await trio.lowlevel.checkpoint()
            return
        await self.notify("notifications/message", params)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        key = server_request_id()
        return (await self.request_many({key: (method, params)}))[key]

    async def request_many(
        self, requests: dict[str, tuple[str, dict[str, Any]]]
    ) -> dict[str, dict[str, Any]]:
        """Ask the client several things at once; their results by key.

        2025 era: one server request per key on this request's stream, answered by POSTs.
        2026 era: one ``input_required`` result naming them all (SEP-2322); the client retries
        the request with ``inputResponses`` and this handler, parked meanwhile, continues.
        """
        ready: dict[str, dict[str, Any]] = {}
        if self.provided:  # answers the client sent with the request itself (no requestState)
            ready = {
                k: self.provided.pop(k) for k in requests if isinstance(self.provided.get(k), dict)
            }
            requests = {k: v for k, v in requests.items() if k not in ready}
            if not requests:
                return ready
        if self.stateless:  # SEP-2575: never rely on a capability the client did not declare
            missing: dict[str, dict[str, Any]] = {
                _NEEDS[m]: {}
                for m, _ in requests.values()
                if _NEEDS.get(m) and _NEEDS[m] not in self.client_capabilities
            }
            if missing:
                msg = f"this request needs the client capabilities {', '.join(sorted(missing))}"
                raise RpcError(MISSING_CAPABILITY, msg, {"requiredCapabilities": missing})
        slots: dict[str, tuple[str, tuple[trio.Event, dict[str, Any]]]] = {}
        try:
            for key in requests:
                wire_id = f"{id(self):x}:{key}" if self.stateless else server_request_id()
                slots[key] = (wire_id, self.owner.pending_slot(wire_id))
            if self.stateless:
                self.asked = {k: {"method": m, "params": p} for k, (m, p) in requests.items()}
                self.asked_ids = {k: wire_id for k, (wire_id, _) in slots.items()}
                self.ask_again()
            else:
                for key, (method, params) in requests.items():
                    self._out(request(slots[key][0], method, params))
            with trio.fail_after(self.owner.client_request_timeout):
                for _wire_id, (event, _answer) in slots.values():
                    await event.wait()
        except trio.TooSlowError:
            names = ", ".join(m for m, _ in requests.values())
            msg = f"the client did not answer {names} within {self.owner.client_request_timeout}s"
            raise RpcError(REQUEST_TIMEOUT, msg) from None
        finally:
            for wire_id, _slot in slots.values():
                self.owner.pending.pop(wire_id, None)
            self.asked = {}
            if self.state is not None:
                self.owner.parked.pop(self.state, None)
                self.state = None
        results: dict[str, dict[str, Any]] = {}
        for key, (_wire_id, (_event, answer)) in slots.items():
            if "error" in answer:
                error = answer["error"] if isinstance(answer["error"], dict) else {}
                msg = f"the client refused {requests[key][0]}: {error.get('message')}"
                raise RpcError(error.get("code", INVALID_REQUEST), msg)
            results[key] = answer.get("result") or {}
        return {**ready, **results}

    def ask_again(self) -> None:
        """Reply ``input_required`` for what is still unanswered, under a fresh requestState."""
        if self.state is not None:
            self.owner.parked.pop(self.state, None)
        self.state = self.owner.park(self)
        asked = {
            "resultType": "input_required",
            "inputRequests": self.asked,
            "requestState": self.state,
        }
        self._out(result_response(self.request_id, asked), final=True)

    def answer(self, responses: Any) -> None:
        """A retry's ``inputResponses``: wake what they answer; keys not asked are ignored."""
        for key, result in (responses if isinstance(responses, dict) else {}).items():
            if key in self.asked and isinstance(result, dict):
                slot = self.owner.pending.get(self.asked_ids[key])
                if slot is not None:
                    slot[1]["result"] = result
                    slot[0].set()
                del self.asked[key]

    async def resource_updated(self, uri: str) -> int:
        await trio.lowlevel.checkpoint()
        return self.owner.notify_resource_updated(uri)

    async def close_stream(self) -> None:
        """SEP-1699 polling: end the HTTP response now; the client resumes with Last-Event-ID."""
        if self.session_id is None or self.legacy_conn is not None:
            return
        if self.buffer and not self.attached.is_set():
            await self.attached.wait()
        if self.conn is not None:
            await self.conn.close(CloseReason.RECONNECT)
        else:
            self.close_requested = True

    # -- the transport's side ------------------------------------------------------------------------

    def _out(self, message: dict[str, Any], *, final: bool = False) -> None:
        if self.legacy_conn is not None:
            self.owner.emit(self.legacy_conn, message)
        elif self.attached.is_set():
            self._event(message, final)
        else:
            if final:
                self.final = message
            else:
                self.buffer.append(message)
            self.decided.set()

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.stream_id}:{self.seq}"

    def _event(self, message: dict[str, Any], final: bool) -> None:
        event_id = self.next_id()
        if self.tail is None:
            self.tail = collections.deque(maxlen=TAIL)
        self.tail.append((self.seq, message, final))
        conn = self.conn
        attached = conn is not None and conn.closed_reason is None
        if self.session_id is not None:
            self.owner.store_event(
                self.session_id,
                self.stream_id,
                self.seq,
                self.user_id,
                message,
                elsewhere=not attached,
            )
        if conn is not None and attached:
            conn.send_nowait(StreamEvent(message, event_id=event_id, final=final))

    def attach(self, conn: Connection) -> None:
        """The SSE stream is open: flush what was buffered, in order."""
        self.conn = conn
        self.attached.set()
        for message in self.buffer:
            self._event(message, False)
        self.buffer.clear()
        if self.final is not None:
            self._event(self.final, True)
        elif self.denied is not None:  # refused after it had sent something: end the stream
            msg = f"insufficient_scope: {self.denied}"
            self._event(error_response(self.request_id, RpcError(INVALID_REQUEST, msg)), True)

    def resume(self, conn: Connection, after: int) -> None:
        """A client reconnected to this stream: replay what it missed, then continue on ``conn``."""
        for seq, message, final in self.tail or ():
            if seq > after:
                conn.send_nowait(
                    StreamEvent(message, event_id=f"{self.stream_id}:{seq}", final=final)
                )
        self.conn = conn

    def finish(self, message: dict[str, Any]) -> None:
        self._out(message, final=True)

    def rebind(self, request_id: Any) -> None:
        """The client's retry of a request that asked for input answers on a new HTTP reply."""
        self.request_id = request_id
        self.final = None
        self.denied = None
        self.buffer = []
        self.decided = trio.Event()
        self.attached = trio.Event()
        self.conn = None
        self.stream_id = ""
        self.seq = 0
        self.tail = None

    def deny(self, exc: ScopeRequired) -> None:
        if self.attached.is_set() or self.legacy_conn is not None:
            msg = f"insufficient_scope: {exc}"
            self.finish(error_response(self.request_id, RpcError(INVALID_REQUEST, msg)))
        else:
            self.denied = exc
            self.decided.set()

    def cancelled(self) -> None:
        """The client cancelled: send no response (a JSON reply, already owed, says so)."""
        if self.legacy_conn is not None:
            return
        if self.attached.is_set():
            conn = self.conn
            if conn is not None and conn.closed_reason is None:
                conn.send_nowait(StreamEvent(comment="cancelled", final=True))
        else:
            msg = "the request was cancelled"
            self.final = error_response(self.request_id, RpcError(REQUEST_CANCELLED, msg))
            self.decided.set()


class McpHttp:
    """The ``/mcp`` endpoint (and the plumbing the deprecated ``/sse`` transport shares)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        sessions: SessionManager,
        resource_server: ResourceServer,
        store: Store,
        usage: UsageMeter,
        *,
        max_body: int = 4 * 1024 * 1024,
        allowed_origins: tuple[str, ...] = (),
        own_origin: str | None = None,
        client_request_timeout: float = 60.0,
        max_pending: int = 10_000,
        max_inflight: int = 10_000,
        max_remembered: int = 50_000,
        stream_token_grace: float = 60.0,
        stream_fast_path: bool = True,
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.rs = resource_server
        self.store = store
        self.usage = usage
        self.max_body = max_body
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        # the public URL's own origin is always allowed (a page served from there), and does not
        # count as a configured list (loopback origins stay allowed while none is configured)
        self.own_origin = own_origin.rstrip("/").lower() if own_origin else None
        self.client_request_timeout = client_request_timeout
        self.max_pending = max_pending
        self.max_inflight = max_inflight
        self.max_remembered = max_remembered
        self.stream_token_grace = stream_token_grace
        # idle streams ended in the caller's step, while Hypercorn's objects are as expected
        # (server/_stream_end.py)
        self.fast_path = FastPath(enabled=stream_fast_path)
        self.events_stored = 0
        self.pending: dict[str, tuple[trio.Event, dict[str, Any]]] = {}
        self.inflight: dict[tuple[str, Any], Exchange] = {}  # (caller key, request id)
        self.live_streams: dict[tuple[str, str], Exchange] = {}  # (session, stream) -> request
        self.parked: dict[str, Exchange] = {}  # 2026 requestState -> the request awaiting input
        self.get_streams: dict[str, Connection] = {}  # transport session -> its GET stream
        self.legacy_streams: dict[str, Connection] = {}  # legacy session -> its SSE stream
        self.listeners: dict[Connection, dict[str, Any]] = {}  # 2026 listen streams, filters
        self.subscriptions: dict[str, set[str]] = {}  # uri -> transport sessions
        self.log_levels: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.held: dict[Connection, list[StreamEvent]] = {}  # see hold()
        self.relay: Relay | None = None  # cross-node delivery, set by the node (server/_relay.py)
        dispatcher.on_subscribe = self._on_subscribe
        dispatcher.on_log_level = self._on_log_level
        dispatcher.app.watch(self.notify_list_changed)
        sessions.on_tier_changed = self.tier_changed

    # -- shared plumbing ---------------------------------------------------------------------------

    def pending_slot(self, request_id: str) -> tuple[trio.Event, dict[str, Any]]:
        if len(self.pending) >= self.max_pending:
            msg = f"too many server requests awaiting an answer (max_pending={self.max_pending})"
            raise RpcError(INVALID_REQUEST, msg)
        slot: tuple[trio.Event, dict[str, Any]] = (trio.Event(), {})
        self.pending[request_id] = slot
        return slot

    def park(self, exchange: Exchange) -> str:
        """Keep a 2026 request that asked the client for input until its retry arrives."""
        if len(self.parked) >= self.max_pending:
            msg = f"too many requests awaiting input (max_pending={self.max_pending})"
            raise RpcError(INVALID_REQUEST, msg)
        # names its node: a retry that reaches another node is forwarded here (server/_relay.py)
        state = f"{secrets.token_urlsafe(16)}.{self.sessions.node_id}"
        self.parked[state] = exchange
        return state

    def statistics(self) -> McpHttpStatistics:
        return McpHttpStatistics(
            live_exchanges=len(self.inflight),
            max_inflight=self.max_inflight,
            parked_requests=len(self.parked),
            pending_client_answers=len(self.pending),
            max_pending=self.max_pending,
            resumable_streams=len(self.live_streams),
            get_streams=len(self.get_streams),
            legacy_streams=len(self.legacy_streams),
            listen_streams=len(self.listeners),
            subscribed_resources=len(self.subscriptions),
            remembered_log_levels=len(self.log_levels),
            max_remembered=self.max_remembered,
            events_stored=self.events_stored,
            stream_fast_path=int(self.fast_path.on),
            stream_ends_direct=self.fast_path.ended,
            stream_fast_path_fallbacks=self.fast_path.fallbacks,
        )

    def store_event(
        self,
        session_id: str,
        stream_id: str,
        seq: int,
        user_id: str,
        message: dict[str, Any],
        *,
        elsewhere: bool = False,
    ) -> None:
        """Store one event of a resumable stream; ``elsewhere``: its client is not attached here,
        so a node that resumed the stream is woken to read it (server/_relay.py)."""
        self.events_stored += 1
        wake = (
            [self.relay.wake_op(RelayAddress.stream(session_id, stream_id))]
            if elsewhere and self.relay is not None
            else []
        )
        self.store.write_nowait(
            store_stream_event_op(session_id, stream_id, seq, user_id, message), *wake
        )

    def emit(self, conn: Connection, message: dict[str, Any], *, final: bool = False) -> None:
        """Send one message on a stream that is not a request's reply (GET, legacy, listen)."""
        event_id = conn.next_event_id()
        if conn.session_id is not None and conn.kind == "get":
            stream, _, seq = event_id.rpartition(":")
            self.store_event(
                conn.session_id, stream, int(seq), conn.session.context.user_id, message
            )
        self.send_event(conn, message, event_id, final=final)

    def send_event(
        self, conn: Connection, message: dict[str, Any], event_id: str, *, final: bool = False
    ) -> None:
        """Queue an event whose id is assigned; while the relay claims messages for ``conn``,
        later events wait behind the claimed ones so that ids reach the client in order."""
        event = self.stream_event(conn, message, event_id, final=final)
        held = self.held.get(conn)
        if held is not None:
            held.append(event)
        else:
            conn.send_nowait(event)

    @staticmethod
    def stream_event(
        conn: Connection, message: dict[str, Any], event_id: str, *, final: bool = False
    ) -> StreamEvent:
        legacy = conn.kind == "legacy_sse"
        return StreamEvent(
            message,
            event_id=None if legacy else event_id,
            event="message" if legacy else None,
            final=final,
        )

    @contextlib.contextmanager
    def hold(self, conns: Iterable[Connection]) -> Iterator[list[Connection]]:
        """Hold back new events on ``conns`` (those not held already) until the block ends; the
        block sends its own first."""
        mine = [c for c in conns if c not in self.held]
        for conn in mine:
            self.held[conn] = []
        try:
            yield mine
        finally:
            for conn in mine:
                for event in self.held.pop(conn):
                    conn.send_nowait(event)

    def _remember(self, table: collections.OrderedDict[str, str], key: str, value: str) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_remembered:
            table.popitem(last=False)

    async def _on_subscribe(self, session_id: str | None, uri: str, on: bool) -> None:
        """(Un)subscribe: here, and in a row that an update published on another node finds."""
        if session_id is None:
            return
        target = RelayAddress.session(session_id)
        if on:
            self.subscriptions.setdefault(uri, set()).add(session_id)
            op = subscribe_session_op(uri, session_id)
        else:
            self._unsubscribe_here(session_id, uri)
            op = unsubscribe_op(uri, target)
        # a node holding the session's stream re-reads its subscriptions (server/_relay.py)
        wake = [] if self.relay is None else [self.relay.wake_op(target)]
        try:
            await self.store.write(op, *wake)
        except StoreUnavailable:
            msg = "the database is unreachable; retry shortly"
            raise RpcError(INTERNAL_ERROR, msg, {"retryable": True, "retryAfter": 5}) from None

    def set_subscriptions(
        self, session_ids: Iterable[str], rows: Iterable[tuple[str, str]]
    ) -> None:
        """Replace what this node remembers of the subscriptions of ``session_ids`` by ``rows``
        (session id, uri), read from the database: a (un)subscribe through another node counts."""
        sessions = set(session_ids)
        for uri, subscribers in list(self.subscriptions.items()):
            subscribers -= sessions
            if not subscribers:
                del self.subscriptions[uri]
        for session_id, uri in rows:
            self.subscriptions.setdefault(uri, set()).add(session_id)

    def _unsubscribe_here(self, session_id: str, uri: str) -> None:
        subscribers = self.subscriptions.get(uri)
        if subscribers is not None:
            subscribers.discard(session_id)
            if not subscribers:
                del self.subscriptions[uri]

    def _on_log_level(self, session_id: str | None, level: str) -> None:
        if session_id is None:
            return
        self._remember(self.log_levels, session_id, level)
        self.store.write_nowait(log_level_op(session_id, level))

    def _session_stream(self, session_id: str) -> Connection | None:
        conn = self.get_streams.get(session_id) or self.legacy_streams.get(session_id)
        return conn if conn is not None and conn.closed_reason is None else None

    # -- the relay's port (server/_relay.py, StreamsHere) -----------------------------------------

    def stream_sessions(self) -> list[str]:
        """The transport sessions whose GET or legacy stream this node holds."""
        return [*self.get_streams, *self.legacy_streams]

    def session_stream(self, session_id: str) -> Connection | None:
        """The open GET or legacy stream of a transport session, if this node holds it."""
        return self._session_stream(session_id)

    def listen_streams(self) -> list[Connection]:
        """The 2026-07-28 listen streams this node holds."""
        return list(self.listeners)

    def awaited_answers(self) -> list[str]:
        """The ids of the server requests whose client answer this node awaits."""
        return list(self.pending)

    def awaits_answer(self, request_id: str) -> bool:
        """Whether this node awaits the client's answer to that server request."""
        return request_id in self.pending

    # -- what the node's introspection reads (server/_introspection.py, Observed) ----------------

    def held_streams(self) -> list[Connection]:
        """Every GET, legacy and listen stream in the tables, closing ones included."""
        return [*self.get_streams.values(), *self.legacy_streams.values(), *self.listeners]

    def subscribers(self, uri: str) -> frozenset[str]:
        """The transport sessions on this node subscribed to ``uri``."""
        return frozenset(self.subscriptions.get(uri, ()))

    def for_stream(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` as ``conn`` carries it: a listen stream tags it with its subscription."""
        wanted = self.listeners.get(conn)
        return message if wanted is None else _tagged(message, wanted["_id"])

    def notify_resource_updated(self, uri: str) -> int:
        """Send notifications/resources/updated to each subscriber's stream (one stream per
        subscriber, MCP-R6): at once to the streams on this node (their count is returned), and
        through the outbox to every other subscriber, wherever its stream is or next opens."""
        message = notification("notifications/resources/updated", {"uri": uri})
        done: list[RelayAddress] = []
        for session_id in self.subscriptions.get(uri, ()):
            conn = self._session_stream(session_id)
            if conn is not None:
                self.emit(conn, message)
                done.append(RelayAddress.session(session_id))
        for conn, wanted in self.listeners.items():
            if uri in (wanted.get("resourceSubscriptions") or ()):
                self.emit(conn, _tagged(message, wanted["_id"]))
                done.append(RelayAddress.listen(conn.id))
        if self.relay is not None:
            self.relay.publish_to_subscribers(uri, message, exclude=done)
        return len(done)

    def notify_list_changed(self, kind: str) -> int:
        """``notifications/{kind}/list_changed`` (tools, prompts, resources) to every session
        stream and every listen stream that asked for it on this node."""
        message = notification(f"notifications/{kind}/list_changed", {})
        sent = 0
        for conn in [*self.get_streams.values(), *self.legacy_streams.values()]:
            if conn.closed_reason is None:
                self.emit(conn, message)
                sent += 1
        for conn, wanted in self.listeners.items():
            if wanted.get(f"{kind}ListChanged"):
                self.emit(conn, _tagged(message, wanted["_id"]))
                sent += 1
        return sent

    def tier_changed(self, user_id: str, tier: str) -> int:
        """A user's tier changed: what the user may list changes with it, so each list whose
        items depend on the tier gets ``notifications/<kind>/list_changed`` on the user's session
        and listen streams on this node (every node is told, the notifier calls each). Returns
        how many were sent."""
        app = self.dispatcher.app
        sent = 0
        for kind in ("tools", "prompts", "resources"):
            if not app.tiered(kind):
                continue
            message = notification(f"notifications/{kind}/list_changed", {})
            for conn in [*self.get_streams.values(), *self.legacy_streams.values()]:
                if conn.closed_reason is None and conn.session.context.user_id == user_id:
                    self.emit(conn, message)
                    sent += 1
            for conn, wanted in self.listeners.items():
                if (
                    wanted.get(f"{kind}ListChanged")
                    and conn.closed_reason is None
                    and conn.session.context.user_id == user_id
                ):
                    self.emit(conn, _tagged(message, wanted["_id"]))
                    sent += 1
        log.info("tier_lists_changed", user_id=user_id, tier=tier, streams=sent)
        return sent

    def check_origin(self, scope: Scope) -> None:
        """MCP-R2: a present Origin must be allowed: the public URL's own, a configured one, or
        a loopback one when none is configured."""
        origin = header(scope, b"origin")
        if origin is None or self.origin_allowed(origin):
            return
        origin = origin.rstrip("/")
        body = {"error": "forbidden", "error_description": f"origin {origin!r} is not allowed"}
        raise Reply(403, body)

    def origin_allowed(self, origin: str) -> bool:
        """The rule of ``check_origin`` (and of CORS, server/_cors.py) for one Origin value."""
        origin = origin.rstrip("/")
        if origin in self.allowed_origins or origin.lower() == self.own_origin:
            return True
        try:
            host = urllib.parse.urlsplit(origin).hostname
        except ValueError:  # a malformed Origin is not an allowed one
            host = None
        return not self.allowed_origins and host in ("localhost", "127.0.0.1", "::1")

    async def authenticate(self, scope: Scope) -> tuple[Any, UserSession]:
        """MCP-R18: every request, each stream's opening one included, carries a valid token."""
        try:
            principal = await self.rs.authenticate(scope)
        except AuthError as exc:
            raise Reply(exc.status, exc.body, exc.headers) from None
        try:
            session = await self.sessions.session_for(principal)
        except StoreUnavailable:
            raise _unavailable() from None
        except SessionRestarting:
            raise Reply(
                503,
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the session is restarting",
                },
                [(b"retry-after", b"1")],
            ) from None
        session.touch()
        return principal, session

    def reauthorize(self, exc: AuthenticationRequiredError, path: str | None = None) -> Reply:
        """The one answer to AuthenticationRequiredError, wherever it is raised: 401 with the
        challenge (``error="invalid_token"``, ``resource_metadata``) that starts re-authorization
        (MCP-R21, R23). The grant's verified tokens leave the cache."""
        if exc.grant_id is not None:
            self.rs.forget_grant(exc.grant_id)
        err = self.rs.challenge("invalid_token", str(exc), path=path)
        return Reply(err.status, err.body, err.headers)

    async def answer(
        self, send: Send, handler: Callable[[], Awaitable[None]], path: str | None = None
    ) -> None:
        """Run one endpoint's handler (at ``path``) and send the error answer it raised, if any."""
        try:
            await handler()
        except (Reply, AuthenticationRequiredError, ClientGone, BaseExceptionGroup) as exc:
            await self._answer_error(send, exc, path)

    async def _answer_error(
        self,
        send: Send,
        exc: Reply | AuthenticationRequiredError | ClientGone | BaseExceptionGroup[Any],
        path: str | None = None,
    ) -> None:
        """The answer to what a handler raised; a group that holds anything but answers is
        raised again."""
        if isinstance(exc, ClientGone):
            return
        if isinstance(exc, BaseExceptionGroup):
            # a Reply raised inside a request's nursery arrives wrapped in a group
            answers = exc.subgroup((Reply, AuthenticationRequiredError))
            rest = exc.subgroup(
                lambda e: (
                    not isinstance(e, (Reply, AuthenticationRequiredError, BaseExceptionGroup))
                )
            )
            if answers is None or rest is not None:
                raise exc
            await self._send_error(send, _first_leaf(answers), path)
            return
        await self._send_error(send, exc, path)

    async def _send_error(
        self, send: Send, exc: Reply | AuthenticationRequiredError, path: str | None
    ) -> None:
        reply = self.reauthorize(exc, path) if isinstance(exc, AuthenticationRequiredError) else exc
        await send_json(send, reply.status, reply.body, reply.headers)

    async def open_stream(
        self,
        session: UserSession,
        kind: Any,
        session_id: str | None,
        stream_id: str | None = None,
        *,
        token_expires_at: float | None = None,
    ) -> Connection:
        """Start a connection actor for a stream. A long-lived one (GET, listen, legacy) passes
        the expiry of the access token that opened it: ``stream_token_grace`` seconds past it, the
        stream ends with a reconnect hint (the client comes back with a fresh token)."""
        reconnect_at = None
        if token_expires_at is not None:
            left = token_expires_at + self.stream_token_grace - time.time()
            reconnect_at = trio.current_time() + max(0.0, left)
        try:
            return await session.open_connection(
                kind=kind,
                session_id=session_id,
                stream_id=stream_id,
                reconnect_at=reconnect_at,
                max_streams=self.usage.max_streams(session.context.tier),
            )
        except MaxChildrenError:
            limit = self.sessions.policy.max_connections
            msg = f"this session already holds its maximum of {limit} streams"
            raise too_many(None, msg, STREAM_RETRY_AFTER, {"limit": limit}) from None
        except StreamLimitReached as exc:
            msg = f"the {session.context.tier} tier allows {exc.limit} open streams per account; close one first"
            raise too_many(None, msg, STREAM_RETRY_AFTER, {"limit": exc.limit}) from None

    async def transport(self, principal: Any, session_id: str) -> TransportSession:
        """MCP-R10/R20: an unknown, ended or foreign session id is 404, never anything else."""
        try:
            ts = await self.sessions.transport_session(principal, session_id)
        except StoreUnavailable:
            raise _unavailable() from None
        if ts is None:
            raise rpc_reply(404, None, INVALID_REQUEST, "Session not found")
        return ts

    async def read_message(self, receive: Receive) -> dict[str, Any]:
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            msg = f"the body exceeds max_body_bytes ({self.max_body} bytes)"
            raise rpc_reply(413, None, INVALID_REQUEST, msg) from None
        try:
            return parse_message(body)
        except InvalidMessage as exc:
            raise Reply(400, error_response(exc.request_id, exc)) from None

    async def client_message(self, key: str, user_id: str, message: dict[str, Any]) -> None:
        """A response to a server request, or a notification (cancellation) from the client.

        A response to a request this node did not send goes to the outbox: the node whose
        handler awaits it claims it (server/_relay.py). Only an id of the form this server gives
        its requests travels, and a user's unclaimed answers there are bounded (429 beyond).
        """
        if "method" not in message:
            if self.resolve(message) or self.relay is None:
                return
            if not SERVER_REQUEST_ID.fullmatch(str(message.get("id"))):
                log.debug("answer_dropped", reason="no server request has such an id")
                return
            try:
                forwarded = await self.relay.forward_reply(message, user_id)
            except StoreUnavailable:
                raise _unavailable() from None
            if not forwarded:
                limit = self.relay.policy.max_replies
                msg = f"too many answers to server requests awaiting delivery (max_replies={limit})"
                raise too_many(None, msg, 1)
            return
        if message["method"] == "notifications/cancelled":
            request_id = message["params"].get("requestId")
            if not isinstance(request_id, (str, int)):  # no request has such an id
                return
            exchange = self.inflight.get((key, request_id))
            if exchange is not None:
                log.info("request_cancelled", request_id=str(exchange.request_id))
                exchange.cancel_scope.cancel()

    def resolve(self, message: dict[str, Any]) -> bool:
        """Hand a client's response to the server request awaiting it here; False if none does."""
        slot = self.pending.get(str(message.get("id")))
        if slot is None:
            return False
        slot[1].update(message)
        slot[0].set()
        return True

    def record_usage(
        self, user: UserContext, method: str, params: dict[str, Any], outcome: str, started: float
    ) -> None:
        """One request's usage event (both transports), ``started`` in Trio time."""
        name = params.get("name") if method == "tools/call" else None
        self.usage.record(user, method, name, outcome, trio.current_time() - started)

    # -- the ASGI entry ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # routes and answers in one frame: an idle GET stream keeps this await chain alive for
        # as long as it is open (docs/benchmarks.md, idle-streams)
        try:
            self.check_origin(scope)
            method = scope["method"]
            if method == "POST":
                await self._post(scope, receive, send)
            elif method == "GET":
                await self._get(scope, receive, send)
            elif method == "DELETE":
                await self._delete(scope, send)
            else:
                body = {"error": "method_not_allowed", "error_description": f"{method} /mcp"}
                raise Reply(405, body, [(b"allow", b"GET, POST, DELETE")])
        except (Reply, AuthenticationRequiredError, ClientGone, BaseExceptionGroup) as exc:
            await self._answer_error(send, exc)

    # -- POST /mcp -------------------------------------------------------------------------------------

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = header(scope, b"content-type") or ""
        if not content_type.startswith("application/json"):
            msg = f"Content-Type must be application/json, got {content_type!r}"
            raise rpc_reply(415, None, INVALID_REQUEST, msg)
        principal, session = await self.authenticate(scope)
        message = await self.read_message(receive)
        params: dict[str, Any] = message.get("params") or {}
        meta = params.get("_meta")
        if (
            (isinstance(meta, dict) and META_VERSION in meta)
            or header(scope, VERSION_HEADER) in _ONLY_2026
            or message.get("method") in _METHODS_2026
        ):
            await self._post_2026(scope, receive, send, principal, session, message, meta)
            return
        method = message.get("method")
        request_id = message.get("id")
        accept = header(scope, b"accept") or ""
        if (
            "id" in message
            and method is not None
            and not ("application/json" in accept and "text/event-stream" in accept)
        ):
            msg = "Accept must list application/json and text/event-stream (MCP-R3)"
            raise rpc_reply(406, request_id, INVALID_REQUEST, msg)
        if method == "initialize":
            await self._initialize(send, session, request_id, params)
            return
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            msg = "Mcp-Session-Id is required after initialize (MCP-R9)"
            raise rpc_reply(400, request_id, INVALID_REQUEST, msg)
        ts = await self.transport(principal, session_id)
        version = header(scope, VERSION_HEADER) or DEFAULT_2025
        if version not in SUPPORTED_2025:
            msg = f"unsupported MCP-Protocol-Version {version!r}; supported: {', '.join(SUPPORTED_2025)}"
            raise rpc_reply(400, request_id, INVALID_REQUEST, msg)
        if method is None or "id" not in message:
            await self.client_message(ts.session_id, ts.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        await self.run_request(
            send,
            receive,
            session,
            session.context_for(ts.session_id),
            message,
            key=ts.session_id,
            session_id=ts.session_id,
            log_level=self.log_levels.get(ts.session_id, ts.log_level),
            stream_ok=True,
            client_capabilities=ts.capabilities,
        )

    async def _initialize(
        self, send: Send, session: UserSession, request_id: Any, params: dict[str, Any]
    ) -> None:
        result = self.dispatcher.initialize_result(params.get("protocolVersion"))
        client_info = params.get("clientInfo")
        capabilities = params.get("capabilities")
        session_id = await self.new_transport_session(
            session,
            request_id,
            protocol_version=result["protocolVersion"],
            client_info=client_info if isinstance(client_info, dict) else {},
            capabilities=capabilities if isinstance(capabilities, dict) else {},
        )
        await send_json(
            send, 200, result_response(request_id, result), [(SESSION_HEADER, session_id.encode())]
        )

    async def new_transport_session(
        self,
        session: UserSession,
        request_id: Any,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
    ) -> str:
        """A new transport session (``initialize``, a legacy ``/sse`` stream) within the tier's
        limits, keyed by user: ``initialize_per_minute`` and ``max_sessions`` live at once.
        Past either: 429 with Retry-After and a JSON-RPC error naming the limit; nothing stored."""
        user = session.context
        try:
            self.usage.check_initialize(user.user_id, user.tier)
        except RateLimited as exc:
            limit = self.usage.limit(user.tier).initialize_per_minute
            msg = (
                f"the {user.tier} tier allows {limit} new MCP sessions per minute per account "
                f"(initialize_per_minute); retry after {exc.retry_after}s"
            )
            data = {"limit": "initialize_per_minute", "value": limit}
            raise too_many(request_id, msg, exc.retry_after, data) from None
        try:
            return await self.sessions.create_transport_session(
                session,
                protocol_version=protocol_version,
                client_info=client_info,
                capabilities=capabilities,
                max_sessions=self.usage.max_sessions(user.tier),
            )
        except StoreUnavailable:
            raise _unavailable() from None
        except SessionLimitReached as exc:
            msg = (
                f"the {user.tier} tier allows {exc.limit} live MCP sessions per account "
                "(max_sessions); end one with DELETE, or wait until an idle one expires"
            )
            data = {"limit": "max_sessions", "value": exc.limit}
            raise too_many(request_id, msg, SESSION_RETRY_AFTER, data) from None

    async def run_request(
        self,
        send: Send,
        receive: Receive,
        session: UserSession,
        user: UserContext,
        message: dict[str, Any],
        *,
        key: str,
        session_id: str | None,
        log_level: str | None,
        stream_ok: bool,
        stateless: bool = False,
        client_capabilities: Any = None,
    ) -> None:
        """Run one request and answer it: JSON, or SSE once the handler sends something first."""
        method: str = message["method"]
        request_id = message["id"]
        params: dict[str, Any] = message["params"]
        if len(self.inflight) >= self.max_inflight:
            raise _unavailable(f"too many requests in flight (max_inflight={self.max_inflight})")
        await self.count(user, method, request_id)
        exchange = Exchange(
            self, request_id, session_id=session_id, user_id=user.user_id, log_level=log_level
        )
        exchange.session = session  # handlers reach the upstream token through it
        exchange.stateless = stateless
        exchange.grant_id = user.grant_id
        if isinstance(client_capabilities, dict):
            exchange.client_capabilities = client_capabilities
        provided = params.get("inputResponses") if stateless else None
        if isinstance(provided, dict):
            exchange.provided = dict(provided)
        started = trio.current_time()
        slot = (key, request_id)
        self.inflight[slot] = exchange

        async def run() -> None:
            outcome = "ok"
            try:
                with exchange.cancel_scope:
                    try:
                        try:
                            result = await self.dispatcher.call(user, method, params, exchange)
                        except TierRefused as exc:  # a result all the same (docs/protocol.md)
                            outcome = outcome_of(exc)
                            result = exc.result
                    except RpcError as exc:
                        outcome = outcome_of(exc)
                        exchange.finish(error_response(exchange.request_id, exc))
                    except ScopeRequired as exc:
                        outcome = outcome_of(exc)
                        exchange.deny(exc)
                    except AuthenticationRequiredError as exc:
                        outcome = outcome_of(exc)
                        if not exchange.attached.is_set():
                            raise  # answered 401 with the challenge, like any other request
                        msg = f"authentication required: {exc}"
                        exchange.finish(
                            error_response(exchange.request_id, RpcError(INVALID_REQUEST, msg))
                        )
                    else:
                        if stateless:
                            result = stamp_2026(method, result, self.dispatcher.server_meta)
                        exchange.finish(result_response(exchange.request_id, result))
                if exchange.cancel_scope.cancelled_caught:
                    outcome = "cancelled"
                    exchange.cancelled()
            finally:
                if self.inflight.get(slot) is exchange:
                    del self.inflight[slot]
                # resumption after this point reads the stored events
                self.live_streams.pop((session_id or "", exchange.stream_id), None)
                self.record_usage(user, method, params, outcome, started)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await self._answer(send, receive, session, exchange, user, stream_ok=stream_ok)
        finally:
            if self.inflight.get(slot) is exchange:
                del self.inflight[slot]

    async def _answer(
        self,
        send: Send,
        receive: Receive,
        session: UserSession,
        exchange: Exchange,
        user: UserContext,
        *,
        stream_ok: bool,
    ) -> None:
        """Answer the HTTP request with what the handler produces: JSON, or an SSE stream."""
        await exchange.decided.wait()
        if exchange.buffer and stream_ok:
            await self._reply_stream(send, receive, session, exchange, user, exchange.stateless)
            return
        while exchange.final is None and exchange.denied is None:
            exchange.decided = trio.Event()
            await exchange.decided.wait()
        if exchange.denied is not None:
            err = self.rs.insufficient_scope(exchange.denied.missing, user.scopes)
            err.body["error_description"] = str(exchange.denied)
            raise Reply(403, err.body, err.headers)
        final = exchange.final or {}
        error = final.get("error")
        status = 400 if isinstance(error, dict) and error.get("code") == MISSING_CAPABILITY else 200
        await send_json(send, status, final)

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
        """A 2026 retry carrying ``inputResponses`` and a ``requestState`` parked on this node:
        the parked handler continues and its next output answers this request."""
        exchange = self.parked.get(state) if isinstance(state, str) else None
        session = exchange.session if exchange is not None else None
        if exchange is None or session is None or exchange.grant_id != grant_id:
            msg = "requestState is not one this server issued to this caller, or it expired"
            await send_json(
                send, 200, error_response(message.get("id"), RpcError(INVALID_PARAMS, msg))
            )
            return
        del self.parked[state]
        exchange.state = None
        exchange.rebind(message["id"])
        exchange.answer(message["params"].get("inputResponses"))
        if exchange.asked:  # SEP-2322: re-request what is missing rather than fail
            exchange.ask_again()
        await self._answer(send, receive, session, exchange, session.context, stream_ok=stream_ok)

    async def count(self, user: UserContext, method: str, request_id: Any) -> None:
        """The tier's limits, keyed by user (MCP-R19 aside, a reconnect resets nothing): the
        request rate, and for tools/call the quota per period; 429 with Retry-After past them."""
        if method in _UNCOUNTED:
            return
        try:
            # the journal at its bound (a long outage): refuse before doing work whose usage
            # record could not be kept
            self.store.check_room()
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from None
        try:
            self.usage.check(user.user_id, user.tier)
            if method == "tools/call":
                await self.usage.check_tool_call(user.user_id, user.tier)
        except QuotaExceeded as exc:
            msg = f"tool-call quota of the {user.tier} tier ({exc.quota}) used up; retry after {exc.retry_after}s"
            data = {"quota": str(exc.quota)}
            raise too_many(request_id, msg, exc.retry_after, data) from None
        except RateLimited as exc:
            msg = f"rate limit of the {user.tier} tier exceeded; retry after {exc.retry_after}s"
            raise too_many(request_id, msg, exc.retry_after) from None

    async def _reply_stream(
        self,
        send: Send,
        receive: Receive,
        session: UserSession,
        exchange: Exchange,
        user: UserContext,
        cancel_on_disconnect: bool,
    ) -> None:
        exchange.stream_id = REQUEST_STREAM + secrets.token_hex(8)
        conn = await self.open_stream(session, "post", exchange.session_id, exchange.stream_id)
        resumable = exchange.session_id is not None
        priming = exchange.next_id() if resumable else None
        if resumable and exchange.final is None and exchange.denied is None:  # still running
            self.live_streams[(exchange.session_id or "", exchange.stream_id)] = exchange
        exchange.attach(conn)
        if exchange.close_requested:
            await conn.close(CloseReason.RECONNECT)

        def gone() -> None:
            if cancel_on_disconnect:  # MCP-R15; in the 2025 era a disconnect is no cancel (R4)
                exchange.cancel_scope.cancel()

        await self.pump(conn, send, receive, priming_id=priming, on_disconnect=gone)

    # -- SSE pumping ----------------------------------------------------------------------------------

    async def pump(
        self,
        conn: Connection,
        send: Send,
        receive: Receive | None,
        *,
        priming_id: str | None,
        on_disconnect: Callable[[], None] | None = None,
        get_stream_of: str | None = None,
    ) -> None:
        """Write a connection's outbox to the HTTP response until its final event, until the
        stream is closed, or until the client leaves. ``get_stream_of``: the transport session
        whose GET stream this is, forgotten as it ends."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            if priming_id is not None:  # MCP-R4: an id to resume from, how soon to come back
                priming = encode_event(StreamEvent(event_id=priming_id, retry_ms=RETRY_MS))
                await send({"type": "http.response.body", "body": priming, "more_body": True})
            outbox = conn.outbox
            end = self.fast_path.for_send(send, receive)
            if end is not None:
                outbox.ender = end.end
                outbox.nudge = end.nudge
            while True:
                event = outbox.take()
                if event is None:
                    if outbox.ended and end is not None:  # written by whoever ended the stream
                        await end.flush()
                        return
                    if outbox.closed:
                        break
                    if not await outbox.wait(receive) and not outbox.ended:  # the client left
                        # before a checkpoint: the close ends the pump
                        if on_disconnect is not None:
                            on_disconnect()
                        await conn.close(CloseReason.CLIENT_DISCONNECTED)
                        return
                    continue
                body = encode_event(event)
                if event.final:
                    # with the end of the body, at once, before anything is torn down
                    conn.finish(CloseReason.COMPLETE)  # keeps the reason of a close that came first
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if get_stream_of is not None and self.get_streams.get(get_stream_of) is conn:
                del self.get_streams[get_stream_of]

    # -- GET /mcp, DELETE /mcp ----------------------------------------------------------------------------

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "text/event-stream" not in (header(scope, b"accept") or ""):
            body = {
                "error": "not_acceptable",
                "error_description": "Accept must list text/event-stream (MCP-R5)",
            }
            raise Reply(406, body)
        principal, session = await self.authenticate(scope)
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise rpc_reply(400, None, INVALID_REQUEST, "Mcp-Session-Id is required (MCP-R9)")
        ts = await self.transport(principal, session_id)
        last = header(scope, b"last-event-id")
        if last:
            await self._resume(send, receive, principal, session, ts, last)
            return
        existing = self.get_streams.get(ts.session_id)
        if existing is not None and existing.closed_reason is None:
            msg = "this session already has a GET stream; resume it with Last-Event-ID"
            raise rpc_reply(409, None, INVALID_REQUEST, msg)
        conn = await self.open_stream(
            session, "get", ts.session_id, token_expires_at=principal.expires_at
        )
        self._serve_get(conn, ts.session_id)
        await self.pump(
            conn, send, receive, priming_id=conn.next_event_id(), get_stream_of=ts.session_id
        )

    def _serve_get(self, conn: Connection, session_id: str) -> None:
        """``conn`` becomes the session's GET stream (the pump forgets it as it ends)."""
        self.get_streams[session_id] = conn
        if self.relay is not None:  # what waited in the outbox for this session's stream
            self.relay.wake(RelayAddress.session(session_id))

    async def _resume(
        self,
        send: Send,
        receive: Receive,
        principal: Any,
        session: UserSession,
        ts: TransportSession,
        last: str,
    ) -> None:
        """MCP-R7: replay only the disconnected stream's messages after ``Last-Event-ID``."""
        stream_id, _, seq_text = last.rpartition(":")
        if not stream_id or not seq_text.isdigit():
            msg = f"Last-Event-ID {last[:80]!r} is not an event id of this server"
            raise rpc_reply(400, None, INVALID_REQUEST, msg)
        after = int(seq_text)
        exchange = self.live_streams.get((ts.session_id, stream_id))
        if exchange is not None:  # the request still runs on this node
            conn = await self.open_stream(session, "post", ts.session_id, stream_id)
            old = exchange.conn
            exchange.resume(conn, after)
            if old is not None and old is not conn:
                await old.close(CloseReason.RESUMED)
            await self.pump(conn, send, receive, priming_id=None)
            return
        try:
            await self.store.write()  # what this node queued is committed before reading it back
            replay = await stream_events_after(self.store, ts.session_id, stream_id, after)
        except StoreUnavailable:
            raise _unavailable() from None
        ends = any(_is_response(payload) for _, payload in replay)
        if not ends and stream_id.startswith(REQUEST_STREAM) and self.relay is not None:
            # the request still runs on another node (or ended without its response there):
            # this stream follows what that node stores for it, until the response
            conn = await self.open_stream(session, "post", ts.session_id, stream_id)
            conn._seq = after
            async with self.relay.following(conn):
                await self.pump(conn, send, receive, priming_id=None)
            return
        conn = await self.open_stream(
            session,
            "post" if ends else "get",
            ts.session_id,
            stream_id,
            token_expires_at=None if ends else principal.expires_at,
        )
        conn._seq = max([after, *(seq for seq, _ in replay)])
        for seq, payload in replay:
            conn.send_nowait(
                StreamEvent(payload, event_id=f"{stream_id}:{seq}", final=_is_response(payload))
            )
        if ends:  # a request's stream: it ends with the response
            await self.pump(conn, send, receive, priming_id=None)
        else:  # the session's GET stream continues where it left off
            self._serve_get(conn, ts.session_id)
            await self.pump(conn, send, receive, priming_id=None, get_stream_of=ts.session_id)

    async def _delete(self, scope: Scope, send: Send) -> None:
        principal, _session = await self.authenticate(scope)
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise rpc_reply(400, None, INVALID_REQUEST, "Mcp-Session-Id is required (MCP-R9)")
        try:
            ended = await self.sessions.end_transport_session(principal, session_id)
        except StoreUnavailable:
            raise _unavailable() from None
        if not ended:
            raise rpc_reply(404, None, INVALID_REQUEST, "Session not found")
        for uri in list(self.subscriptions):
            self._unsubscribe_here(session_id, uri)
        self.store.write_nowait(forget_subscriptions_op(RelayAddress.session(session_id)))
        self.log_levels.pop(session_id, None)
        await send_response(send, 204, b"", b"application/json")

    # -- 2026-07-28 stateless requests ---------------------------------------------------------------------

    async def _post_2026(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Any,
        session: UserSession,
        message: dict[str, Any],
        meta: Any,
    ) -> None:
        request_id = message.get("id")
        if not isinstance(meta, dict) or META_VERSION not in meta:
            msg = f"a {V2026} message carries params._meta with {META_VERSION!r}"
            raise rpc_reply(400, request_id, INVALID_PARAMS, msg)
        version = meta[META_VERSION]
        sent_header = header(scope, VERSION_HEADER)
        if sent_header != version:
            msg = f"the MCP-Protocol-Version header ({sent_header!r}) must equal _meta's protocol version ({version!r})"
            raise rpc_reply(400, request_id, HEADER_MISMATCH, msg)
        if version not in SUPPORTED_VERSIONS:
            raise rpc_reply(
                400,
                request_id,
                UNSUPPORTED_VERSION,
                f"unsupported protocol version {version!r}",
                {"supported": list(SUPPORTED_VERSIONS), "requested": version},
            )
        if "id" in message and "method" in message and not isinstance(meta.get(META_CAPS), dict):
            msg = f"a {V2026} request carries params._meta with {META_CAPS!r}"
            raise rpc_reply(400, request_id, INVALID_PARAMS, msg)
        method = message.get("method")
        if method is None:  # a response to a server request
            await self.client_message(f"grant:{principal.grant_id}", principal.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        sent_method = (header(scope, b"mcp-method") or "").strip() or None
        if sent_method != method:
            msg = (
                f"the Mcp-Method header ({sent_method!r}) must equal the body's method ({method!r})"
            )
            raise rpc_reply(400, request_id, HEADER_MISMATCH, msg)
        name_key = _NAMED.get(method)
        if name_key is not None:
            sent_name = (header(scope, b"mcp-name") or "").strip() or None
            name = message["params"].get(name_key)
            if sent_name != name:
                msg = f"the Mcp-Name header ({sent_name!r}) must equal the body's {name_key} ({name!r})"
                raise rpc_reply(400, request_id, HEADER_MISMATCH, msg)
        if method == "tools/call":
            problem = self._param_headers(scope, message["params"])
            if problem is not None:
                raise rpc_reply(400, request_id, HEADER_MISMATCH, problem)
        if "id" not in message:
            await self.client_message(f"grant:{principal.grant_id}", principal.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        if method == "server/discover":
            result = stamp_2026(
                method, self.dispatcher.discover_result(), self.dispatcher.server_meta
            )
            await send_json(send, 200, result_response(request_id, result))
            return
        if method == "subscriptions/listen":
            await self._listen(send, receive, principal, session, message)
            return
        if not self.dispatcher.knows(method) or method in _REMOVED_2026:
            raise rpc_reply(404, request_id, METHOD_NOT_FOUND, f"method {method!r} not found")
        state = message["params"].get("requestState")
        if state is not None:
            stream_ok = "text/event-stream" in (header(scope, b"accept") or "")
            owner = state.partition(".")[2] if isinstance(state, str) else ""
            if owner and owner != self.sessions.node_id and self.relay is not None:
                # the request awaiting this input is parked on another node: it continues there
                forward = {
                    "kind": "retry",
                    "state": state,
                    "grant_id": str(principal.grant_id),
                    "message": message,
                    "stream_ok": stream_ok,
                }
                try:
                    if await self.relay.forward(owner, principal.user_id, forward, send, receive):
                        return
                except StoreUnavailable:
                    raise _unavailable() from None
            await self.retry(state, principal.grant_id, message, send, receive, stream_ok=stream_ok)
            return
        level = meta.get(META_LOG_LEVEL)
        await self.run_request(
            send,
            receive,
            session,
            session.context,
            message,
            key=f"grant:{principal.grant_id}",
            session_id=None,
            log_level=level if isinstance(level, str) else None,
            stream_ok="text/event-stream" in (header(scope, b"accept") or ""),
            stateless=True,
            client_capabilities=meta.get(META_CAPS),
        )

    def _param_headers(self, scope: Scope, params: dict[str, Any]) -> str | None:
        """SEP-2243: an argument whose schema names an ``x-mcp-header`` travels in
        ``Mcp-Param-<name>`` too (literal, or ``=?base64?…?=``) and must equal the body."""
        tool = self.dispatcher.app.tools.get(params.get("name"))  # type: ignore[arg-type]
        if tool is None:
            return None
        arguments = params.get("arguments")
        arguments = arguments if isinstance(arguments, dict) else {}
        for prop, schema in (tool.input_schema.get("properties") or {}).items():
            name = schema.get("x-mcp-header") if isinstance(schema, dict) else None
            if not isinstance(name, str):
                continue
            sent = header(scope, b"mcp-param-" + name.lower().encode("latin-1"))
            value = arguments.get(prop)
            if value is None:
                if sent is not None:
                    return f"Mcp-Param-{name} was sent but argument {prop!r} was not"
                continue
            if sent is None:
                return f"argument {prop!r} needs the header Mcp-Param-{name}"
            decoded = _header_value(sent.strip())
            if decoded is None:
                return f"Mcp-Param-{name} is not valid =?base64?...?= encoding"
            expected = json.dumps(value) if isinstance(value, bool) else str(value)
            if decoded != expected:
                return f"Mcp-Param-{name} ({decoded!r}) must equal argument {prop!r} ({expected!r})"
        return None

    async def _listen(
        self,
        send: Send,
        receive: Receive,
        principal: Any,
        session: UserSession,
        message: dict[str, Any],
    ) -> None:
        """MCP-R16: a long-lived stream of the notifications the client asked for."""
        requested = message["params"].get("notifications")
        if not isinstance(requested, dict):
            raise rpc_reply(
                400, message["id"], -32602, "subscriptions/listen needs params.notifications"
            )
        honoured: dict[str, Any] = {k: True for k in _LISTEN_KEYS if requested.get(k) is True}
        uris = requested.get("resourceSubscriptions")
        if isinstance(uris, list):
            honoured["resourceSubscriptions"] = [u for u in uris if isinstance(u, str)][:1000]
        conn = await self.open_stream(
            session, "listen", None, token_expires_at=principal.expires_at
        )
        target = RelayAddress.listen(conn.id)
        if honoured.get("resourceSubscriptions"):
            # committed before the acknowledgement: from then on, an update published on any
            # node finds this stream
            try:
                await self.store.write(
                    subscribe_op(honoured["resourceSubscriptions"], target, principal.user_id)
                )
            except StoreUnavailable:
                await conn.close(CloseReason.DATABASE_UNREACHABLE)
                raise _unavailable() from None
        self.listeners[conn] = {**honoured, "_id": message["id"]}
        ack = {"notifications": honoured, "_meta": {META_SUBSCRIPTION: message["id"]}}
        self.emit(conn, notification("notifications/subscriptions/acknowledged", ack))
        try:
            await self.pump(conn, send, receive, priming_id=None)
        finally:
            self.listeners.pop(conn, None)
            if honoured.get("resourceSubscriptions"):
                self.store.write_nowait(forget_subscriptions_op(target))


def _header_value(raw: str) -> str | None:
    """A header value as sent: ``=?base64?…?=`` decoded strictly, anything else literally."""
    if not (raw.startswith("=?base64?") and raw.endswith("?=")):
        return raw
    try:
        return base64.b64decode(raw[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _tagged(message: dict[str, Any], subscription_id: Any) -> dict[str, Any]:
    """A notification on a listen stream names its subscription (the listen request's id)."""
    params = {**message["params"], "_meta": {META_SUBSCRIPTION: subscription_id}}
    return {**message, "params": params}


def _is_response(payload: Any) -> bool:
    return isinstance(payload, dict) and "method" not in payload and "id" in payload
