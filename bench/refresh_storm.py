"""refresh-storm: SESSIONS live user sessions whose upstream tokens all expire within one second.

SESSIONS users sign in through Steward's OAuth flow (the development IdP issues each grant its
upstream access and refresh tokens). Their upstream tokens' expiry is then set, in PostgreSQL,
to moments spread over one second starting at ``expiry``, and one ``initialize`` per user brings
each user session's actor up, whose token keeper reads that expiry and sleeps until
``refresh_lead`` (± ``refresh_jitter``) before it. ``expiry`` is chosen so that every session is
up before the first keeper's window opens, at a start rate (HYDRATE_RATE) well below what the
machine does under load; a session up later is counted (``sessions_up_inside_window``) as a
failure of the run, since it would measure start-up, not the storm. (A keeper reads the expiry
when its session starts, so the expiry cannot be set after the sessions are up.) Every
``initialize`` that does not answer 200 is kept by status and body. The benchmark then watches ``upstream_tokens`` until every
row has been refreshed (``refresh_generation`` bumped, ``updated_at`` the commit's time), waits
SETTLE more seconds for any late duplicate, and reports: the IdP's refresh calls (its own
counter, read through its control endpoint) per session, the rows refreshed once, more than once
and never, the time from the first refresh to the last, how long before the first token would
have expired the last refresh committed, and the refresh failures Steward counted (/metrics).

The session policy is Steward's default (lead 60 s, jitter 0.2: keepers wake over 24 s, about
2.4 minutes for a whole run with 10,000 sessions); ``--quick`` uses 30 sessions and a 3 s lead.
The SDK peer has no upstream identity provider and refreshes nothing: no peer figure, no ratio.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import asyncpg
import httpx
import trio

from bench._loadgen import (
    ERROR_KINDS,
    INITIALIZE,
    Connection,
    ProtocolError,
    _rpc,
    base_headers,
    exchange,
)
from bench._servers import (
    SERVER_CORE,
    Server,
    obtain_tokens,
    on_steward,
)

SESSIONS = 10_000
QUICK_SESSIONS = 30
LEAD, JITTER = 60.0, 0.2  # SessionPolicy's defaults
QUICK_LEAD = 3.0
WINDOW = 1.0  # seconds over which the tokens expire
HYDRATE_RATE = 25.0  # initialize/s assumed when choosing the expiry: below what this 2-core
# machine did under a load of 8.7 (60/s). A session that still comes up after the first keeper's
# window opened would refresh as soon as it is up, which measures start-up, not the storm: the
# run counts those (``sessions_up_inside_window``) as failures and reports no figure as good
OPENERS = 16
SETTLE = 3.0  # seconds watched after the last refresh, for duplicates
WATCH_LIMIT = 120.0  # seconds after the expiry window before the rows still unrefreshed count
PEER_NOTE = "the MCP SDK server has no upstream identity provider and refreshes nothing"
USER_PREFIX = "storm"


async def _set_expiry(dsn: str, expiry: float) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        result = await conn.execute(
            # tokens of an hour near their end: the lead is the configured one, not a quarter
            # of the few seconds since the sign-in (docs/sessions.md)
            "UPDATE upstream_tokens u SET access_expires_at = to_timestamp($1 + random() * $2), "
            "access_issued_at = to_timestamp($1) - interval '1 hour' "
            "FROM grants g WHERE g.grant_id = u.grant_id AND g.user_id LIKE '%' || $3 || '%'",
            expiry,
            WINDOW,
            f"|{USER_PREFIX}",
        )
    finally:
        await conn.close()
    return int(result.split()[-1])


async def _watch(dsn: str, sessions: int, deadline: float, settle: float) -> dict[str, Any]:
    """Poll the storm's rows until every one is refreshed (or the deadline), then ``settle`` s
    more."""
    query = (
        "SELECT refresh_generation AS generation, count(*) AS n, "
        "extract(epoch FROM min(u.updated_at)) AS first, extract(epoch FROM max(u.updated_at)) AS last "
        "FROM upstream_tokens u JOIN grants g USING (grant_id) "
        "WHERE g.user_id LIKE '%' || $1 GROUP BY refresh_generation"
    )
    conn = await asyncpg.connect(dsn)
    try:
        settled_at: float | None = None
        while True:
            rows = await conn.fetch(query, f"|{USER_PREFIX}%")
            refreshed = sum(r["n"] for r in rows if r["generation"] >= 1)
            now = time.time()
            if refreshed >= sessions and settled_at is None:
                settled_at = now
            if (settled_at is not None and now - settled_at >= settle) or now > deadline:
                break
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    by_generation = {int(r["generation"]): int(r["n"]) for r in rows}
    done = [r for r in rows if r["generation"] >= 1]
    return {
        "by_generation": by_generation,
        "first_refresh": min((float(r["first"]) for r in done), default=None),
        "last_refresh": max((float(r["last"]) for r in done), default=None),
    }


async def _hydrate(server: Server, tokens: list[str]) -> tuple[list[float], dict[str, int]]:
    """One initialize per user session (its actor starts and its keeper reads the tokens): the
    wall-clock time each one answered 200, and the others by status and body (or exception)."""
    todo = iter(tokens)
    ok: list[float] = []
    failures: dict[str, int] = {}

    def fail(kind: str) -> None:
        if kind not in failures and len(failures) >= ERROR_KINDS:
            kind = "other"
        failures[kind] = failures.get(kind, 0) + 1

    async def opener() -> None:
        conn = Connection("127.0.0.1", server.port)
        try:
            for token in todo:
                body = _rpc(1, "initialize", INITIALIZE)
                try:
                    reply = await exchange(
                        conn, "POST", server.path, base_headers(token), body, request_id=1
                    )
                except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                    fail(f"{type(exc).__name__}: {str(exc)[:100]}")
                    await conn.aclose()
                    continue
                if reply.status == 200:
                    ok.append(time.time())
                else:
                    fail(f"{reply.status} {reply.body[:160]!r}")
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(OPENERS):
            nursery.start_soon(opener)
    return ok, failures


def _idp_refreshes(server: Server) -> int:
    r = httpx.post(
        f"{server.ready['dev_idp_url']}/_control/stats",
        headers={"x-control-secret": server.ready["dev_idp_control_secret"]},
    )
    r.raise_for_status()
    return int(r.json()["calls"].get("refresh", 0))


def _failures(server: Server) -> dict[str, int]:
    text = httpx.get(f"{server.ready['base_url']}/metrics").text
    found = re.findall(r'steward_upstream_refreshes_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)
    return {outcome: int(float(n)) for outcome, n in found}


def _measure(server: Server, sessions: int, lead: float, settle: float) -> dict[str, Any]:
    dsn = server.ready["dsn"]
    users = [f"{USER_PREFIX}{i}" for i in range(sessions)]
    t0 = time.monotonic()
    tokens = trio.run(lambda: obtain_tokens(server.ready, users, concurrency=OPENERS))
    signed_in_s = time.monotonic() - t0
    expiry = time.time() + lead * (1 + JITTER) + sessions / HYDRATE_RATE + 1.0
    updated = asyncio.run(_set_expiry(dsn, expiry))
    calls_before = _idp_refreshes(server)
    t1 = time.monotonic()
    up_at, hydrate_failures = trio.run(_hydrate, server, tokens)
    hydrated = len(up_at)
    window_opens = expiry - lead * (1 + JITTER)  # the earliest a keeper may wake
    late = sum(1 for t in up_at if t >= window_opens)
    if late:
        hydrate_failures[
            f"up after the first refresh window opened (at {HYDRATE_RATE}/s assumed)"
        ] = late
    hydrate_s = time.monotonic() - t1
    watched = asyncio.run(_watch(dsn, sessions, expiry + WINDOW + WATCH_LIMIT, settle))
    calls = _idp_refreshes(server) - calls_before
    by_gen = watched["by_generation"]
    first, last = watched["first_refresh"], watched["last_refresh"]
    return {
        "available": True,
        "sessions": sessions,
        "sign_in_s": round(signed_in_s, 1),
        "rows_given_the_expiry": updated,
        "hydrated": hydrated,
        # initialize not answered 200 (no session, no refresh), or answered inside the window
        "errors": sessions - hydrated + late,
        "sessions_up_inside_window": late,
        "last_up_before_window_s": round(window_opens - max(up_at), 2) if up_at else None,
        "error_kinds": hydrate_failures,
        "hydrate_s": round(hydrate_s, 1),
        "idp_refresh_calls": calls,
        "refresh_generations": by_gen,
        "first_refresh_to_last_s": None if first is None else round(last - first, 2),
        "last_refresh_before_expiry_s": None if last is None else round(expiry - last, 2),
        "failures": {k: v for k, v in _failures(server).items() if k != "ok"},
    }


def run(
    *,
    quick: bool = False,
    sessions: int | None = None,
    lead: float | None = None,
    settle: float = SETTLE,
) -> dict[str, Any]:
    sessions = sessions or (QUICK_SESSIONS if quick else SESSIONS)
    lead = lead or (QUICK_LEAD if quick else LEAD)
    options = ["--refresh-lead", str(lead), "--refresh-jitter", str(JITTER)]
    core, measured = on_steward(options, lambda server: _measure(server, sessions, lead, settle))
    figures: dict[str, Any] = {"sessions": sessions, "refresh_lead_s": lead, "jitter": JITTER}
    if measured["available"]:
        by_gen = measured["refresh_generations"]
        figures.update(
            {
                "idp_refresh_calls": measured["idp_refresh_calls"],
                "idp_refresh_calls_per_session": round(measured["idp_refresh_calls"] / sessions, 4),
                "sessions_refreshed_once": by_gen.get(1, 0),
                "sessions_refreshed_more_than_once": sum(n for g, n in by_gen.items() if g > 1),
                "sessions_not_refreshed": by_gen.get(0, 0),
                "sessions_up_inside_window": measured["sessions_up_inside_window"],
                "initialize_failures": measured["error_kinds"],
                "first_refresh_to_last_s": measured["first_refresh_to_last_s"],
                "last_refresh_before_expiry_s": measured["last_refresh_before_expiry_s"],
                "refresh_errors": sum(measured["failures"].values()),
            }
        )
    out: dict[str, Any] = {
        "benchmark": "refresh-storm",
        "server_core": SERVER_CORE if core is not None else None,
        "generator_core": core,
        "servers": {"steward": measured},
        "figures": figures,
        "ratios": {},
        "peer": PEER_NOTE,
        "goal": "idp_refresh_calls_per_session == 1",
    }
    if not measured["available"]:
        out["unavailable"] = {"steward": measured["reason"]}
    return out
