"""Cross-node delivery's tables: ``outbox`` (messages addressed to a stream, a server request or
a node), ``resource_subscriptions`` (who is subscribed to what, by address), ``stream_events``
(resumable streams' events), and the relay addresses that name their targets
(server/_relay.py is the one reader and writer; docs/scaling.md, "Across nodes").

An address is ``<kind>:<key>``:

    session:<Mcp-Session-Id>   the session's GET (or legacy) stream
    listen:<connection id>     a 2026-07-28 subscriptions/listen stream
    reply:<server request id>  a client's answer to a server request sent elsewhere
    node:<node id>             a request forwarded to the node holding its state
    relay:<forward id>         the forwarded request's HTTP answer
    stream:<session>:<stream>  a request's stream that its client resumed on another node
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from actors._store import Conn, Op, Store

__all__ = [
    "OUTBOX_CHANNEL",
    "AddressKind",
    "RelayAddress",
    "claim_outbox",
    "forget_subscriptions_op",
    "insert_outbox_op",
    "outbox_wake_op",
    "post_outbox",
    "post_reply",
    "publish_to_subscribers_ops",
    "store_stream_event_op",
    "store_stream_events",
    "stream_events_after",
    "subscribe_op",
    "subscribe_session_op",
    "subscriptions_of",
    "unsubscribe_op",
    "withdraw_outbox",
]

OUTBOX_CHANNEL = "steward_outbox"  # NOTIFY channel; the payload is the address woken
MAX_ADDRESS = 1024  # characters of an address at most
_NOTIFY = "SELECT pg_notify($1, $2)"


class AddressKind(enum.StrEnum):
    SESSION = "session"
    LISTEN = "listen"
    REPLY = "reply"
    NODE = "node"
    RELAY = "relay"
    STREAM = "stream"


@attrs.frozen
class RelayAddress:
    """A relay address: ``kind`` and ``key`` (for ``stream``, ``<session>:<stream>``).

    Raises:
        ValueError: an empty key, a key longer than the address bound, or a ``stream`` key
            without its two parts; the message names the value.
    """

    kind: AddressKind
    key: str

    def __attrs_post_init__(self) -> None:
        if not self.key or len(self.key) > MAX_ADDRESS:
            msg = f"a relay address needs a key of 1 to {MAX_ADDRESS} characters, got {self.key[:80]!r}"
            raise ValueError(msg)
        if self.kind is AddressKind.STREAM and not all(self.key.partition(":")[::2]):
            msg = f"a stream address is stream:<session>:<stream>, got {self.format()[:120]!r}"
            raise ValueError(msg)

    @classmethod
    def parse(cls, text: str) -> RelayAddress:
        """``<kind>:<key>`` as ``format`` writes it.

        Raises:
            ValueError: no ``:``, an unknown kind, or a bad key; the message names the value.
        """
        kind, colon, key = text.partition(":")
        try:
            parsed = AddressKind(kind)
        except ValueError:
            parsed = None
        if not colon or parsed is None:
            kinds = ", ".join(k.value for k in AddressKind)
            msg = f"a relay address is <kind>:<key> with kind one of {kinds}; got {text[:120]!r}"
            raise ValueError(msg)
        return cls(parsed, key)

    def format(self) -> str:
        return f"{self.kind.value}:{self.key}"

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def session(cls, session_id: str) -> RelayAddress:
        return cls(AddressKind.SESSION, session_id)

    @classmethod
    def listen(cls, connection_id: uuid.UUID) -> RelayAddress:
        return cls(AddressKind.LISTEN, str(connection_id))

    @classmethod
    def reply(cls, request_id: object) -> RelayAddress:
        return cls(AddressKind.REPLY, str(request_id))

    @classmethod
    def node(cls, node_id: str) -> RelayAddress:
        return cls(AddressKind.NODE, node_id)

    @classmethod
    def relay(cls, forward_id: str) -> RelayAddress:
        return cls(AddressKind.RELAY, forward_id)

    @classmethod
    def stream(cls, session_id: str, stream_id: str) -> RelayAddress:
        return cls(AddressKind.STREAM, f"{session_id}:{stream_id}")

    @property
    def stream_parts(self) -> tuple[str, str]:
        """A ``stream`` address's session and stream ids."""
        session, _, stream = self.key.partition(":")
        return session, stream


def _texts(addresses: Sequence[RelayAddress]) -> list[str]:
    return [a.format() for a in addresses]


# -- outbox -----------------------------------------------------------------------------------------


def outbox_wake_op(address: RelayAddress) -> Op:
    """The op that wakes the node holding ``address`` when it commits."""
    return Op(_NOTIFY, (OUTBOX_CHANNEL, address.format()))


def insert_outbox_op(address: RelayAddress, user_id: str | None, payload: dict[str, Any]) -> Op:
    return Op(
        "INSERT INTO outbox (target, user_id, payload) VALUES ($1, $2, $3)",
        (address.format(), user_id, payload),
    )


async def claim_outbox(db: Store | Conn, addresses: Sequence[RelayAddress]) -> list[dict[str, Any]]:
    """Take (delete) the rows addressed to ``addresses``: message_id, target, payload, in id
    order. Inside a ``transact`` function, with what they become."""
    rows: list[dict[str, Any]] = await db.fetch(
        "DELETE FROM outbox WHERE target = ANY($1::text[]) RETURNING message_id, target, payload",
        _texts(addresses),
    )
    return sorted(rows, key=lambda r: int(r["message_id"]))


