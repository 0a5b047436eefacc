"""The ``steward`` command: serve, the operator commands on the store and ``steward doctor``."""

from __future__ import annotations

from server.cli._main import main

__all__ = ["main"]
