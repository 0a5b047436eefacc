"""What a handler's ``Context`` and the dispatcher need of the request they serve: the narrow
port every transport's exchange implements (server/mcp/_exchange.py, ``Exchange``)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Emitter"]


class Emitter(Protocol):
    """Sends on behalf of one request. An exchange may offer more, looked up when used:
    ``request_many``, ``resource_updated``, ``close_stream``, ``client_capabilities``,
    ``session`` and ``stateless`` (a transport without them does without)."""

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification related to the request (progress)."""
        ...

    async def log(self, params: dict[str, Any]) -> None:
        """Send a log message, if the client's level lets it through."""
        ...

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Ask the client something (sampling, elicitation, roots); its result."""
        ...
