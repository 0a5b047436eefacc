"""What the 2025-era transport sessions asked for: resource subscriptions and log levels, here and
in their rows (an update or a retry through another node finds them there)."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from actors import (
    RelayAddress,
    Store,
    StoreUnavailable,
    forget_subscriptions_op,
    log_level_op,
    outbox_wake_op,
    subscribe_session_op,
    unsubscribe_op,
)
from server.mcp._jsonrpc import INTERNAL_ERROR, RpcError

__all__ = ["Subscriptions"]


class Subscriptions:
    """uri -> the transport sessions subscribed to it on this node, and each session's log level
    (the latest ``max_remembered`` of them); the rows are written as they change."""

    def __init__(self, store: Store, *, max_remembered: int) -> None:
        self.store = store
        self.max_remembered = max_remembered
        self._subscribers: dict[str, set[str]] = {}
        self._log_levels: collections.OrderedDict[str, str] = collections.OrderedDict()

    @property
    def count(self) -> int:
        """Resource URIs with at least one subscriber here."""
        return len(self._subscribers)

    @property
    def remembered_log_levels(self) -> int:
        return len(self._log_levels)

    def subscribers(self, uri: str) -> list[str]:
        return list(self._subscribers.get(uri, ()))

    def uris(self) -> list[str]:
        return list(self._subscribers)

    def log_level(self, session_id: str, default: str | None) -> str | None:
        return self._log_levels.get(session_id, default)

    async def on_subscribe(self, session_id: str | None, uri: str, on: bool) -> None:
        """(Un)subscribe: here, and in a row that an update published on another node finds."""
        if session_id is None:
            return
        target = RelayAddress.session(session_id)
        if on:
            self._subscribers.setdefault(uri, set()).add(session_id)
            op = subscribe_session_op(uri, session_id)
        else:
            self._unsubscribe_here(session_id, uri)
            op = unsubscribe_op(uri, target)
        # a node holding the session's stream re-reads its subscriptions (server/cluster/)
        try:
            await self.store.write(op, outbox_wake_op(target))
        except StoreUnavailable:
            msg = "the database is unreachable; retry shortly"
            raise RpcError(INTERNAL_ERROR, msg, {"retryable": True, "retryAfter": 5}) from None

    def on_log_level(self, session_id: str | None, level: str) -> None:
        if session_id is None:
            return
        self._log_levels[session_id] = level
        self._log_levels.move_to_end(session_id)
        while len(self._log_levels) > self.max_remembered:
            self._log_levels.popitem(last=False)
        self.store.write_nowait(log_level_op(session_id, level))

    def set_subscriptions(
        self, session_ids: Iterable[str], rows: Iterable[tuple[str, str]]
    ) -> None:
        """Replace what this node remembers of the subscriptions of ``session_ids`` by ``rows``
        (session id, uri), read from the database: a (un)subscribe through another node counts."""
        sessions = set(session_ids)
        for uri, subscribers in list(self._subscribers.items()):
            subscribers -= sessions
            if not subscribers:
                del self._subscribers[uri]
        for session_id, uri in rows:
            self._subscribers.setdefault(uri, set()).add(session_id)

    def forget_session(self, session_id: str) -> None:
        """A transport session ended (DELETE): its subscriptions go, here and in the rows."""
        for uri in list(self._subscribers):
            self._unsubscribe_here(session_id, uri)
        self.store.write_nowait(forget_subscriptions_op(RelayAddress.session(session_id)))
        self._log_levels.pop(session_id, None)

    def forget_log_level(self, session_id: str) -> None:
        self._log_levels.pop(session_id, None)

    def _unsubscribe_here(self, session_id: str, uri: str) -> None:
        subscribers = self._subscribers.get(uri)
        if subscribers is not None:
            subscribers.discard(session_id)
            if not subscribers:
                del self._subscribers[uri]
