"""The error-to-HTTP mapping of the MCP endpoints: what a request path raised, as its answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from actors import AuthenticationRequiredError
from server.http import ClientGone, Send, send_json
from server.mcp._exchange import Reply
from server.oauth import ResourceServer

__all__ = ["ErrorAnswers"]


def _first_leaf(group: BaseExceptionGroup[Any]) -> Reply | AuthenticationRequiredError:
    first = group.exceptions[0]
    if isinstance(first, BaseExceptionGroup):
        return _first_leaf(first)
    assert isinstance(first, (Reply, AuthenticationRequiredError))
    return first


class ErrorAnswers:
    """``Reply`` as itself, ``AuthenticationRequiredError`` as the 401 challenge that starts
    re-authorization, a client gone as nothing; a group holding anything else is raised again."""

    def __init__(self, resource_server: ResourceServer) -> None:
        self.rs = resource_server

    def reauthorize(self, exc: AuthenticationRequiredError, path: str | None = None) -> Reply:
        """The one answer to AuthenticationRequiredError, wherever it is raised: 401 with the
        challenge (``error="invalid_token"``, ``resource_metadata``) that starts re-authorization
        (MCP-R21, R23). The grant's verified tokens leave the cache."""
        if exc.grant_id is not None:
            self.rs.forget_grant(exc.grant_id)
        err = self.rs.challenge("invalid_token", str(exc), path=path)
        return Reply(err.status, err.body, err.headers)

    async def answer(
        self, send: Send, handler: Callable[[], Awaitable[None]], path: str | None = None
    ) -> None:
        """Run one endpoint's handler (at ``path``) and send the error answer it raised, if any."""
        try:
            await handler()
        except (Reply, AuthenticationRequiredError, ClientGone, BaseExceptionGroup) as exc:
            await self.answer_error(send, exc, path)

    async def answer_error(
        self,
        send: Send,
        exc: Reply | AuthenticationRequiredError | ClientGone | BaseExceptionGroup[Any],
        path: str | None = None,
    ) -> None:
        """The answer to what a handler raised; a group that holds anything but answers is
        raised again."""
        if isinstance(exc, ClientGone):
            return
        if isinstance(exc, BaseExceptionGroup):
            # a Reply raised inside a request's nursery arrives wrapped in a group
            answers = exc.subgroup((Reply, AuthenticationRequiredError))
            rest = exc.subgroup(
                lambda e: (
                    not isinstance(e, (Reply, AuthenticationRequiredError, BaseExceptionGroup))
                )
            )
            if answers is None or rest is not None:
                raise exc
            await self._send(send, _first_leaf(answers), path)
            return
        await self._send(send, exc, path)

    async def _send(
        self, send: Send, exc: Reply | AuthenticationRequiredError, path: str | None
    ) -> None:
        reply = self.reauthorize(exc, path) if isinstance(exc, AuthenticationRequiredError) else exc
        await send_json(send, reply.status, reply.body, reply.headers)
