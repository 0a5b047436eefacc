"""soak: Steward under mixed load for many minutes; are its memory and open files flat?

``python -m bench soak [--minutes 10]`` (not part of ``all``, not in CI). One ``steward serve``
subprocess (the server core) gets, from this process (the generator core), at once:

- session workers: ``initialize`` → 10 x ``tools/call echo`` → ``DELETE``, over and over
  (the tool-calls workload of ``bench._loadgen``);
- stream churners: a new session, a ``GET`` SSE stream on it held for a random 1 to 5 seconds
  and read (keep-alives included), closed by the client, then ``DELETE``, over and over.

Every ``SAMPLE_EVERY`` seconds the server's RSS (``/proc/PID/status``) and open file descriptors
(``/proc/PID/fd``) are read. After ``WARM_UP`` of the run, a least-squares line through the
samples gives the drift per minute; a figure is flat when its line moves less than
``FLAT_RSS_FRACTION`` of the mean RSS (or ``FLAT_FDS`` descriptors) over the measured window.
Steward's embedded PostgreSQL is a separate process and is not measured.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import attrs
import trio

from bench._loadgen import (
    ERROR_KINDS,
    Body,
    Connection,
    ProtocolError,
    exchange,
    open_session,
    run_load,
)
from bench._servers import Server, Unavailable, generator_pinned, rss_kb, steward

SAMPLE_EVERY = 5.0  # seconds between samples of the server
WARM_UP = 0.2  # fraction of the run before the drift is measured (caches and pools fill)
SESSION_WORKERS = 4
STREAM_CHURNERS = 4  # below the free tier's 10 streams per user
HOLD = (1.0, 5.0)  # seconds a churned stream is held open
FLAT_RSS_FRACTION = 0.05  # RSS drift over the measured window, as a fraction of the mean
FLAT_FDS = 5  # open descriptors gained over the measured window


@attrs.frozen
class Sample:
    at: float  # seconds since the load started
    rss_kb: int
    fds: int


@attrs.define
class _Streams:
    opened: int = 0
    events: int = 0
    errors: int = 0
    kinds: dict[str, int] = attrs.field(factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        if kind in self.kinds or len(self.kinds) < ERROR_KINDS:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) points, per minute (0 for fewer than 2)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / var * 60.0


async def _churn(server: Server, deadline: float, rng: random.Random, tally: _Streams) -> None:
    conn = Connection("127.0.0.1", server.port)
    try:
        while time.monotonic() < deadline:
            try:
                headers = await open_session(conn, server.path, server.token)
                stream = Connection("127.0.0.1", server.port)
                try:
                    get = {k: v for k, v in headers.items() if k != "content-type"}
                    await stream.send_request(
                        "GET", server.path, {**get, "accept": "text/event-stream"}
                    )
                    status, head = await stream.read_head()
                    if status != 200:
                        tally.error(f"GET {status}")
                        continue
                    tally.opened += 1
                    body = Body(stream, head)
                    with trio.move_on_after(rng.uniform(*HOLD)):
                        while await body.next() is not None:
                            tally.events += 1
                finally:
                    await stream.aclose()  # the client leaves: the server closes the stream
                await conn.aclose()  # idle while the stream was held: past the keep-alive timeout
                reply = await exchange(conn, "DELETE", server.path, headers)
                if reply.status not in (200, 202, 204):
                    tally.error(f"DELETE {reply.status}")
            except (OSError, trio.BrokenResourceError, ProtocolError, ValueError) as exc:
                tally.error(f"{type(exc).__name__}: {str(exc)[:80]}")
                await conn.aclose()
                await trio.sleep(0.05)
    finally:
        await conn.aclose()


async def _sample(pid: int, started: float, deadline: float, samples: list[Sample]) -> None:
    while True:
        samples.append(Sample(round(time.monotonic() - started, 1), rss_kb(pid), open_fds(pid)))
        if time.monotonic() >= deadline:
            return
        await trio.sleep(min(SAMPLE_EVERY, max(0.0, deadline - time.monotonic())))


async def _soak(server: Server, seconds: float) -> dict[str, Any]:
    samples: list[Sample] = []
    streams = _Streams()
    rng = random.Random(11)
    started = time.monotonic()
    deadline = started + seconds
    load: dict[str, Any] = {}

    async def sessions() -> None:
        point = await run_load(
            "127.0.0.1", server.port, SESSION_WORKERS, seconds, server.token, path=server.path
        )
        load.update(point.as_dict())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample, server.pid, started, deadline, samples)
        nursery.start_soon(sessions)
        for _ in range(STREAM_CHURNERS):
            nursery.start_soon(_churn, server, deadline, rng, streams)
    await trio.sleep(SAMPLE_EVERY)  # the last streams close on the server's side
    after = Sample(round(time.monotonic() - started, 1), rss_kb(server.pid), open_fds(server.pid))
    return _figures(samples, after, seconds, load, streams)


def _figures(
    samples: list[Sample],
    after: Sample,
    seconds: float,
    load: dict[str, Any],
    streams: _Streams,
) -> dict[str, Any]:
    """The drift of the samples taken under load after the warm-up; ``after`` is the sample
    taken once the load stopped."""
    measured = [s for s in samples if s.at >= WARM_UP * seconds]
    window_min = (measured[-1].at - measured[0].at) / 60 if len(measured) > 1 else 0.0
    rss_slope = slope_per_minute([(s.at, s.rss_kb) for s in measured])
    fds_slope = slope_per_minute([(s.at, s.fds) for s in measured])
    mean_rss = sum(s.rss_kb for s in measured) / max(1, len(measured))
    figures = {
        "minutes": round(seconds / 60, 1),
        "samples": len(samples),
        "rss_kb_start": samples[0].rss_kb,
        "rss_kb_after_warm_up": measured[0].rss_kb if measured else None,
        "rss_kb_end": samples[-1].rss_kb,
        "rss_kb_after_load": after.rss_kb,
        "rss_kb_max": max(s.rss_kb for s in samples),
        "rss_slope_kb_per_min": round(rss_slope, 1),
        "rss_flat": abs(rss_slope * window_min) < FLAT_RSS_FRACTION * mean_rss,
        "fds_start": samples[0].fds,
        "fds_end": samples[-1].fds,
        "fds_after_load": after.fds,
        "fds_max": max(s.fds for s in samples),
        "fds_slope_per_min": round(fds_slope, 2),
        "fds_flat": abs(fds_slope * window_min) < FLAT_FDS,
        "sessions": load.get("sessions"),
        "tool_calls": load.get("calls"),
        "call_p50_ms": load.get("call_p50_ms"),
        "call_p99_ms": load.get("call_p99_ms"),
        "load_errors": load.get("errors"),
        "streams_opened": streams.opened,
        "stream_errors": streams.errors,
    }
    return {
        "benchmark": "soak",
        "figures": figures,
        "load": load,
        "stream_error_kinds": streams.kinds,
        # a failed point for bench/_honest.py, as the load's errors are
        "streams": {"errors": streams.errors, "error_kinds": streams.kinds},
        "samples": [attrs.asdict(s) for s in [*samples, after]],
    }


def run(*, minutes: float = 10.0) -> dict[str, Any]:
    with generator_pinned():
        try:
            with steward() as server:
                return trio.run(_soak, server, minutes * 60)
        except Unavailable as exc:
            return {"benchmark": "soak", "figures": {}, "unavailable": str(exc)}
