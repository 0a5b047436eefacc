"""A lean HTTP/1.1 keep-alive load generator for MCP Streamable HTTP (Trio, hand-written bytes).

An httpx-based generator saturates its own core before the server does (docs/benchmarks.md);
this one writes request bytes directly and parses only what it needs: the status line, headers,
and a body framed by Content-Length, chunked encoding or the connection's close. A
``text/event-stream`` reply is decoded as it arrives and the call ends when the JSON-RPC response
event with the request's id is seen; the rest of that stream is then drained so the connection
can be reused.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import attrs
import trio

PROTOCOL_VERSION = "2025-11-25"
LATENCY_SAMPLES = 200_000  # reservoir bound: exact percentiles below it, sampled above
ERROR_KINDS = 16  # distinct error kinds kept; further kinds are counted under "other"
HEAD_LIMIT = 64 * 1024  # bytes of status line plus headers
BODY_LIMIT = 16 * 1024 * 1024  # bytes of one response body
RECONNECT_PAUSE = 0.01  # seconds between a failed connection and the next attempt


class ProtocolError(Exception):
    """The server's bytes are not the HTTP/1.1 or MCP this generator expects."""


@attrs.frozen
class Reply:
    """One HTTP exchange: the status, lower-cased headers, the JSON-RPC message (if any) and the
    seconds from sending the request to having that message (or the whole body)."""

    status: int
    headers: dict[str, str]
    message: dict[str, Any] | None
    elapsed: float
    body: bytes = b""


@attrs.frozen
class LoadPoint:
    """The figures of one run of the workload at one concurrency."""

    workers: int
    seconds: float
    sessions: int
    calls: int
    errors: int
    call_p50_ms: float | None
    call_p99_ms: float | None
    generator_cpu_s: float
    error_kinds: dict[str, int]
    opened: int = 0  # sessions whose initialize succeeded (``sessions`` counts finished ones)
    requests: int = 0  # HTTP requests answered (any status)

    @property
    def sessions_per_s(self) -> float:
        return round(self.sessions / self.seconds, 1) if self.seconds else 0.0

    @property
    def calls_per_s(self) -> float:
        return round(self.calls / self.seconds, 1) if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return round(self.requests / self.seconds, 1) if self.seconds else 0.0

    @property
    def generator_cpu_fraction(self) -> float:
        """The generator's CPU time over the wall time: 1.0 is one full core."""
        return round(self.generator_cpu_s / self.seconds, 3) if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "seconds": round(self.seconds, 2),
            "sessions": self.sessions,
            "sessions_opened": self.opened,
            "calls": self.calls,
            "sessions_per_s": self.sessions_per_s,
            "calls_per_s": self.calls_per_s,
            "requests": self.requests,
            "requests_per_s": self.requests_per_s,
            "call_p50_ms": self.call_p50_ms,
            "call_p99_ms": self.call_p99_ms,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "generator_cpu_s": round(self.generator_cpu_s, 3),
            "generator_cpu_fraction": self.generator_cpu_fraction,
        }


