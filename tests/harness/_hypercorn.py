"""A Hypercorn whose private names are not what the fast path (server/http/_stream_end.py) expects.

``renamed(monkeypatch, cls, name)`` makes the attribute ``name`` of every ``cls`` object (one
made before or after) invisible to all code but Hypercorn's own modules, which go on reading and
writing it: from the outside, exactly a Hypercorn release that renamed it.

``python -m tests.harness._hypercorn`` prints the fast path's state on the installed Hypercorn
and h11, with one real stream served (``.ci/canary`` ends with it)."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any

import pytest
import trio

from server.http._plumbing import lifespan
from server.http._stream_end import FastPath
from tests.harness._asgi_server import hypercorn_on_a_free_port


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


async def fast_path_state() -> FastPath:
    """The fast path after looking at one real HTTP/1.1 stream of the installed Hypercorn."""
    fast = FastPath()
    looked = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        fast.for_send(send, receive)
        looked.set()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with hypercorn_on_a_free_port(app) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        with trio.fail_after(10):
            await looked.wait()
        await stream.aclose()
    return fast


def main() -> None:
    fast = trio.run(fast_path_state)
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("hypercorn", "h11"))
    reason = f": {fast.off_reason}" if fast.off_reason else ""
    print(f"== the Hypercorn fast path on {versions}: {fast.state.value}{reason}")


if __name__ == "__main__":
    main()
