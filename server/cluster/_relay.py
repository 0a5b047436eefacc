"""Cross-node delivery: what one node has for a stream, a server request or a request that another
node holds travels through PostgreSQL (docs/scaling.md, "Across nodes").

A message for a target this node does not hold is an ``outbox`` row addressed to the target, and a
NOTIFY on ``steward_outbox`` naming it wakes every node. The node holding the target claims the
rows with ``DELETE ... RETURNING``, in the same transaction as it stores the stream events they
become, so each row is delivered by one node, once, and a crash before the commit leaves the row
for the next claim. Targets:

    session:<Mcp-Session-Id>   the session's GET (or legacy) stream, wherever it is or next opens
    listen:<connection id>     a 2026-07-28 subscriptions/listen stream
    reply:<server request id>  a client's answer to a sampling/elicitation request sent elsewhere
    node:<node id>             a request forwarded to the node holding its state (a 2026 retry
                               of a parked request, a legacy POST for a stream held there)
    relay:<forward id>         the forwarded request's HTTP answer, back to the node that got it

and, without a row, ``stream:<session>:<stream>``: a request's stream that its client resumed on
another node, whose events the running request keeps storing in ``stream_events``; the node that
resumed it reads them after the last one it sent (their ids are the request's own).

After its LISTEN connection drops the relay reconnects and claims everything addressed to what it
holds; a periodic sweep does the same, for notifications a full buffer dropped.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import attrs
import structlog
import trio

from actors import (
    OUTBOX_CHANNEL,
    AddressKind,
    CloseReason,
    Conn,
    Connection,
    ConnectionKind,
    Op,
    Principal,
    RelayAddress,
    Store,
    StoreUnavailable,
    alive_nodes,
    claim_outbox,
    insert_outbox_op,
    legacy_stream_node,
    outbox_wake_op,
    post_outbox,
    post_reply,
    publish_to_subscribers_ops,
    store_stream_events,
    stream_events_after,
    subscriptions_of,
    withdraw_outbox,
)
from runtime import Backoff, ChildSpec
from server.http import Receive, Send, send_json
from server.mcp import ForwardedHere, StreamsHere

__all__ = ["CHANNEL", "Relay", "RelayPolicy", "RelayStatistics"]

log = structlog.get_logger("relay")

CHANNEL = OUTBOX_CHANNEL


@attrs.frozen(kw_only=True)
class RelayPolicy:
    """The relay's bounds and durations (seconds)."""

    sweep_interval: float = 10.0  # a full claim for every local target, at least this often
    forward_timeout: float = 5.0  # a forwarded request not taken by its node in this time fails
    max_forwards: int = 1_000  # forwarded requests running here at once (503 beyond)
    wake_buffer: int = 10_000  # targets waiting to be claimed (beyond: one full sweep instead)
    max_replies: int = 100  # a user's answers to server requests awaiting their node's claim
    owner_check: float = 5.0  # while a forwarded request runs, is its node still alive?
    reconnect: Backoff = Backoff(min=0.1, max=5.0, jitter=0.2, reset_after=30.0)  # noqa: RUF009


@attrs.frozen(kw_only=True)
class RelayStatistics:
    delivered: int  # outbox rows delivered to streams and server requests here
    forwarded: int  # requests this node sent to another node
    served: int  # requests forwarded to this node and run here
    reconnects: int  # of the LISTEN connection
    waiting: int  # forwarded requests awaiting their answer here
    wakes_dropped: int  # wake-ups past wake_buffer (the next sweep claims for them)
    owners_lost: int  # forwarded requests whose node died while they ran (503 or a cut stream)


class _Forwarded:
    """A request forwarded to this node: its client's disconnect arrives as a cancel row."""

    def __init__(self) -> None:
        self.gone = trio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


