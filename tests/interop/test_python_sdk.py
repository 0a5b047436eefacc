"""The Python SDK (mcp 2.3 from PyPI) signs in with its OAuthClientProvider against ``steward
serve``: its high-level client in auto mode (2026-07-28 by discovery), pinned to 2026-07-28, and in
legacy mode (2025-11-25, the initialize handshake); and the deprecated transport's ``sse_client``
starting at /sse. Each lists the tools, calls one with progress, and a free user's call of the pro
tool reads Steward's sentence."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import mcp
import pytest
import trio
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientMetadata,
)

from tests.harness._sdk_storage import MemoryStorage
from tests.interop import _user
from tests.interop.conftest import FREE_USER, PRO_USER, TIER_SENTENCE, Steward

REDIRECT = "http://127.0.0.1:9/oauth/callback"  # never opened: the person hands the code over
LIMIT = 60  # seconds for one client's whole run


class Person:
    """Opens the authorization URL the SDK hands over and signs in as ``user``."""

    def __init__(self, steward: Steward, user: str) -> None:
        self.steward = steward
        self.user = user
        self.result: AuthorizationCodeResult | None = None
        self.sign_ins = 0

    async def redirect(self, url: str) -> None:
        self.sign_ins += 1
        back = await trio.to_thread.run_sync(_user.sign_in, url, self.user, self.steward.servers)
        assert back.startswith(REDIRECT), back
        q = parse_qs(urlsplit(back).query)
        self.result = AuthorizationCodeResult(
            code=q["code"][0], state=q["state"][0], iss=q["iss"][0]
        )

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


def provider(steward: Steward, person: Person, server_url: str) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="python sdk interop",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=person.redirect,
        callback_handler=person.callback,
    )


@pytest.mark.parametrize(
    ("mode", "version"),
    [("auto", "2026-07-28"), ("2026-07-28", "2026-07-28"), ("legacy", "2025-11-25")],
)
async def test_the_python_sdk_client_signs_in_and_works(
    steward: Steward, mode: str, version: str
) -> None:
    for user in (FREE_USER, PRO_USER):
        person = Person(steward, user)
        auth = provider(steward, person, steward.mcp_url)
        with trio.fail_after(LIMIT):
            async with (
                httpx2.AsyncClient(auth=auth, timeout=30) as http,
                mcp.Client(
                    streamable_http_client(steward.mcp_url, http_client=http), mode=mode
                ) as client,
            ):
                assert client.protocol_version == version
                names = {t.name for t in (await client.list_tools()).tools}
                assert person.sign_ins == 1  # pinned to 2026 the first request signs in
                assert "echo" in names and "count" in names
                seen: list[tuple[float, float | None, str | None]] = []

                async def on_progress(
                    p: float, total: float | None, message: str | None, seen: Any = seen
                ) -> None:
                    seen.append((p, total, message))

                counted = await client.call_tool("count", {"to": 3}, progress_callback=on_progress)
                assert counted.content[0].text == "counted to 3"  # type: ignore[union-attr]
                assert [p for p, _, _ in seen] == [1, 2, 3]
                report = await client.call_tool("report", {"topic": "q3"})
                text = report.content[0].text  # type: ignore[union-attr]
                if user == FREE_USER:
                    assert "report" not in names
                    assert report.is_error is True
                    assert TIER_SENTENCE in text and "this account is free" in text
                else:
                    assert "report" in names
                    assert report.is_error is False and text.startswith("report on q3")


async def test_the_python_sdk_sse_client_signs_in_from_sse(steward: Steward) -> None:
    """The deprecated HTTP+SSE transport (2024-11-05), starting at /sse with OAuth."""
    from mcp.client.sse import sse_client

    person = Person(steward, FREE_USER)
    sse_url = f"{steward.base_url}/sse"
    auth = provider(steward, person, sse_url)
    with trio.fail_after(LIMIT):
        async with (
            sse_client(sse_url, auth=auth) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert person.sign_ins == 1
            names = {t.name for t in (await session.list_tools()).tools}
            assert "echo" in names and "report" not in names
            echoed = await session.call_tool("echo", {"text": "over /sse"})
            assert echoed.content[0].text == "over /sse"  # type: ignore[union-attr]
            report = await session.call_tool("report", {"topic": "q3"})
            assert report.is_error is True
            text: Any = report.content[0].text  # type: ignore[union-attr]
            assert TIER_SENTENCE in text
