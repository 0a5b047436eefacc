"""A bare ASGI app served by a real Hypercorn (trio worker) on 127.0.0.1, on a free port."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@contextlib.asynccontextmanager
async def hypercorn_on_a_free_port(app: Any) -> AsyncIterator[int]:
    """Serve ``app`` for the block; yields the port."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            functools.partial(serve, cast(Any, app), config, shutdown_trigger=trio.sleep_forever)
        )
        yield int(urls[0].rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()
