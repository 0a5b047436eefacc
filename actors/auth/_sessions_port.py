"""The session manager as the authorization service sees it: the service is built first (the
manager is built on it), so it holds this port, bound once to the manager as the node builds it.

Revocations the authorization server finds (``/revoke``, code and refresh-token reuse) end the
grant through the manager's invalidation, the same path as an operator's revoke, and a tier
changed at sign-in reaches this node's live sessions of the user. Unbound (a bare service, as
some tests and the ops CLI use), a revocation ends the rows alone and a tier change reaches no
session.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol, TypeVar

from actors._statuses import GrantStatus
from actors._store import Op

__all__ = ["GrantSessions", "SessionsPort"]


class GrantSessions(Protocol):
    """What the authorization service asks of the sessions (``SessionManager``)."""

    async def invalidate(
        self,
        grant_id: uuid.UUID,
        *,
        reason: GrantStatus,
        message: str | None = None,
        also: Sequence[Op] = (),
    ) -> None: ...

    def tier_changed_here(self, user_id: str, tier: str) -> None: ...


S = TypeVar("S", bound=GrantSessions)


class SessionsPort:
    """Late-bound: ``bind`` it once to the session manager built on the service."""

    def __init__(self) -> None:
        self._sessions: GrantSessions | None = None

    def bind(self, sessions: S) -> S:
        """Bind the port to ``sessions`` and return them (``sessions = port.bind(Manager(...))``)."""
        if self._sessions is not None:
            msg = "the authorization service's sessions port is bound once, and it is already bound"
            raise RuntimeError(msg)
        self._sessions = sessions
        return sessions

    @property
    def bound(self) -> bool:
        return self._sessions is not None

    async def invalidate(
        self,
        grant_id: uuid.UUID,
        *,
        reason: GrantStatus,
        message: str | None = None,
        also: Sequence[Op] = (),
    ) -> None:
        """The manager's invalidation; the caller checks ``bound`` first."""
        if self._sessions is None:
            msg = "the sessions port is not bound: no session manager to end the grant"
            raise RuntimeError(msg)
        await self._sessions.invalidate(grant_id, reason=reason, message=message, also=also)

    def tier_changed(self, user_id: str, tier: str) -> None:
        """A user's tier changed here: this node's live sessions of the user take it up."""
        if self._sessions is not None:
            self._sessions.tier_changed_here(user_id, tier)
