"""Operator commands: ``steward sessions list|show|end``, ``steward users
revoke|reinstate|set-tier|clear-tier``, ``steward keys rotate`` and ``steward usage``
(server/cli/_usage.py).

They talk to the database (the embedded cluster of the data folder, or the configured URL) and
publish cluster events, so every running node closes the affected streams at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from actors import (
    OPERATOR_ENDED,
    OPERATOR_REINSTATED,
    OPERATOR_REVOKED,
    AmbiguousUser,
    GrantStatus,
    RotationBlocked,
    Store,
    UnknownUser,
    UserChange,
    end_grants_ops,
    grant_detail,
    grant_user,
    list_grants,
    live_grants_of,
    override_tier,
    reinstate_user,
    resolve_user,
    revoke_user,
    rotate_keys,
    store_child_spec,
    user_names,
)
from runtime import Supervisor
from server.cli._progress import Progress
from server.cli._usage import add_usage_command, run_usage
from server.config import ConfigError, Settings

__all__ = ["add_commands", "run_command"]

ORIGIN = "cli"
_SESSION_HELP = "a session id (a UUID, as `steward sessions list` shows)"
_USER_HELP = (
    "a user: the full id (<issuer>|<subject>, as `--json` shows) or the name `sessions list` "
    "shows, where only one user has it"
)


def add_commands(sub: Any) -> None:
    sessions = sub.add_parser("sessions", help="list, show or end user sessions").add_subparsers(
        dest="action", required=True
    )
    ls = sessions.add_parser("list", help="user sessions, newest first")
    ls.add_argument(
        "--user", default="", help="only users whose id contains this (default: every user)"
    )
    ls.add_argument(
        "--status",
        default="",
        help="only this status (active, revoked, …; default: every status)",
    )
    ls.add_argument("--limit", type=int, default=50, help="at most this many sessions")
    show = sessions.add_parser(
        "show", help="one user session with its streams and transport sessions"
    )
    show.add_argument("grant_id", help=_SESSION_HELP)
    end = sessions.add_parser(
        "end", help="end a user session, or every active session of a user, on every node"
    )
    end.add_argument("grant_id", nargs="?", help=_SESSION_HELP)
    end.add_argument(
        "--user",
        help="end every active session of this user instead (a user id, or a user's name where "
        "only one user has it; default: none, give a session id)",
    )
    users = sub.add_parser(
        "users", help="revoke or reinstate a user, or change a tier"
    ).add_subparsers(dest="action", required=True)
    revoke = users.add_parser(
        "revoke",
        help="revoke every session of a user on every node (and upstream) and refuse their sign-in",
    )
    revoke.add_argument("user_id", help=_USER_HELP)
    reinstate = users.add_parser(
        "reinstate",
        help="lift a user's revocation: they may sign in again (ended sessions stay ended)",
    )
    reinstate.add_argument("user_id", help=_USER_HELP)
    tier = users.add_parser(
        "set-tier",
        help="override a user's subscription tier everywhere; it holds until clear-tier, "
        "whatever the identity provider says",
    )
    tier.add_argument("user_id", help=_USER_HELP)
    tier.add_argument(
        "tier", help="one of the configured tiers (free, pro, enterprise unless configured)"
    )
    clear = users.add_parser(
        "clear-tier",
        help="clear a user's tier override: the identity provider's tier applies again",
    )
    clear.add_argument("user_id", help=_USER_HELP)
    keys = sub.add_parser("keys", help="the upstream-token encryption key").add_subparsers(
        dest="action", required=True
    )
    rotate = keys.add_parser(
        "rotate",
        help="add a new key, re-encrypt every stored upstream token with it, retire the old one "
        "(resumes an interrupted rotation)",
    )
    rotate.add_argument("--batch", type=int, default=500, help="rows per transaction")
    rotate.add_argument(
        "--wait", type=float, default=30.0, help="seconds running nodes get to load the new key"
    )
    usage = add_usage_command(sub)
    for p in (ls, show, end, revoke, reinstate, tier, clear, rotate, usage):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--data-dir",
            type=str,
            help="the data folder whose private PostgreSQL holds the sessions "
            "(default: steward-data, or the setting data_dir / STEWARD_DATA_DIR)",
        )
        p.add_argument(
            "--database-url",
            help="postgresql://… of the database instead "
            "(default: none, or the setting database_url / STEWARD_DATABASE_URL)",
        )


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        msg = f"{text!r} is not a session id (a UUID, as `steward sessions list` shows)"
        raise ConfigError(msg) from None


def _out(args: argparse.Namespace, payload: Any, human: Callable[[Any], str]) -> None:
    print(json.dumps(payload, default=str, indent=2) if args.json else human(payload))


async def _with_store(dsn: str, fn: Callable[[Store], Awaitable[None]]) -> None:
    store = Store(dsn)
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(Supervisor("cli", [store_child_spec(store)]).run)
        try:
            await fn(store)
        finally:
            await sup.stop()


async def _sessions_list(store: Store, args: argparse.Namespace) -> None:
    found = await list_grants(store, user=args.user, status=args.status, limit=args.limit)
    names = await user_names(store, (r["user_id"] for r in found))
    rows = [
        {
            **{k: r[k] for k in ("grant_id", "user_id", "client_id", "tier", "status")},
            "last_seen_at": r["last_seen_at"],
            "streams": r["open_streams"],
            "user_name": names.get(r["user_id"], r["user_id"]),
        }
        for r in found
    ]

    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no sessions"
        lines = [
            f"{'SESSION':36}  {'STATUS':15}  {'TIER':10}  {'STREAMS':7}  {'LAST SEEN':19}  USER"
        ]
        for r in rows:
            seen = r["last_seen_at"].astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(
                f"{r['grant_id']!s:36}  {r['status']:15}  {r['tier']:10}  {r['streams']:7}  {seen}  {r['user_name']}"
            )
        return "\n".join(lines)

    _out(args, rows, human)


async def _sessions_show(store: Store, args: argparse.Namespace) -> None:
    grant_id = _uuid(args.grant_id)
    payload = await grant_detail(store, grant_id)
    if payload is None:
        msg = f"no session {grant_id}"
        raise ConfigError(msg)
    grant = payload["session"]
    names = await user_names(store, [grant["user_id"]])
    payload["session"] = {**grant, "user_name": names.get(grant["user_id"], grant["user_id"])}

    def human(p: dict[str, Any]) -> str:
        g = p["session"]
        lines = [
            f"session   {g['grant_id']}",
            f"user      {g['user_name']}  ({g['user_id']})",
            f"client    {g['client_id']}",
            f"status    {g['status']}" + (f" ({g['status_reason']})" if g["status_reason"] else ""),
            f"tier      {g['tier']}"
            + (" (an operator's override)" if g["tier_override"] else " (the identity provider's)"),
            f"scopes    {' '.join(g['scopes'])}",
            f"expires   {g['expires_at']}",
            "",
        ]
        lines.append(f"streams ({sum(1 for s in p['streams'] if s['closed_at'] is None)} open)")
        lines += [
            f"  {s['kind']:10} {s['node_id']:16} {'open' if s['closed_at'] is None else 'closed: ' + str(s['close_reason'])}"
            for s in p["streams"]
        ]
        lines.append(f"transport sessions ({len(p['transport_sessions'])})")
        lines += [
            f"  {t['session_id']}  {t['protocol_version']}  {'ended' if t['ended_at'] else 'live'}"
            for t in p["transport_sessions"]
        ]
        return "\n".join(lines)

    _out(args, payload, human)


END_BATCH = 100  # sessions ended per transaction


async def _sessions_end(store: Store, args: argparse.Namespace) -> None:
    if (args.grant_id is None) == (args.user is None):
        msg = "give a session id or --user, not both"
        raise ConfigError(msg)
    if args.grant_id is not None:
        grant_id = _uuid(args.grant_id)
        if await grant_user(store, grant_id) is None:
            msg = f"no session {grant_id}"
            raise ConfigError(msg)
        await _end_grants(store, [grant_id])
        _out(args, {"ended": str(grant_id)}, lambda p: f"ended session {p['ended']}")
        return
    grants = await live_grants_of(store, args.user)
    progress = Progress("ending sessions", enabled=not args.json)
    progress(0, len(grants))
    for start in range(0, len(grants), END_BATCH):
        chunk = grants[start : start + END_BATCH]
        await _end_grants(store, chunk)
        progress(start + len(chunk), len(grants))
    progress.close()
    _out(
        args,
        {"user_id": args.user, "ended": [str(g) for g in grants]},
        lambda p: f"ended {len(p['ended'])} sessions of {p['user_id']}",
    )


async def _end_grants(store: Store, grants: list[uuid.UUID]) -> None:
    """End these sessions in one transaction and tell every node, as the admin API does
    (actors/_grants.py: audited, their subscriptions dropped, their upstream tokens revoked by a
    running node)."""
    await store.write(
        *end_grants_ops(grants, status=GrantStatus.ENDED, message=OPERATOR_ENDED, origin=ORIGIN)
    )


def _no_user(user_id: str) -> ConfigError:
    return ConfigError(
        f"no user {user_id!r} (ids look like <issuer>|<subject>; see `steward sessions list`)"
    )


async def _users_revoke(store: Store, args: argparse.Namespace) -> None:
    change = await revoke_user(store, args.user_id, reason=OPERATOR_REVOKED, origin=ORIGIN)
    if change is UserChange.UNKNOWN_USER:
        raise _no_user(args.user_id)
    _out(args, {"revoked": args.user_id}, lambda p: f"revoked {p['revoked']}")


async def _users_reinstate(store: Store, args: argparse.Namespace) -> None:
    change = await reinstate_user(store, args.user_id, origin=ORIGIN, reason=OPERATOR_REINSTATED)
    if change is UserChange.UNKNOWN_USER:
        raise _no_user(args.user_id)
    payload = {"user_id": args.user_id, "reinstated": change is UserChange.CHANGED}
    _out(
        args,
        payload,
        lambda p: (
            f"reinstated {p['user_id']}: they may sign in again"
            if p["reinstated"]
            else f"{p['user_id']} is not revoked; nothing changed"
        ),
    )


async def _users_set_tier(
    store: Store, args: argparse.Namespace, settings: Settings, *, clear: bool = False
) -> None:
    """An operator's tier override (docs/security.md, "Tiers"): set, it holds until cleared,
    whatever the identity provider says; cleared, the provider's last tier applies again.
    Every node's live sessions of the user take the tier up (the tier_changed event)."""
    tier = None if clear else args.tier
    if tier is not None and tier not in settings.tier_names():
        msg = f"tier must be one of {', '.join(settings.tier_names())}, got {tier!r}"
        raise ConfigError(msg)

    change = await override_tier(store, args.user_id, tier, origin=ORIGIN)
    if change is None:
        msg = f"no user {args.user_id!r} (user ids are as `steward sessions list` shows them)"
        raise ConfigError(msg)
    _out(
        args,
        {"user_id": args.user_id, "tier": change.after, "override": tier},
        lambda p: (
            f"{p['user_id']} is now {p['tier']}"
            + (
                " (an override: it holds until `steward users clear-tier`)"
                if p["override"]
                else " (the identity provider's tier)"
            )
        ),
    )