class Connection:
    """One HTTP/1.1 keep-alive connection, one request at a time; a request after the server
    closed it (or asked to) opens a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}"
        self.stream: trio.SocketStream | None = None
        self.reusable = False
        self.opened = 0
        self._buf = bytearray()

    async def connect(self) -> None:
        await self.aclose()
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        self.reusable = True
        self.opened += 1
        self._buf.clear()

    async def aclose(self) -> None:
        self.reusable = False
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()

    async def _fill(self) -> bool:
        if self.stream is None:
            msg = "the connection is closed"
            raise ProtocolError(msg)
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self._buf += data
        return True

    async def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > HEAD_LIMIT:
                msg = f"a header line is longer than {HEAD_LIMIT} bytes"
                raise ProtocolError(msg)
            if not await self._fill():
                msg = "the server closed the connection before the end of a line"
                raise ProtocolError(msg)
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    async def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._fill():
                msg = f"the server closed the connection {n - len(self._buf)} bytes short"
                raise ProtocolError(msg)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def send_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> None:
        if not self.reusable or self.stream is None:
            await self.connect()
        assert self.stream is not None
        head = [f"{method} {path} HTTP/1.1", f"host: {self.authority}"]
        if body or method in ("POST", "PUT"):
            head.append(f"content-length: {len(body)}")
        head += [f"{k}: {v}" for k, v in headers.items()]
        await self.stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def read_head(self) -> tuple[int, dict[str, str]]:
        """The status and lower-cased headers of the next response."""
        status_line = await self._line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            msg = f"the status line {status_line[:80]!r} is not HTTP/1.x"
            raise ProtocolError(msg)
        headers: dict[str, str] = {}
        size = len(status_line)
        while line := await self._line():
            size += len(line)
            if size > HEAD_LIMIT:
                msg = f"the response head is longer than {HEAD_LIMIT} bytes"
                raise ProtocolError(msg)
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            self.reusable = False
        return int(parts[1]), headers


class Body:
    """Reads one response body piece by piece, whatever its framing."""

    def __init__(self, conn: Connection, headers: dict[str, str]) -> None:
        self.conn = conn
        self.done = False
        self.size = 0
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode = "chunked"
            self.left = 0
        elif "content-length" in headers:
            self.mode = "length"
            self.left = int(headers["content-length"])
            self.done = self.left == 0
        else:
            self.mode = "close"
            self.left = 0
            conn.reusable = False

    async def next(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        if self.done:
            return None
        c = self.conn
        piece: bytes
        if self.mode == "length":
            if not c._buf and not await c._fill():
                msg = f"the server closed the connection {self.left} body bytes short"
                raise ProtocolError(msg)
            piece = bytes(c._buf[: self.left])
            del c._buf[: len(piece)]
            self.left -= len(piece)
            self.done = self.left == 0
        elif self.mode == "chunked":
            size_line = await c._line()
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                msg = f"the chunk size line {size_line[:40]!r} is not hexadecimal"
                raise ProtocolError(msg) from None
            if size == 0:
                while await c._line():  # trailers, then the blank line
                    pass
                self.done = True
                return None
            piece = await c._exact(size)
            if await c._exact(2) != b"\r\n":
                msg = "a chunk does not end with CRLF"
                raise ProtocolError(msg)
        else:
            if not c._buf and not await c._fill():
                self.done = True
                return None
            piece = bytes(c._buf)
            c._buf.clear()
        self.size += len(piece)
        if self.size > BODY_LIMIT:
            msg = f"a response body is longer than {BODY_LIMIT} bytes"
            raise ProtocolError(msg)
        return piece

    async def drain(self) -> None:
        while await self.next() is not None:
            pass


class SseDecoder:
    """Splits a ``text/event-stream`` byte stream into events' data fields."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """The data of every event completed by ``data`` (multi-line data joined by newlines)."""
        text = (self._pending + data).replace(b"\r\n", b"\n")
        if text.endswith(b"\r"):  # maybe the first half of a CRLF: decide with the next piece
            text, self._pending = text[:-1], b"\r"
        else:
            self._pending = b""
        text = text.replace(b"\r", b"\n")
        *events, rest = text.split(b"\n\n")
        self._pending = rest + self._pending
        out = []
        for event in events:
            data_lines = [
                line[5:].removeprefix(b" ")
                for line in event.split(b"\n")
                if line.startswith(b"data:")
            ]
            if data_lines:
                out.append(b"\n".join(data_lines).decode())
        return out


async def exchange(
    conn: Connection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    request_id: int | None = None,
) -> Reply:
    """Send one request and read its reply. With ``request_id``, the reply's JSON-RPC response to
    that id is looked for in a JSON body or in the events of an SSE body; the elapsed time stops
    when it is found."""
    started = time.perf_counter()
    await conn.send_request(method, path, headers, body)
    status, head = await conn.read_head()
    reader = Body(conn, head)
    message: dict[str, Any] | None = None
    if head.get("content-type", "").startswith("text/event-stream"):
        decoder = SseDecoder()
        while message is None and (piece := await reader.next()) is not None:
            for event in decoder.feed(piece):
                msg = json.loads(event) if event.strip() else None
                if (
                    isinstance(msg, dict)
                    and msg.get("id") == request_id
                    and ("result" in msg or "error" in msg)
                ):
                    message = msg
                    break
        elapsed = time.perf_counter() - started
        if reader.mode == "close":
            await conn.aclose()  # the stream ends only when the server closes it
        else:
            await reader.drain()
        return Reply(status, head, message, elapsed)
    parts = []
    while (piece := await reader.next()) is not None:
        parts.append(piece)
    elapsed = time.perf_counter() - started
    data = b"".join(parts)
    if head.get("content-type", "").startswith("application/json") and data:
        decoded = json.loads(data)
        if isinstance(decoded, dict):
            message = decoded
    return Reply(status, head, message, elapsed, data)


def _rpc(request_id: int | None, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        msg["id"] = request_id
    if params is not None:
        msg["params"] = params
    return json.dumps(msg, separators=(",", ":")).encode()


INITIALIZE = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {},
    "clientInfo": {"name": "steward-bench", "version": "1"},
}


