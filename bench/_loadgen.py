"""A lean HTTP/1.1 keep-alive load generator (Trio, hand-written request bytes).

An httpx-based generator saturates its own core before the server does; this one writes request
bytes directly and parses only what it needs (status, headers, Content-Length or chunked bodies).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import attrs
import trio


@attrs.define
class Result:
    sessions: int = 0
    calls: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = attrs.field(factory=dict)
    latencies: list[float] = attrs.field(factory=list)


class Conn:
    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.buf = b""

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    async def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            await self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    async def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await self.stream.send_all(head.encode() + b"\r\n" + body)
        status_line = await self._line()
        status = int(status_line.split(b" ", 2)[1])
        hdrs: dict[str, str] = {}
        while True:
            line = await self._line()
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await self._exact(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self._line()).split(b";")[0], 16)
                if size == 0:
                    await self._line()
                    break
                parts.append(await self._exact(size))
                await self._exact(2)
            data = b"".join(parts)
        else:
            data = b""
        return status, hdrs, data


def _rpc_result(hdrs: dict[str, str], data: bytes) -> Any:
    if hdrs.get("content-type", "").startswith("text/event-stream"):
        for block in data.decode().split("\n\n"):
            for line in block.split("\n"):
                if line.startswith("data:") and line[5:].strip():
                    msg = json.loads(line[5:])
                    if "result" in msg or "error" in msg:
                        return msg
        return None
    return json.loads(data) if data else None


async def session_worker(
    host: str,
    port: int,
    token: str | None,
    deadline: float,
    result: Result,
    calls_per_session: int = 10,
) -> None:
    stream = await trio.open_tcp_stream(host, port)
    conn = Conn(stream, f"{host}:{port}")
    base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token:
        base["authorization"] = f"Bearer {token}"
    try:
        while time.monotonic() < deadline:
            init = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"},
                    },
                }
            ).encode()
            status, hdrs, data = await conn.request("POST", "/mcp", base, init)
            if status != 200:
                result.errors += 1
                await trio.sleep(0.01)
                continue
            sid = hdrs["mcp-session-id"]
            h = {**base, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
            await conn.request(
                "POST", "/mcp", h, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
            )
            for i in range(calls_per_session):
                body = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": i + 2,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": "hello"}},
                    }
                ).encode()
                t0 = time.perf_counter()
                status, hdrs, data = await conn.request("POST", "/mcp", h, body)
                elapsed = time.perf_counter() - t0
                msg = _rpc_result(hdrs, data) if status == 200 else None
                if msg is None or "result" not in msg:
                    result.errors += 1
                    kind = f"{status}:{data[:80].decode(errors='replace')}"
                    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                else:
                    result.calls += 1
                    result.latencies.append(elapsed)
            await conn.request("DELETE", "/mcp", h)
            result.sessions += 1
    finally:
        await stream.aclose()


async def run_load(
    host: str, port: int, workers: int, duration: float, token: str | None = None
) -> dict[str, Any]:
    result = Result()
    cpu0 = os.times()
    t0 = time.monotonic()
    deadline = t0 + duration
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(session_worker, host, port, token, deadline, result)
    wall = time.monotonic() - t0
    cpu1 = os.times()
    lat = sorted(result.latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else 0.0

    return {
        "workers": workers,
        "seconds": round(wall, 2),
        "sessions_per_s": round(result.sessions / wall, 1),
        "calls_per_s": round(result.calls / wall, 1),
        "call_p50_ms": pct(0.50),
        "call_p99_ms": pct(0.99),
        "errors": result.errors,
        "error_kinds": dict(sorted(result.error_kinds.items(), key=lambda kv: -kv[1])[:3]),
        "generator_cpu_fraction": round(
            ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall, 2
        ),
    }
