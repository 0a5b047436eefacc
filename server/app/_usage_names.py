"""The name a usage rollup keeps for a request (docs/operating.md, "Usage"): the tool's or
prompt's name, or the resource's URI (a template's URI template for a URI it matches), and None
for a name the application does not serve, so that callers cannot fill the rollups with names of
their own."""

from __future__ import annotations

from server.app._steward import Steward

__all__ = ["UsageNames"]


class UsageNames:
    """``(method, name) -> the name kept``, read from ``app`` at each call (tools come and go)."""

    def __init__(self, app: Steward) -> None:
        self.app = app

    def __call__(self, method: str, name: str) -> str | None:
        if method == "tools/call":
            return name if name in self.app.tools else None
        if method == "prompts/get":
            return name if name in self.app.prompts else None
        if method == "resources/read":
            found = self.app.find_resource(name)
            return None if found is None else str(found[0].uri)
        return None