async def _keys_rotate(store: Store, args: argparse.Namespace, settings: Settings) -> None:
    key_file = settings.key_file
    if key_file is None:
        msg = (
            "the upstream-token key is set inline (encryption_key): to rotate it with this "
            "command, move it to a key file (encryption_key_file) holding '<key id> <base64 key>'"
        )
        raise ConfigError(msg)
    if not key_file.exists():
        msg = f"no key file at {str(key_file)!r} (a node makes it on its first start)"
        raise ConfigError(msg)
    progress = Progress("re-encrypting upstream tokens", enabled=not args.json)
    try:
        report = await rotate_keys(
            store,
            key_file,
            default_id=settings.encryption_key_id,
            batch=args.batch,
            wait=args.wait,
            origin=ORIGIN,
            on_progress=progress,
        )
    except (RotationBlocked, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    finally:
        progress.close()

    def human(r: dict[str, Any]) -> str:
        rows = sum(r["reencrypted"].values())
        text = f"{'resumed: ' if r['resumed'] else ''}current key {r['key_id']}; re-encrypted {rows} rows in {r['batches']} batches"
        if r["retired"]:
            text += f"; retired {', '.join(r['retired'])}"
        if r["remaining"]:
            text += f"; {r['remaining']} rows could not be decrypted and stay under old keys (kept)"
        return text

    _out(args, report.to_dict(), human)


async def _resolve_user_names(store: Store, args: argparse.Namespace) -> None:
    """A user named by subject or email address (``bob``) becomes that user's id, where only one
    user has the name (actors/_user_names.py)."""
    for field in ("user_id", "user"):
        given = getattr(args, field, None)
        if not given or (args.command, args.action) == ("sessions", "list"):
            continue  # `sessions list --user` is a search, not a name
        try:
            setattr(args, field, await resolve_user(store, given))
        except (UnknownUser, AmbiguousUser) as exc:
            raise ConfigError(str(exc)) from None


def run_command(
    args: argparse.Namespace, settings: Settings, with_database: Callable[..., Awaitable[None]]
) -> None:
    handlers: dict[tuple[str, str], Callable[[Store], Awaitable[None]]] = {
        ("sessions", "list"): lambda s: _sessions_list(s, args),
        ("sessions", "show"): lambda s: _sessions_show(s, args),
        ("sessions", "end"): lambda s: _sessions_end(s, args),
        ("users", "revoke"): lambda s: _users_revoke(s, args),
        ("users", "reinstate"): lambda s: _users_reinstate(s, args),
        ("users", "set-tier"): lambda s: _users_set_tier(s, args, settings),
        ("users", "clear-tier"): lambda s: _users_set_tier(s, args, settings, clear=True),
        ("keys", "rotate"): lambda s: _keys_rotate(s, args, settings),
        ("usage", "report"): lambda s: run_usage(s, args, settings),
    }
    handler = handlers[(args.command, args.action)]

    async def named(store: Store) -> None:
        await _resolve_user_names(store, args)
        await handler(store)

    async def main() -> None:
        async def with_dsn(dsn: str) -> None:
            await _with_store(dsn, named)

        await with_database(settings, with_dsn)

    try:
        trio.run(main)
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_gone()
    except BaseExceptionGroup as group:  # a ConfigError raised inside the store's nursery
        config = group.subgroup(ConfigError)
        if config is not None:
            raise config.exceptions[0] from None
        broken, rest = group.split(BrokenPipeError)
        if broken is not None and rest is None:
            _reader_gone()
        raise


def _reader_gone() -> NoReturn:
    """The output's reader left (``steward sessions list | head``): stop quietly, exit 1, with
    what is still buffered for stdout dropped instead of failing again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(1)