class Relay:
    """One node's side of cross-node delivery (a supervised child of the node)."""

    def __init__(
        self,
        here: StreamsHere,
        store: Store,
        *,
        node_id: str,
        policy: RelayPolicy | None = None,
    ) -> None:
        self.here = here
        self.store = store
        self.node_id = node_id
        self.policy = policy or RelayPolicy()
        self._wakes, self._woken = trio.open_memory_channel[RelayAddress | None](
            self.policy.wake_buffer
        )
        self._waiting: dict[str, trio.Event] = {}  # forward id -> wakes its waiter
        self._served: dict[str, _Forwarded] = {}  # forward id -> a request running here
        self._followers: dict[RelayAddress, tuple[Connection, trio.Lock]] = {}  # following()
        # node -> the scopes of forwarded requests whose answers come from it (_watch_owners)
        self._owned_by: dict[str, set[trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None
        self.delivered = 0
        self.forwarded = 0
        self.served = 0
        self.reconnects = 0
        self.wakes_dropped = 0
        self.owners_lost = 0

    def child_spec(self, forwarded: ForwardedHere) -> ChildSpec:
        """The relay as a child of the node; ``forwarded`` runs here what other nodes forward."""
        return ChildSpec(
            "relay",
            functools.partial(self.run, forwarded),
            backoff=self.policy.reconnect,
            shutdown_grace=2.0,
        )

    @property
    def max_replies(self) -> int:
        return self.policy.max_replies

    def statistics(self) -> RelayStatistics:
        return RelayStatistics(
            delivered=self.delivered,
            forwarded=self.forwarded,
            served=self.served,
            reconnects=self.reconnects,
            waiting=len(self._waiting),
            wakes_dropped=self.wakes_dropped,
            owners_lost=self.owners_lost,
        )

    async def run(
        self,
        forwarded: ForwardedHere,
        *,
        task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._listen)
            nursery.start_soon(self._sweeper)
            nursery.start_soon(self._watch_owners)
            task_status.started(self)
            async for target in self._woken:
                try:
                    await self._claim(target, forwarded)
                except StoreUnavailable:
                    log.warning("relay_claim_failed", reason="database unreachable")

    def wake(self, target: RelayAddress | None) -> None:
        """Claim what the outbox holds for ``target`` (None: for everything held here) soon."""
        try:
            self._wakes.send_nowait(target)
        except trio.WouldBlock:  # the periodic sweep claims it
            self.wakes_dropped += 1
            log.warning("relay_wake_dropped")

    async def _listen(self) -> None:
        """LISTEN with reconnects; after each (re)connect, a full claim catches up."""
        attempt = 0
        while True:
            await self.store.wait_connected()  # an outage is waited out here, not crashed on
            try:
                async with self.store.listen(CHANNEL) as inbox:
                    attempt = 0
                    self.wake(None)  # what was addressed here while not listening
                    async for text in inbox:
                        try:
                            self.wake(RelayAddress.parse(text))
                        except ValueError as exc:  # not written by a node: nothing to claim
                            log.warning("relay_bad_address", error=str(exc))
            except StoreUnavailable:
                pass
            self.reconnects += 1
            log.warning("relay_listen_lost")
            await trio.sleep(self.policy.reconnect.delay(attempt))
            attempt += 1

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.policy.sweep_interval)
            self.wake(None)

    # -- claiming ----------------------------------------------------------------------------------

    def _streams(self, target: RelayAddress | None) -> dict[RelayAddress, Connection]:
        """The streams held here that ``target`` names (all of them for None)."""
        found: dict[RelayAddress, Connection] = {}
        kind = None if target is None else target.kind
        if kind in (None, AddressKind.SESSION):
            sessions = [target.key] if target is not None else self.here.stream_sessions()
            for session_id in sessions:
                conn = self.here.session_stream(session_id)
                if conn is not None:
                    found[RelayAddress.session(session_id)] = conn
        if kind in (None, AddressKind.LISTEN):
            for conn in self.here.listen_streams():
                if target is None or str(conn.id) == target.key:
                    found[RelayAddress.listen(conn.id)] = conn
        return found

    async def _claim(self, target: RelayAddress | None, forwarded: ForwardedHere) -> None:
        kind = None if target is None else target.kind
        streams = self._streams(target)
        if streams:
            await self._reread_subscriptions([a for a in streams if a.kind is AddressKind.SESSION])
            await self._deliver(streams)
        if kind in (None, AddressKind.REPLY):
            if target is not None:
                replies = [target] if self.here.awaits_answer(target.key) else []
            else:
                replies = [RelayAddress.reply(k) for k in self.here.awaited_answers()]
            if replies:
                for row in await self._take(replies):
                    self.delivered += self.here.resolve(row["payload"])
        if kind in (None, AddressKind.RELAY):
            for forward, event in self._waiting.items():
                if target is None or forward == target.key:
                    event.set()
        if kind in (None, AddressKind.STREAM):
            followers = [target] if target is not None else list(self._followers)
            for follower in followers:
                await self._follow(follower)
        here = RelayAddress.node(self.node_id)
        if target is None or target == here:
            for row in await self._take([here]):
                self._start_forwarded(row["payload"], forwarded)

    async def _reread_subscriptions(self, sessions: list[RelayAddress]) -> None:
        """What the sessions whose streams this node holds are subscribed to, from the rows: a
        (un)subscribe through another node wakes this node with the session's address."""
        if not sessions:
            return
        found = await subscriptions_of(self.store, sessions)
        self.here.set_subscriptions([a.key for a in sessions], [(a.key, uri) for a, uri in found])

    async def _take(self, targets: list[RelayAddress]) -> list[dict[str, Any]]:
        return await claim_outbox(self.store, targets)

    async def _deliver(self, streams: dict[RelayAddress, Connection]) -> None:
        """Claim the rows for ``streams``, store them as events and send them, in id order: while
        the claim runs, events emitted here wait behind the claimed ones."""
        with self.here.hold(streams.values()) as held:
            mine = {t: c for t, c in streams.items() if c in held}  # one claim per stream at once
            if not mine:
                return
            claimed: list[tuple[Connection, dict[str, Any], str]] = []

            async def claim(db: Conn) -> None:
                events = []
                for row in await claim_outbox(db, list(mine)):
                    conn = mine[RelayAddress.parse(row["target"])]
                    message = self.here.for_stream(conn, row["payload"])
                    event_id = conn.next_event_id()
                    claimed.append((conn, message, event_id))
                    if conn.session_id is not None and conn.kind is ConnectionKind.GET:
                        stream, _, seq = event_id.rpartition(":")
                        user_id = conn.session.context.user_id
                        events.append((conn.session_id, stream, int(seq), user_id, message))
                if events:  # stored with the claim: a client that missed them resumes them
                    await store_stream_events(db, events)

            await self.store.transact(claim)
            for conn, message, event_id in claimed:
                conn.send_nowait(self.here.stream_event(conn, message, event_id))
            self.delivered += len(claimed)

    # -- publishing --------------------------------------------------------------------------------

    def publish_to_subscribers(
        self, uri: str, message: dict[str, Any], *, exclude: list[RelayAddress]
    ) -> None:
        """An outbox row for every subscriber of ``uri`` but ``exclude`` (served here already)."""
        self.store.write_nowait(*publish_to_subscribers_ops(uri, message, exclude=exclude))

    async def forward_reply(self, message: dict[str, Any], user_id: str) -> bool:
        """A client's answer to a server request sent by another node: for that node to claim.
        False, and nothing stored, when the user already has ``max_replies`` answers unclaimed
        (answers to requests that no node awaits are claimed by none)."""
        target = RelayAddress.reply(message.get("id"))

        async def store(conn: Conn) -> bool:
            return await post_reply(conn, target, user_id, message, limit=self.policy.max_replies)

        return await self.store.transact(store)

    def _addressed(
        self, target: RelayAddress, user_id: str | None, payload: dict[str, Any]
    ) -> list[Op]:
        return [insert_outbox_op(target, user_id, payload), self.wake_op(target)]

    @staticmethod
    def wake_op(target: RelayAddress) -> Op:
        """The op that wakes the node holding ``target`` when it commits."""
        return outbox_wake_op(target)

    # -- following a request's stream that another node writes ------------------------------------

    @contextlib.asynccontextmanager
    async def following(self, conn: Connection) -> AsyncIterator[None]:
        """While the block runs, ``conn`` receives the events another node stores for its stream
        after ``conn``'s last sequence number, in order, once each; the response ends it."""
        assert conn.session_id is not None  # a resumable stream belongs to a transport session
        key = RelayAddress.stream(conn.session_id, conn.stream_id)
        if key in self._followers:  # resumed again here: the newer connection follows
            await self._followers[key][0].close(CloseReason.RESUMED)
        self._followers[key] = (conn, trio.Lock())
        try:
            await self._follow(key)  # what was stored before the block began
            yield
        finally:
            if self._followers.get(key, (None,))[0] is conn:
                del self._followers[key]

    async def _follow(self, key: RelayAddress) -> None:
        follower = self._followers.get(key)
        if follower is None:
            return
        conn, lock = follower
        async with lock:
            session_id, stream_id = key.stream_parts
            rows = await stream_events_after(self.store, session_id, stream_id, conn.last_seq)
            for seq, payload in rows:
                event_id = conn.advance_to(seq)
                final = "method" not in payload and "id" in payload  # the request's response
                conn.send_nowait(self.here.stream_event(conn, payload, event_id, final=final))
            self.delivered += len(rows)

    # -- forwarding: this node's side -------------------------------------------------------------

    async def forward_to_stream(
        self, session_id: str, principal: Principal, request: dict[str, Any], send: Send
    ) -> bool:
        """Forward a legacy POST to the node holding its session's stream; False if none does."""
        owner = await legacy_stream_node(self.store, session_id)
        if owner is None or owner == self.node_id:
            return False
        request = {**request, "principal": _principal_doc(principal)}
        return await self.forward(owner, principal.user_id, request, send, None)

    async def forward(
        self,
        node: str,
        user_id: str,
        request: dict[str, Any],
        send: Send,
        receive: Receive | None,
    ) -> bool:
        """Run ``request`` on ``node`` and relay its HTTP answer to ``send``.

        Returns False when the node did not take the request within ``forward_timeout`` (it is
        gone; the request was then withdrawn), or at once when no live node has that name (an
        altered requestState names one); the caller answers. A disconnect seen on ``receive`` is
        passed on (for a 2026 request, the cancellation).
        """
        if not await alive_nodes(self.store, [node]):
            return False
        forward = uuid.uuid4().hex
        woken = self._waiting[forward] = trio.Event()
        try:
            request = {**request, "forward": forward, "from": self.node_id}

            async def post(db: Conn) -> int:
                return await post_outbox(db, RelayAddress.node(node), user_id, request)

            message_id = await self.store.transact(post)
            self.forwarded += 1
            with trio.move_on_after(self.policy.forward_timeout):
                await woken.wait()
            if not woken.is_set() and await withdraw_outbox(self.store, message_id):
                log.warning("forward_not_taken", node=node, kind=request.get("kind"))
                return False
            started = False

            async def relayed(message: MutableMapping[str, Any]) -> None:
                nonlocal started
                started = True
                await send(message)

            with trio.CancelScope() as owner_lost:
                owned = self._owned_by.setdefault(node, set())
                owned.add(owner_lost)
                try:
                    async with trio.open_nursery() as nursery:
                        if receive is not None:
                            nursery.start_soon(
                                self._pass_disconnect, receive, node, user_id, forward
                            )
                        await self._relay_answer(forward, relayed)
                        nursery.cancel_scope.cancel()
                finally:
                    owned.discard(owner_lost)
                    if not owned and self._owned_by.get(node) is owned:
                        del self._owned_by[node]
            if owner_lost.cancelled_caught:
                if started:  # the answer's head went out: end its body there
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    msg = f"the node running this request ({node}) stopped; send it again"
                    await send_json(send, 503, _unavailable(msg), [(b"retry-after", b"1")])
            return True
        finally:
            del self._waiting[forward]

    async def _watch_owners(self) -> None:
        """Stop relaying the answers of forwarded requests whose node is no longer alive (a
        janitor marked it dead): their clients get an answer instead of waiting for one that
        will never come. One read of ``nodes`` every ``owner_check`` for all the nodes this node
        waits on; an unreachable database proves nothing: the check is tried again."""
        while True:
            await trio.sleep(self.policy.owner_check)
            if not self._owned_by:
                continue
            nodes = list(self._owned_by)
            try:
                alive = await alive_nodes(self.store, nodes)
            except StoreUnavailable:
                continue
            for node in nodes:
                if node in alive:
                    continue
                lost = self._owned_by.pop(node, set())
                if lost:
                    log.warning("forward_owner_gone", node=node, requests=len(lost))
                    self.owners_lost += len(lost)
                for scope in lost:
                    scope.cancel()

    async def _relay_answer(self, forward: str, send: Send) -> None:
        """Pass the forwarded request's ASGI messages to ``send`` until its last body part."""
        while True:
            self._waiting[forward] = woken = trio.Event()
            for row in await self._take([RelayAddress.relay(forward)]):
                message = _asgi_message(row["payload"])
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    return
            await woken.wait()

    async def _pass_disconnect(
        self, receive: Receive, node: str, user_id: str, forward: str
    ) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        cancel = {"kind": "cancel", "forward": forward}
        # bounded: a write whose caller stops waiting still commits (Store.write)
        with trio.move_on_after(self.policy.forward_timeout, shield=True):
            await self.store.write(*self._addressed(RelayAddress.node(node), user_id, cancel))

    # -- forwarding: the owning node's side --------------------------------------------------------

    def _start_forwarded(self, request: dict[str, Any], forwarded: ForwardedHere) -> None:
        forward = str(request.get("forward"))
        if request.get("kind") == "cancel":
            served = self._served.get(forward)
            if served is not None:
                served.gone.set()
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._serve, request, forwarded)

    async def _serve(self, request: dict[str, Any], forwarded: ForwardedHere) -> None:
        forward, origin = str(request["forward"]), str(request["from"])
        sent = {"start": False, "end": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["start"] = True
            elif not message.get("more_body"):
                sent["end"] = True
            await self.store.write(
                *self._addressed(RelayAddress.relay(forward), None, _asgi_doc(message))
            )

        served = self._served[forward] = _Forwarded()
        try:
            if len(self._served) > self.policy.max_forwards:
                msg = f"too many forwarded requests (max_forwards={self.policy.max_forwards})"
                await send_json(send, 503, _unavailable(msg), [(b"retry-after", b"1")])
                return
            self.served += 1
            await forwarded.answer(
                send, lambda: self._run_forwarded(request, send, served, forwarded)
            )
        except StoreUnavailable:
            log.warning("forward_answer_lost", origin=origin, reason="database unreachable")
        except Exception as exc:  # a forwarded request's failure is its own, never the relay's
            log.error("forward_failed", origin=origin, error=type(exc).__name__)
        finally:
            del self._served[forward]
            if not sent["end"]:  # the request ended without its answer: end the HTTP exchange
                with trio.move_on_after(self.policy.forward_timeout, shield=True):
                    try:
                        if sent["start"]:
                            await send(
                                {"type": "http.response.body", "body": b"", "more_body": False}
                            )
                        else:
                            await send_json(send, 503, _unavailable("the request ended"))
                    except StoreUnavailable:
                        pass

    async def _run_forwarded(
        self, request: dict[str, Any], send: Send, served: _Forwarded, forwarded: ForwardedHere
    ) -> None:
        message = request["message"]
        if request["kind"] == "retry":
            await forwarded.retry(
                request["state"],
                uuid.UUID(request["grant_id"]),
                message,
                send,
                served.receive,
                stream_ok=bool(request.get("stream_ok")),
            )
        elif request["kind"] == "legacy":
            principal = _principal(request["principal"])
            await forwarded.handle_forwarded(principal, request["session_id"], message, send)
        else:
            msg = f"unknown forwarded request kind {request.get('kind')!r}"
            await send_json(send, 400, {"error": "invalid_request", "error_description": msg})


def _unavailable(description: str) -> dict[str, str]:
    return {"error": "temporarily_unavailable", "error_description": description}


def _asgi_doc(message: MutableMapping[str, Any]) -> dict[str, Any]:
    """An ASGI response message as JSON (bytes as base64)."""
    doc: dict[str, Any] = {"type": message["type"]}
    if message["type"] == "http.response.start":
        doc["status"] = message["status"]
        doc["headers"] = [
            [base64.b64encode(k).decode(), base64.b64encode(v).decode()]
            for k, v in message.get("headers", [])
        ]
    else:
        doc["body"] = base64.b64encode(message.get("body", b"")).decode()
        doc["more_body"] = bool(message.get("more_body"))
    return doc


def _asgi_message(doc: dict[str, Any]) -> MutableMapping[str, Any]:
    if doc["type"] == "http.response.start":
        headers = [(base64.b64decode(k), base64.b64decode(v)) for k, v in doc["headers"]]
        return {"type": doc["type"], "status": doc["status"], "headers": headers}
    return {
        "type": doc["type"],
        "body": base64.b64decode(doc["body"]),
        "more_body": doc["more_body"],
    }


def _principal_doc(principal: Principal) -> dict[str, Any]:
    doc = attrs.asdict(principal)
    doc["grant_id"] = str(principal.grant_id)
    doc["scopes"] = sorted(principal.scopes)
    return doc


def _principal(doc: dict[str, Any]) -> Principal:
    return Principal(
        **{**doc, "grant_id": uuid.UUID(doc["grant_id"]), "scopes": frozenset(doc["scopes"])}
    )