def base_headers(token: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def open_session(conn: Connection, path: str, token: str | None) -> dict[str, str]:
    """initialize, then notifications/initialized: the headers that address the new session."""
    base = base_headers(token)
    reply = await exchange(
        conn, "POST", path, base, _rpc(1, "initialize", INITIALIZE), request_id=1
    )
    session_id = reply.headers.get("mcp-session-id")
    if reply.status != 200 or reply.message is None or "result" not in reply.message:
        msg = f"initialize answered {reply.status} {reply.body[:120]!r}"
        raise ProtocolError(msg)
    headers = {**base, "mcp-protocol-version": PROTOCOL_VERSION}
    if session_id:  # a stateless server issues none
        headers["mcp-session-id"] = session_id
    reply = await exchange(conn, "POST", path, headers, _rpc(None, "notifications/initialized"))
    if reply.status not in (200, 202, 204):
        msg = f"notifications/initialized answered {reply.status} {reply.body[:120]!r}"
        raise ProtocolError(msg)
    return headers


@attrs.define
class _Tally:
    sessions: int = 0
    opened: int = 0
    calls: int = 0
    requests: int = 0
    errors: int = 0
    seen: int = 0
    latencies: list[float] = attrs.field(factory=list)
    kinds: dict[str, int] = attrs.field(factory=dict)
    rng: random.Random = attrs.field(factory=lambda: random.Random(7))

    def latency(self, seconds: float) -> None:
        self.seen += 1
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(seconds)
        elif (slot := self.rng.randrange(self.seen)) < LATENCY_SAMPLES:
            self.latencies[slot] = seconds

    def error(self, kind: str) -> None:
        self.errors += 1
        if kind not in self.kinds and len(self.kinds) >= ERROR_KINDS:
            kind = "other"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


async def _worker(
    host: str,
    port: int,
    path: str,
    token: str | None,
    calls_per_session: int,
    deadline: float,
    tally: _Tally,
) -> None:
    conn = Connection(host, port)
    try:
        while time.monotonic() < deadline:
            try:
                headers = await open_session(conn, path, token)
                tally.opened += 1
                tally.requests += 2
                for i in range(calls_per_session):
                    request_id = i + 2
                    params = {"name": "echo", "arguments": {"text": f"hello {i}"}}
                    body = _rpc(request_id, "tools/call", params)
                    reply = await exchange(conn, "POST", path, headers, body, request_id=request_id)
                    tally.requests += 1
                    msg = reply.message
                    if reply.status != 200 or msg is None or "result" not in msg:
                        tally.error(f"tools/call {reply.status} {reply.body[:80]!r}")
                    elif msg["result"].get("isError"):
                        tally.error(f"tools/call isError {str(msg['result'])[:80]}")
                    else:
                        tally.calls += 1
                        tally.latency(reply.elapsed)
                if "mcp-session-id" in headers:
                    reply = await exchange(conn, "DELETE", path, headers)
                    tally.requests += 1
                    if reply.status not in (200, 202, 204):
                        tally.error(f"DELETE {reply.status}")
                        continue
                tally.sessions += 1
            except (OSError, trio.BrokenResourceError, ProtocolError, ValueError) as exc:
                tally.error(f"{type(exc).__name__}: {str(exc)[:80]}")
                await conn.aclose()
                await trio.sleep(RECONNECT_PAUSE)
    finally:
        await conn.aclose()


async def run_load(
    host: str,
    port: int,
    workers: int,
    duration: float,
    token: str | None = None,
    *,
    path: str = "/mcp",
    calls_per_session: int = 10,
) -> LoadPoint:
    """Run the session workload with ``workers`` concurrent clients, each on its own keep-alive
    connection, starting sessions until ``duration`` seconds have passed (a started session is
    finished). Every request carries ``Authorization: Bearer token`` when a token is given."""
    tally = _Tally()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(
                _worker, host, port, path, token, calls_per_session, t0 + duration, tally
            )
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    lat = sorted(tally.latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    return LoadPoint(
        workers=workers,
        seconds=wall,
        sessions=tally.sessions,
        calls=tally.calls,
        errors=tally.errors,
        call_p50_ms=pct(0.50),
        call_p99_ms=pct(0.99),
        generator_cpu_s=cpu,
        error_kinds=dict(sorted(tally.kinds.items(), key=lambda kv: -kv[1])),
        opened=tally.opened,
        requests=tally.requests,
    )
