"""A Hypercorn whose private names are not what the fast path (server/_stream_end.py) expects.

``renamed(monkeypatch, cls, name)`` makes the attribute ``name`` of every ``cls`` object (one
made before or after) invisible to all code but Hypercorn's own modules, which go on reading and
writing it: from the outside, exactly a Hypercorn release that renamed it."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest


class _Renamed:
    """A data descriptor: Hypercorn's modules see the value (kept in the object's ``__dict__``),
    every other caller an ``AttributeError``, as for a name that no longer exists."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if obj is None or not caller.startswith("hypercorn."):
            msg = f"{owner.__name__!r} object has no attribute {self.name!r}"
            raise AttributeError(msg)
        return obj.__dict__[self.name]

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.name] = value


def renamed(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """From now until the test ends, ``name`` on ``cls`` objects exists for Hypercorn only."""
    monkeypatch.setattr(cls, name, _Renamed(name), raising=False)


# .ci/canary runs the stream-end and revocation tests on the newest Hypercorn and h11, where the
# fast path may turn itself off; everywhere else (the pinned versions) it must stay on
CANARY = bool(os.environ.get("STEWARD_CANARY"))
