"""group-commit: the store's rows/s and acknowledgement latency with 1, 8 and 64 concurrent
writers, against one transaction per write through asyncpg and the raw ceiling (COPY of the same
rows in large batches), on one durable PostgreSQL cluster (fsync on) in the same run."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import trio
import trio_asyncio

from actors import Op, Store, migrate, store_child_spec
from runtime import Supervisor
from server.postgres._embedded import EmbeddedPostgres

SQL = "INSERT INTO usage_events (event_id, user_id, method, tier, outcome, occurred_at) VALUES ($1, $2, 'tools/call', 'free', 'ok', now()) ON CONFLICT DO NOTHING"


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 2) if values else 0.0


async def _store_point(store: Store, writers: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def writer(i: int) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await store.write(Op(SQL, (uuid.uuid4(), f"u{i}")))
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(writer, i)
    elapsed = time.perf_counter() - t0
    return {
        "rows_per_s": round(len(latencies) / elapsed),
        "ack_p50_ms": _pct(latencies, 0.5),
        "ack_p99_ms": _pct(latencies, 0.99),
    }


async def _naive_point(dsn: str, writers: int, duration: float) -> dict[str, Any]:
    """One transaction per write, each writer on its own connection (asyncio inside trio-asyncio)."""

    async def run() -> dict[str, Any]:
        import asyncio

        pool = await asyncpg.create_pool(dsn, min_size=writers, max_size=writers)
        count = 0
        deadline = time.perf_counter() + duration

        async def writer(i: int) -> None:
            nonlocal count
            async with pool.acquire() as conn:
                while time.perf_counter() < deadline:
                    async with conn.transaction():
                        await conn.execute(SQL, uuid.uuid4(), f"n{i}")
                    count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(writers)))
        elapsed = time.perf_counter() - t0
        await pool.close()
        return {"rows_per_s": round(count / elapsed)}

    async with trio_asyncio.open_loop() as loop:
        result: dict[str, Any] = await loop.run_aio_coroutine(run())
        return result


async def _ceiling(dsn: str, rows: int) -> float:
    async def run() -> float:
        conn = await asyncpg.connect(dsn)
        now = __import__("datetime").datetime.now(__import__("datetime").UTC)
        records = [(uuid.uuid4(), "c", "tools/call", "free", "ok", now) for _ in range(rows)]
        t0 = time.perf_counter()
        for i in range(0, rows, 10_000):
            await conn.copy_records_to_table(
                "usage_events",
                records=records[i : i + 10_000],
                columns=["event_id", "user_id", "method", "tier", "outcome", "occurred_at"],
            )
        elapsed = time.perf_counter() - t0
        await conn.close()
        return rows / elapsed

    async with trio_asyncio.open_loop() as loop:
        rate: float = await loop.run_aio_coroutine(run())
        return rate


async def _run(duration: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="stw-gc-"))
    os.chmod(folder, 0o755)
    cluster = EmbeddedPostgres(folder, durable=True)
    await cluster.start()
    try:
        dsn = cluster.dsn()
        store = Store(dsn)
        out: dict[str, Any] = {"store": {}, "naive": {}}
        async with trio.open_nursery() as nursery:
            sup = await nursery.start(Supervisor("bench", [store_child_spec(store)]).run)
            await migrate(store)
            for w in (1, 8, 64):
                out["store"][str(w)] = await _store_point(store, w, duration)
            await sup.stop()
        for w in (1, 8, 64):
            out["naive"][str(w)] = await _naive_point(dsn, w, duration)
        out["ceiling_rows_per_s"] = round(await _ceiling(dsn, 200_000))
        return out
    finally:
        await cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def run(duration: float = 5.0) -> dict[str, Any]:
    out = trio.run(_run, duration)
    store64, naive64 = out["store"]["64"], out["naive"]["64"]["rows_per_s"]
    figures = {
        "rows_per_s_64": store64["rows_per_s"],
        "ack_p99_ms_64": store64["ack_p99_ms"],
        "ceiling_rows_per_s": out["ceiling_rows_per_s"],
    }
    ratios = {
        "vs_naive_64": round(store64["rows_per_s"] / naive64, 2) if naive64 else None,
        "vs_ceiling_64": round(store64["rows_per_s"] / out["ceiling_rows_per_s"], 3),
    }
    return {"benchmark": "group-commit", "details": out, "figures": figures, "ratios": ratios}
