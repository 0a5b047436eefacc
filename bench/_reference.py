"""The HTTP stack's own limit: an empty ASGI app on Steward's Hypercorn trio worker.

Run in its own process (see ``bench._servers.reference``)::

    python -m bench._reference --port PORT

It is served exactly as Steward is (``server._node.bind_socket`` and ``serve_http``: Hypercorn's
trio worker with Steward's settings) and does nothing an app could skip: it reads the request
body and answers every request with one constant JSON-RPC result and a constant
``Mcp-Session-Id``, so the benchmarks' generator runs its whole session against it (initialize,
initialized, 10 x tools/call, DELETE) and counts the same 13 requests per session. Steward's
HTTP requests/s over this app's, in the same run with the same generator, is the fraction of
its HTTP stack's ceiling that Steward reaches (``http_vs_hypercorn_reference``).
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

REPLY = b'{"jsonrpc":"2.0","id":1,"result":{}}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(REPLY)),
    (b"mcp-session-id", b"reference"),
]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
BODY = {"type": "http.response.body", "body": REPLY}


async def empty_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send(START)
    await send(BODY)


async def _serve(port: int) -> None:
    from server._node import bind_socket, serve_http

    sock = bind_socket("127.0.0.1", port)
    await serve_http(empty_app, sock, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._reference")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from server._node import tune_gc

    tune_gc()  # as steward serve does
    trio.run(_serve, args.port)


if __name__ == "__main__":
    main()
