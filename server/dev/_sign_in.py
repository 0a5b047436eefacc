"""``dev_no_auth``: authorization switched off, for development runs only.

The official conformance suite has no authorization scenarios, so it runs against a node started
with ``steward serve --dev-no-auth``. At start the node signs the development user in through the
development IdP, exactly as a client would (a real grant, real upstream tokens that the session
refreshes), and every MCP request then runs as that grant's principal, token or not. The settings
refuse the flag without the development IdP or off loopback (``server/config/_settings.py``).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from actors import AuthService, ConsentNeeded, Principal, new_token, s256

__all__ = ["DEV_CLIENT_ID", "DEV_USER", "sign_in_dev_user"]

DEV_USER = "carol"  # the development IdP's enterprise user: every tool of every tier is open to it
DEV_CLIENT_ID = "steward-dev-no-auth"
_REDIRECT_URI = "http://127.0.0.1/dev-no-auth"  # never visited: the code is taken from the URL


class DevSignInError(Exception):
    """The development user could not be signed in (the development IdP refused or is down)."""


def _query(url: str, name: str) -> str:
    values = parse_qs(urlsplit(url).query).get(name)
    if not values:
        msg = f"the development sign-in expected {name!r} in a redirect, got {url!r}"
        raise DevSignInError(msg)
    return values[0]


async def sign_in_dev_user(
    auth: AuthService, http: httpx.AsyncClient, *, callback_uri: str
) -> Principal:
    """Run the authorization-code flow for ``DEV_USER`` in process and return its principal.

    Raises:
        DevSignInError: the development IdP did not sign the user in.
    """
    await auth.register_client(
        {"redirect_uris": [_REDIRECT_URI], "client_name": "steward --dev-no-auth"},
        source="config",
        client_id=DEV_CLIENT_ID,
    )
    verifier = new_token() + new_token()
    resource = auth.policy.resource
    upstream_url = await auth.begin(
        {
            "response_type": "code",
            "client_id": DEV_CLIENT_ID,
            "redirect_uri": _REDIRECT_URI,
            "state": new_token(),
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "resource": resource,
            "login_hint": DEV_USER,
        },
        callback_uri=callback_uri,
    )
    r = await http.get(upstream_url)  # the development IdP signs the user in and redirects back
    if r.status_code != 302:
        msg = f"the development IdP answered {r.status_code} to the sign-in of {DEV_USER!r}"
        raise DevSignInError(msg)
    back = r.headers["location"]
    step = await auth.callback(
        state=_query(back, "state"), code=_query(back, "code"), callback_uri=callback_uri
    )
    if isinstance(step, ConsentNeeded):
        step = await auth.consent(
            request_token=step.request_token, csrf_token=step.csrf_token, approve=True
        )
    tokens = await auth.exchange_code(
        {
            "code": _query(step, "code"),
            "code_verifier": verifier,
            "client_id": DEV_CLIENT_ID,
            "redirect_uri": _REDIRECT_URI,
            "resource": resource,
        }
    )
    principal = await auth.verify_access(tokens.access_token)
    if principal is None:  # pragma: no cover - a token just issued always verifies
        msg = "the development user's token did not verify"
        raise DevSignInError(msg)
    return principal
