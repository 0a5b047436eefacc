"""The narrow protocols at the MCP transports' seams: what they need of cross-node delivery
(``CrossNode``; the relay in server/cluster/ implements it) and what the relay needs of this
node's transports (``StreamsHere``, ``ForwardedHere``, implemented here)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from actors import Connection, Op, Principal, RelayAddress, StreamEvent
from server.http import Receive, Send

__all__ = ["CrossNode", "ForwardedHere", "StreamsHere"]


class CrossNode(Protocol):
    """What the transports ask of the other nodes: wake the node holding a target when an op
    commits, publish to subscribers elsewhere, hand answers and requests to the node that
    holds their stream or handler, follow a stream another node writes."""

    @property
    def max_replies(self) -> int:
        """A user's answers to server requests that may await their node's claim at once."""
        ...

    def wake(self, target: RelayAddress | None) -> None: ...

    def wake_op(self, target: RelayAddress) -> Op: ...

    def publish_to_subscribers(
        self, uri: str, message: dict[str, Any], *, exclude: list[RelayAddress]
    ) -> None: ...

    async def forward_reply(self, message: dict[str, Any], user_id: str) -> bool: ...

    async def forward_to_stream(
        self, session_id: str, principal: Principal, request: dict[str, Any], send: Send
    ) -> bool: ...

    async def forward(
        self,
        node: str,
        user_id: str,
        request: dict[str, Any],
        send: Send,
        receive: Receive | None,
    ) -> bool: ...

    def following(self, conn: Connection) -> contextlib.AbstractAsyncContextManager[None]: ...


class StreamsHere(Protocol):
    """The relay's port into this node's stream and server-request tables."""

    def stream_sessions(self) -> list[str]:
        """The transport sessions whose GET or legacy stream this node holds."""
        ...

    def session_stream(self, session_id: str) -> Connection | None:
        """The open GET or legacy stream of a transport session, if this node holds it."""
        ...

    def listen_streams(self) -> list[Connection]:
        """The 2026-07-28 listen streams this node holds."""
        ...

    def awaited_answers(self) -> list[str]:
        """The ids of the server requests whose client answer this node awaits."""
        ...

    def awaits_answer(self, request_id: str) -> bool:
        """Whether this node awaits the client's answer to that server request."""
        ...

    def resolve(self, message: dict[str, Any]) -> bool:
        """Hand a client's answer to the server request awaiting it here; False if none does."""
        ...

    def set_subscriptions(
        self, session_ids: Iterable[str], rows: Iterable[tuple[str, str]]
    ) -> None:
        """Replace what this node remembers of these sessions' resource subscriptions."""
        ...

    def hold(
        self, conns: Iterable[Connection]
    ) -> contextlib.AbstractContextManager[list[Connection]]:
        """Hold back new events on ``conns`` while the block sends its own first."""
        ...

    def for_stream(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` as ``conn`` carries it."""
        ...

    def stream_event(
        self, conn: Connection, message: dict[str, Any], event_id: str, *, final: bool = False
    ) -> StreamEvent:
        """The event that carries ``message`` on ``conn``."""
        ...


class ForwardedHere(Protocol):
    """The relay's port for running here what another node forwarded."""

    async def answer(self, send: Send, handler: Callable[[], Awaitable[None]]) -> None:
        """Run ``handler``, answering its refusals and failures on ``send``."""
        ...

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
        """A 2026-07-28 retry of a request parked on this node."""
        ...

    async def handle_forwarded(
        self, principal: Principal, session_id: str, message: dict[str, Any], send: Send
    ) -> None:
        """A message POSTed on another node for a legacy stream this node holds."""
        ...