async def post_outbox(
    conn: Conn, address: RelayAddress, user_id: str | None, payload: dict[str, Any]
) -> int:
    """Store one row and wake its node (inside a ``transact`` function); its message id."""
    message_id: int = await conn.fetchval(
        "INSERT INTO outbox (target, user_id, payload) VALUES ($1, $2, $3) RETURNING message_id",
        address.format(),
        user_id,
        payload,
    )
    await conn.execute(_NOTIFY, OUTBOX_CHANNEL, address.format())
    return message_id


async def withdraw_outbox(store: Store, message_id: int) -> bool:
    """Delete a row no node took; False when a node took it first."""
    gone = await store.fetchval(
        "DELETE FROM outbox WHERE message_id = $1 RETURNING message_id", message_id
    )
    return gone is not None


async def post_reply(
    conn: Conn, address: RelayAddress, user_id: str, payload: dict[str, Any], *, limit: int
) -> bool:
    """A client's answer for another node (inside a ``transact`` function): stored and woken
    unless the user already has ``limit`` answers unclaimed (False, nothing stored)."""
    status = await conn.execute(
        "INSERT INTO outbox (target, user_id, payload) SELECT $1, $2, $3 WHERE "
        "(SELECT count(*) FROM outbox WHERE user_id = $2 AND target LIKE 'reply:%') < $4",
        address.format(),
        user_id,
        payload,
        limit,
    )
    if status != "INSERT 0 1":
        return False
    await conn.execute(_NOTIFY, OUTBOX_CHANNEL, address.format())
    return True


# -- resource subscriptions -------------------------------------------------------------------------

_SUBSCRIBERS = "FROM resource_subscriptions WHERE uri = $1 AND NOT (target = ANY($2::text[]))"


def publish_to_subscribers_ops(
    uri: str, payload: dict[str, Any], *, exclude: Sequence[RelayAddress]
) -> list[Op]:
    """An outbox row for every subscriber of ``uri`` but ``exclude``, each woken."""
    skip = _texts(exclude)
    return [
        Op(
            f"INSERT INTO outbox (target, user_id, payload) SELECT target, user_id, $3 {_SUBSCRIBERS}",
            (uri, skip, payload),
        ),
        Op(f"SELECT pg_notify($3, target) {_SUBSCRIBERS}", (uri, skip, OUTBOX_CHANNEL)),
    ]


async def subscriptions_of(
    store: Store, addresses: Sequence[RelayAddress]
) -> list[tuple[RelayAddress, str]]:
    """The (address, uri) subscriptions of ``addresses``."""
    rows = await store.fetch(
        "SELECT target, uri FROM resource_subscriptions WHERE target = ANY($1::text[])",
        _texts(addresses),
    )
    return [(RelayAddress.parse(r["target"]), r["uri"]) for r in rows]


def subscribe_session_op(uri: str, session_id: str) -> Op:
    """Subscribe a transport session's stream to ``uri`` (as its user)."""
    return Op(
        "INSERT INTO resource_subscriptions (uri, target, user_id) SELECT $1, $2, user_id "
        "FROM transport_sessions WHERE session_id = $3 ON CONFLICT DO NOTHING",
        (uri, RelayAddress.session(session_id).format(), session_id),
    )


def subscribe_op(uris: Sequence[str], address: RelayAddress, user_id: str) -> Op:
    return Op(
        "INSERT INTO resource_subscriptions (uri, target, user_id) "
        "SELECT unnest($1::text[]), $2, $3 ON CONFLICT DO NOTHING",
        (list(uris), address.format(), user_id),
    )


def unsubscribe_op(uri: str, address: RelayAddress) -> Op:
    return Op(
        "DELETE FROM resource_subscriptions WHERE uri = $1 AND target = $2",
        (uri, address.format()),
    )


def forget_subscriptions_op(address: RelayAddress) -> Op:
    """Every subscription of ``address`` (its stream or session ended)."""
    return Op("DELETE FROM resource_subscriptions WHERE target = $1", (address.format(),))


# -- stream events ----------------------------------------------------------------------------------

_INSERT_EVENT = (
    "INSERT INTO stream_events (session_id, stream_id, seq, user_id, payload) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)


def store_stream_event_op(
    session_id: str, stream_id: str, seq: int, user_id: str, payload: dict[str, Any]
) -> Op:
    return Op(_INSERT_EVENT, (session_id, stream_id, seq, user_id, payload))


async def store_stream_events(
    conn: Conn, events: Sequence[tuple[str, str, int, str, dict[str, Any]]]
) -> None:
    """Store (session, stream, seq, user, payload) events inside a ``transact`` function."""
    await conn.executemany(_INSERT_EVENT, list(events))


async def stream_events_after(
    store: Store, session_id: str, stream_id: str, after: int, *, limit: int = 10_000
) -> list[tuple[int, dict[str, Any]]]:
    """A stream's stored events after sequence number ``after``, in order (at most ``limit``)."""
    rows = await store.fetch(
        "SELECT seq, payload FROM stream_events WHERE session_id = $1 AND stream_id = $2 "
        "AND seq > $3 ORDER BY seq LIMIT $4",
        session_id,
        stream_id,
        after,
        limit,
    )
    return [(int(r["seq"]), r["payload"]) for r in rows]
