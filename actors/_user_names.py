"""Users by a name an operator reads and types: ``bob`` for ``http://127.0.0.1:43121|bob``.

A user's id is ``<issuer>|<subject>`` (actors/auth/): unique, but long. Its *name* is the
subject, the part the identity provider gives, when no other user has the same subject; with
several (the same subject at two identity providers, or a data folder from before the development
IdP kept its port) each name adds its issuer's host: ``bob (127.0.0.1:42161)``.

An operator may name a user by the full id, the subject or the email address; a name that fits
several users is refused with the candidates (docs/operating.md, "Naming users").
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from actors._store import Store

__all__ = ["AmbiguousUser", "UnknownUser", "resolve_user", "user_names"]

CANDIDATES = 10  # users named in an ambiguity error at most


class UnknownUser(LookupError):
    """No user has this id, subject or email address."""

    def __init__(self, given: str) -> None:
        super().__init__(
            f"no user {given[:200]!r}: give a user id (<issuer>|<subject>), a user's name or "
            "email address as `steward sessions list` shows"
        )
        self.given = given


class AmbiguousUser(LookupError):
    """Several users have this subject or email address."""

    def __init__(self, given: str, candidates: list[str], more: bool) -> None:
        listed = ", ".join(candidates) + (", …" if more else "")
        super().__init__(
            f"{given[:200]!r} names {'more than ' if more else ''}{len(candidates)} users: "
            f"give the full id of one of them: {listed}"
        )
        self.given = given
        self.candidates = candidates


async def resolve_user(store: Store, given: str) -> str:
    """The id of the one user ``given`` names: an id, else a subject, else an email address.

    Raises:
        UnknownUser: no user has it.
        AmbiguousUser: several users have it (the error lists them).
        StoreUnavailable: the database is away.
    """
    if await store.fetchval("SELECT 1 FROM users WHERE user_id = $1", given):
        return given
    for column in ("subject", "lower(email)"):
        rows = await store.fetch(
            f"SELECT user_id FROM users WHERE {column} = $1 ORDER BY user_id LIMIT $2",
            given.lower() if column != "subject" else given,
            CANDIDATES + 1,
        )
        if len(rows) == 1:
            user_id: str = rows[0]["user_id"]
            return user_id
        if rows:
            ids = [r["user_id"] for r in rows]
            raise AmbiguousUser(given, ids[:CANDIDATES], more=len(ids) > CANDIDATES)
    raise UnknownUser(given)


async def user_names(store: Store, user_ids: Iterable[str]) -> dict[str, str]:
    """Each known user's name by id (an unknown id is left out)."""
    ids = sorted({u for u in user_ids if u})
    if not ids:
        return {}
    rows = await store.fetch(
        "SELECT u.user_id, u.issuer, u.subject, "
        "(SELECT count(*) FROM users o WHERE o.subject = u.subject) AS sharing "
        "FROM users u WHERE u.user_id = ANY($1::text[])",
        ids,
    )
    return {r["user_id"]: _name(r["issuer"], r["subject"], r["sharing"]) for r in rows}


def _name(issuer: str, subject: str, sharing: int) -> str:
    if sharing <= 1:
        return subject
    host = urlsplit(issuer).netloc or issuer
    return f"{subject} ({host})"
