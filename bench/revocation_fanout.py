"""revocation-fanout: from revoking a user to the last of their open streams ending.

Per round a new user signs in (one grant, one user session), opens STREAMS transport sessions
with that token and one GET SSE stream on each (its own connection; each stream's priming event
is read, so all are open), then the user is revoked through the admin API
(``POST /admin/api/users/revoke``, what ``steward users revoke`` and an operator use). Every
stream is read concurrently; a stream is done when its final error event has arrived and the
server has ended its body. The round's figure is the time from sending the revocation to the
last stream done; p50/p99 are over the rounds (per-stream percentiles are reported too).

One user session holds at most 64 streams by default (``SessionPolicy.max_connections``), so the
node is ``bench._node --max-connections`` a little above STREAMS. Steward runs pinned to core 0
and the generator to core 1, so the time includes the generator reading STREAMS streams on one
core. The SDK peer has no notion of revoking a user: there is no peer figure and no ratio.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import trio

from bench._loadgen import Body, Connection, ProtocolError, SseDecoder, open_session
from bench._servers import (
    SERVER_CORE,
    Server,
    obtain_tokens,
    on_steward,
)

STREAMS = 1000
ROUNDS = 10
QUICK_STREAMS = 20
QUICK_ROUNDS = 2
OPENERS = 16  # sessions and streams being opened at once
ROUND_LIMIT = 30.0  # seconds a round may wait for its streams to end before it counts failures
PEER_NOTE = "the MCP SDK server has no user revocation; no peer figure and no ratio"


def _pct(values: list[float], p: float) -> float | None:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 2) if s else None


async def _open(server: Server, token: str, n: int) -> list[tuple[Connection, Body]]:
    """``n`` transport sessions of the token's user session, each with an open GET stream whose
    priming event has been read."""
    streams: list[tuple[Connection, Body]] = []
    limiter = trio.CapacityLimiter(OPENERS)

    async def one() -> None:
        conn = Connection("127.0.0.1", server.port)
        async with limiter:
            headers = await open_session(conn, server.path, token)
            get = {k: v for k, v in headers.items() if k != "content-type"}
            get["accept"] = "text/event-stream"
            await conn.send_request("GET", server.path, get)
            status, head = await conn.read_head()
            body = Body(conn, head)
            if status != 200 or not head.get("content-type", "").startswith("text/event-stream"):
                msg = f"GET answered {status} {(await body.next() or b'')[:100]!r}"
                raise ProtocolError(msg)
            if await body.next() is None:  # the priming event
                msg = "the stream ended before its priming event"
                raise ProtocolError(msg)
        streams.append((conn, body))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return streams


async def _until_error_and_end(body: Body, started: list[float], done: list[float]) -> None:
    decoder = SseDecoder()
    errored = False
    try:
        while (piece := await body.next()) is not None:
            errored = errored or any('"error"' in event for event in decoder.feed(piece))
    except (OSError, trio.BrokenResourceError, ProtocolError):
        return  # not a clean end: counted as a failure
    if errored:
        done.append(time.perf_counter() - started[0])


async def _round(
    server: Server, admin: httpx.AsyncClient, user: str, token: str, n: int
) -> dict[str, Any]:
    streams = await _open(server, token, n)
    rows = (await admin.get("sessions", params={"user": user})).json()["sessions"]
    user_id = _newest_user(rows)
    done: list[float] = []
    started = [0.0]
    acknowledged: float | None = None
    try:
        with trio.move_on_after(ROUND_LIMIT):
            async with trio.open_nursery() as nursery:
                for _, body in streams:
                    nursery.start_soon(_until_error_and_end, body, started, done)
                await trio.sleep(0.2)  # every reader is waiting on its socket
                started[0] = time.perf_counter()
                r = await admin.post("users/revoke", json={"user_id": user_id})
                r.raise_for_status()
                acknowledged = time.perf_counter() - started[0]
    finally:
        for conn, _ in streams:
            await conn.aclose()
    return {
        "streams": len(streams),
        "ended_with_error": len(done),
        "errors": n - len(done),  # streams that never got their error event
        "first_ms": round(min(done) * 1000, 2) if done else None,
        "last_ms": round(max(done) * 1000, 2) if done else None,
        "stream_p50_ms": _pct(done, 0.50),
        "stream_p99_ms": _pct(done, 0.99),
        "admin_acknowledged_ms": None if acknowledged is None else round(acknowledged * 1000, 2),
        "latencies": done,
    }


def _newest_user(rows: list[dict[str, Any]]) -> str:
    active = [r for r in rows if r["status"] == "active"]
    if not active:
        msg = f"no active user session among {len(rows)} rows"
        raise LookupError(msg)
    user_id: str = max(active, key=lambda r: str(r["created_at"]))["user_id"]
    return user_id


async def _measure_async(server: Server, streams: int, rounds: int) -> dict[str, Any]:
    users = [f"fan{i}" for i in range(rounds)]
    tokens = await obtain_tokens(server.ready, users, concurrency=4)
    headers = {"authorization": f"Bearer {server.admin}"}
    per_round = []
    async with httpx.AsyncClient(
        base_url=server.ready["admin_url"], headers=headers, timeout=60
    ) as admin:
        for user, token in zip(users, tokens, strict=True):
            per_round.append(await _round(server, admin, user, token, streams))
    return {"available": True, "rounds": per_round}


def run(
    *, quick: bool = False, streams: int | None = None, rounds: int | None = None
) -> dict[str, Any]:
    streams = streams or (QUICK_STREAMS if quick else STREAMS)
    rounds = rounds or (QUICK_ROUNDS if quick else ROUNDS)
    options = ["--max-connections", str(streams + 64)]
    core, measured = on_steward(
        options, lambda server: trio.run(_measure_async, server, streams, rounds)
    )
    rounds_done = measured.get("rounds", [])
    lasts = [r["last_ms"] / 1000 for r in rounds_done if r["last_ms"] is not None]
    every = [x for r in rounds_done for x in r.pop("latencies")]
    complete = all(r["ended_with_error"] == r["streams"] == streams for r in rounds_done)
    figures: dict[str, Any] = {
        "streams": streams,
        "rounds": len(rounds_done),
        f"revocation_p50_ms_{streams}": _pct(lasts, 0.50),
        f"revocation_p99_ms_{streams}": _pct(lasts, 0.99),
        "per_stream_p50_ms": _pct(every, 0.50),
        "per_stream_p99_ms": _pct(every, 0.99),
        "all_streams_ended_with_error": complete and len(rounds_done) == rounds,
    }
    out: dict[str, Any] = {
        "benchmark": "revocation-fanout",
        "streams_per_round": streams,
        "server_core": SERVER_CORE if core is not None else None,
        "generator_core": core,
        "servers": {"steward": measured},
        "figures": figures,
        "ratios": {},
        "peer": PEER_NOTE,
        "goal": f"revocation_p99_ms_{STREAMS} <= 50",
    }
    if not measured["available"]:
        out["unavailable"] = {"steward": measured["reason"]}
    return out
