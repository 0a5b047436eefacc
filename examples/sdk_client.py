"""Sign in to Steward with the official MCP SDK client and call a tool.

    .venv/bin/python -m examples.sdk_client http://127.0.0.1:8000/mcp              # a browser
    .venv/bin/python -m examples.sdk_client http://127.0.0.1:8000/mcp --user alice # no browser

The SDK's ``OAuthClientProvider`` discovers Steward from the 401, registers a client, and sends
the user to Steward's ``/authorize``. Without ``--user`` this script prints that URL: open it, pick
a demo user at the development IdP, allow the consent page, and the browser comes back to this
script's callback on 127.0.0.1. With ``--user`` the script plays the browser itself (the
development IdP signs in the named demo user: alice, bob or carol). Then it calls ``whoami`` and
``echo`` and prints their results. The ``mcp`` package is Steward's ``client`` extra:
``./steward client URL`` installs it and runs this script.
"""

from __future__ import annotations

import argparse
import re
import sys
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import httpx2
import trio
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

CALLBACK_WAIT = 300.0  # seconds a person gets to sign in


class SignInFailed(SystemExit):
    """The sign-in did not end with a code (a refused or revoked user, a denied consent). A
    SystemExit: the SDK logs any Exception its redirect handler raises with a traceback."""


class MemoryStorage:
    """The SDK's token storage, in memory for one run."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def _result(location: str) -> AuthorizationCodeResult:
    q = parse_qs(urlsplit(location).query)
    if "code" not in q:
        msg = f"the authorization ended without a code: {q.get('error', ['?'])[0]}"
        raise SignInFailed(msg)
    return AuthorizationCodeResult(
        code=q["code"][0], state=q["state"][0], iss=q.get("iss", [None])[0]
    )


class HeadlessUser:
    """Plays the browser: the development IdP signs in ``user``; the consent is allowed."""

    def __init__(self, user: str, redirect_uri: str) -> None:
        self.user = user
        self.redirect_uri = redirect_uri
        self.result: AuthorizationCodeResult | None = None

    async def redirect(self, url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(url)  # Steward's /authorize → the IdP
            r = await http.get(r.headers["location"] + f"&login_hint={self.user}")
            r = await http.get(r.headers["location"])  # the IdP → Steward's callback
            if r.status_code == 200:  # Steward's consent page
                cookie = r.headers["set-cookie"].split(";")[0]
                fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
                origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
                r = await http.post(
                    urljoin(url, "/consent"),
                    data={**fields, "decision": "allow"},
                    headers={"cookie": cookie, "origin": origin},
                )
            location = r.headers.get("location", "")
            if not location.startswith(self.redirect_uri):
                msg = f"the sign-in did not come back to {self.redirect_uri} ({r.status_code})"
                if "json" in r.headers.get("content-type", ""):  # Steward's OAuth error
                    error = r.json()
                    msg = (
                        f"the sign-in was refused ({r.status_code} {error.get('error')}): "
                        f"{error.get('error_description')}"
                    )
                raise SignInFailed(msg)
            self.result = _result(location)

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


class BrowserUser:
    """A person with a browser: print the URL, wait for the redirect on a local listener."""

    def __init__(self, listener: trio.SocketListener, redirect_uri: str) -> None:
        self.listener = listener
        self.redirect_uri = redirect_uri

    async def redirect(self, url: str) -> None:
        print(f"Open this URL in a browser to sign in:\n\n  {url}\n", file=sys.stderr)

    async def callback(self) -> AuthorizationCodeResult:
        with trio.fail_after(CALLBACK_WAIT):
            while True:
                stream = await self.listener.accept()
                async with stream:
                    request = await stream.receive_some(8192)
                    target = request.split(b" ", 2)[1].decode() if request.count(b" ") >= 2 else ""
                    if not target.startswith("/callback"):
                        await stream.send_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                        )
                        continue
                    body = b"Signed in. You can close this tab."
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\nConnection: close\r\n\r\n"
                        + body
                    )
                    return _result(target)


async def main(url: str, user: str | None) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    person = HeadlessUser(user, redirect_uri) if user else BrowserUser(listener, redirect_uri)
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="Steward quick start",
            redirect_uris=[AnyUrl(redirect_uri)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=person.redirect,
        callback_handler=person.callback,
    )
    async with (
        listener,
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        whoami = await session.call_tool("whoami", {})
        print(f"whoami → {whoami.structured_content or whoami.content}")
        echo = await session.call_tool("echo", {"text": "hello from the SDK client"})
        print(f"echo → {echo.content[0].text}")  # type: ignore[union-attr]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="Steward's MCP URL, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument(
        "--user", help="sign in this demo user without a browser (alice, bob, carol)"
    )
    args = parser.parse_args()
    try:
        trio.run(main, args.url, args.user)
    except* SignInFailed as failed:  # raised inside the SDK's task group: one line, no traceback
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        sys.exit(f"sdk_client: {first}")
