"""One request's outbound side, the table of server requests, and the answers a request path
raises (``Reply``): what every transport shares (streamable HTTP in both eras, legacy SSE).

An ``Exchange`` is built with everything it needs and a ``ReplyMode`` that says how its messages
travel. The ``ServerRequests`` table owns the server requests awaiting a client's answer and the
2026-07-28 requests parked until their retry; nothing else writes it. What an exchange needs of
the transport it runs on is the narrow ``Outlet``.
"""

from __future__ import annotations

import collections
import enum
import re
import secrets
import types
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
import trio

from actors import (
    AuthenticationRequiredError,
    CloseReason,
    Connection,
    StreamEvent,
    UserContext,
    UserSession,
)
from server.http import unavailable
from server.mcp._dispatch import LOG_LEVELS, ScopeRequired, TierRefused
from server.mcp._jsonrpc import (
    INVALID_REQUEST,
    MISSING_CAPABILITY,
    REQUEST_CANCELLED,
    REQUEST_TIMEOUT,
    RpcError,
    error_response,
    notification,
    request,
    result_response,
)

__all__ = [
    "Exchange",
    "Outlet",
    "Reply",
    "ReplyMode",
    "ServerRequests",
    "outcome_of",
    "result_outcome",
    "rpc_reply",
    "too_many",
    "unavailable_reply",
]

log = structlog.get_logger("mcp_http")

SERVER_REQUEST_ID = re.compile(r"s-[0-9a-f]{16}")  # what server_request_id() gives
TAIL = 256  # events of a live request stream kept in memory, for resumption on this node
_NEEDS = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def server_request_id() -> str:
    """The id of a server request on a stateful stream (sampling, elicitation, roots)."""
    return f"s-{secrets.token_hex(8)}"


# -- answers raised out of a request path --------------------------------------------------------


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


def unavailable_reply(description: str = "the database is unreachable; retry shortly") -> Reply:
    """503 with Retry-After: the database is unreachable, or a bound is reached for now."""
    return Reply(503, *unavailable(description))


def outcome_of(
    exc: RpcError | ScopeRequired | TierRefused | AuthenticationRequiredError,
) -> str:
    """A request's outcome for usage from what its handler raised: the one mapping, for every
    transport (a request that ends normally is ``ok``, one cancelled ``cancelled``)."""
    if isinstance(exc, (ScopeRequired, TierRefused)):
        return "forbidden"
    if isinstance(exc, AuthenticationRequiredError):
        return "reauth_required"
    return "error"


def result_outcome(result: Any) -> str:
    """A result's outcome for usage: ``tool_error`` for a tool result with ``isError`` (the tool
    failed; the request did not), else ``ok``."""
    return "tool_error" if isinstance(result, dict) and result.get("isError") is True else "ok"


# the parameter that names what a request used, kept in its usage event (docs/operating.md)
USAGE_NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def usage_name(method: str, params: dict[str, Any]) -> str | None:
    """The tool's or prompt's name, or the resource's URI, of a request; None for other methods
    and for a name that is not a string."""
    key = USAGE_NAME_PARAMS.get(method)
    name = params.get(key) if key is not None else None
    return name if isinstance(name, str) else None


# -- the server-request table ----------------------------------------------------------------------


class ServerRequests:
    """Server requests (sampling, elicitation, roots) awaiting the client's answer, by the id
    they travel under, and 2026-07-28 requests parked until the client retries them with
    ``inputResponses``, by ``requestState``. Each table holds at most ``max_pending``."""

    def __init__(self, *, node_id: str, max_pending: int, timeout: float) -> None:
        self.node_id = node_id
        self.max_pending = max_pending
        self.timeout = timeout  # how long a handler waits for the client's answer
        self._pending: dict[str, tuple[trio.Event, dict[str, Any]]] = {}
        self._parked: dict[str, Exchange] = {}

    @property
    def pending(self) -> Mapping[str, tuple[trio.Event, dict[str, Any]]]:
        """A read-only view of the awaited answers, by wire id."""
        return types.MappingProxyType(self._pending)

    @property
    def parked(self) -> Mapping[str, Exchange]:
        """A read-only view of the parked requests, by requestState."""
        return types.MappingProxyType(self._parked)

    def slot(self, wire_id: str) -> tuple[trio.Event, dict[str, Any]]:
        """Await an answer under ``wire_id``: the event set when it arrives, and where it goes."""
        if len(self._pending) >= self.max_pending:
            msg = f"too many server requests awaiting an answer (max_pending={self.max_pending})"
            raise RpcError(INVALID_REQUEST, msg)
        slot: tuple[trio.Event, dict[str, Any]] = (trio.Event(), {})
        self._pending[wire_id] = slot
        return slot

    def drop(self, wire_id: str) -> None:
        self._pending.pop(wire_id, None)

    def awaited(self) -> list[str]:
        """The ids of the server requests whose client answer this node awaits."""
        return list(self._pending)

    def awaits(self, wire_id: str) -> bool:
        return wire_id in self._pending

    def resolve(self, message: dict[str, Any]) -> bool:
        """Hand a client's response to the server request awaiting it; False if none does."""
        slot = self._pending.get(str(message.get("id")))
        if slot is None:
            return False
        slot[1].update(message)
        slot[0].set()
        return True

    def provide(self, wire_id: str, result: dict[str, Any]) -> None:
        """A 2026 retry's answer to one input request."""
        slot = self._pending.get(wire_id)
        if slot is not None:
            slot[1]["result"] = result
            slot[0].set()

    def park(self, exchange: Exchange) -> str:
        """Keep a 2026 request that asked the client for input until its retry arrives; the
        state names this node, so a retry that reaches another node is forwarded here."""
        if len(self._parked) >= self.max_pending:
            msg = f"too many requests awaiting input (max_pending={self.max_pending})"
            raise RpcError(INVALID_REQUEST, msg)
        state = f"{secrets.token_urlsafe(16)}.{self.node_id}"
        self._parked[state] = exchange
        return state

    def unpark(self, state: str) -> Exchange | None:
        return self._parked.pop(state, None)

    def parked_for(self, state: Any) -> Exchange | None:
        return self._parked.get(state) if isinstance(state, str) else None


# -- one request's outbound side --------------------------------------------------------------------


class ReplyMode(enum.Enum):
    """How a request's messages travel."""

    STREAMABLE = "streamable"  # 2025: JSON, or SSE once the handler sends something first
    STATELESS = "stateless"  # 2026-07-28: as STREAMABLE; server requests are input_required
    LEGACY = "legacy"  # every message on the session's legacy SSE stream (the POST got 202)


class Outlet(Protocol):
    """What an exchange needs of the transport it runs on."""

    def emit(self, conn: Connection, message: dict[str, Any], *, final: bool = False) -> None:
        """Send one message on a session's long-lived stream (legacy replies)."""
        ...

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
        """Keep one event of a resumable stream for resumption."""
        ...


class Exchange:
    """The outbound side of one request: JSON until the handler sends something first, then SSE
    (``ReplyMode.LEGACY``: every message on the session's stream).

    Once the stream is open every message gets an event id ``<stream>:<seq>``, is kept in a
    bounded tail (resumption on this node) and, on a 2025 transport session, stored in
    ``stream_events`` (resumption after a restart or on another node). It is the emitter a
    handler's ``Context`` and the dispatcher see.
    """

    def __init__(
        self,
        *,
        request_id: Any,
        mode: ReplyMode,
        user: UserContext,
        session: UserSession,
        session_id: str | None,
        log_level: str | None,
        requests: ServerRequests,
        outlet: Outlet,
        resource_updated: Callable[[str], int],
        client_capabilities: dict[str, Any] | None = None,
        provided: dict[str, Any] | None = None,
        legacy_conn: Connection | None = None,
    ) -> None:
        if (mode is ReplyMode.LEGACY) != (legacy_conn is not None):
            raise ValueError(f"a {mode.value} exchange needs a legacy stream exactly when legacy")
        self.request_id = request_id
        self.mode = mode
        self.session = session  # handlers reach the upstream token through it
        self.session_id = session_id
        self.user_id = user.user_id
        self.grant_id = user.grant_id
        self.log_level = log_level
        self.requests = requests
        self.outlet = outlet
        self._resource_updated = resource_updated
        self.client_capabilities = client_capabilities or {}
        self.provided = dict(provided or {})  # 2026: inputResponses sent without a requestState
        self.legacy_conn = legacy_conn
        self.stateless = mode is ReplyMode.STATELESS
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
        self.asked: dict[str, dict[str, Any]] = {}  # 2026: input requests still unanswered
        self.asked_ids: dict[str, str] = {}
        self.state: str | None = None  # 2026: the requestState the client must echo
        # called when a message is buffered before the reply is decided (the reply becomes a
        # stream): the request runner starts answering then (RequestRunner.run_http)
        self._on_buffered: Callable[[], None] | None = None

    def when_buffered(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` when a message is buffered before the reply is decided (None: stop)."""
        self._on_buffered = callback

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
                slots[key] = (wire_id, self.requests.slot(wire_id))
            if self.stateless:
                self.asked = {k: {"method": m, "params": p} for k, (m, p) in requests.items()}
                self.asked_ids = {k: wire_id for k, (wire_id, _) in slots.items()}
                self.ask_again()
            else:
                for key, (method, params) in requests.items():
                    self._out(request(slots[key][0], method, params))
            with trio.fail_after(self.requests.timeout):
                for _wire_id, (event, _answer) in slots.values():
                    await event.wait()
        except trio.TooSlowError:
            names = ", ".join(m for m, _ in requests.values())
            msg = f"the client did not answer {names} within {self.requests.timeout}s"
            raise RpcError(REQUEST_TIMEOUT, msg) from None
        finally:
            for wire_id, _slot in slots.values():
                self.requests.drop(wire_id)
            self.asked = {}
            if self.state is not None:
                self.requests.unpark(self.state)
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
            self.requests.unpark(self.state)
        self.state = self.requests.park(self)
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
                self.requests.provide(self.asked_ids[key], result)
                del self.asked[key]

    async def resource_updated(self, uri: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._resource_updated(uri)

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
            self.outlet.emit(self.legacy_conn, message)
        elif self.attached.is_set():
            self._event(message, final)
        else:
            if final:
                self.final = message
            else:
                self.buffer.append(message)
                if self._on_buffered is not None:
                    self._on_buffered()
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
            self.outlet.store_event(
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

    def name_stream(self, prefix: str) -> str:
        """The reply becomes a stream: its id, ``prefix`` and random hex."""
        self.stream_id = prefix + secrets.token_hex(8)
        return self.stream_id

    async def settled(self) -> None:
        """Wait until the reply is decided for good: a final message, or a refusal."""
        while self.final is None and self.denied is None:
            self.decided = trio.Event()
            await self.decided.wait()

    def rebind(self, request_id: Any) -> None:
        """The client's retry of a request that asked for input answers on a new HTTP reply
        (the requestState it echoed is spent)."""
        self.state = None
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
