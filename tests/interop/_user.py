"""The person at the browser, for clients that hand the authorization step to one: follows the
authorization URL a client opened through Steward to the development IdP, picks the demo user on
its sign-in page as a person would (the link with the user's name), allows the consent, and
returns where the browser is sent last, the client's redirect URI with ``code`` and ``state``.
With ``deliver`` the browser also opens that URL, as it would for a client's loopback listener."""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin, urlsplit

import httpx

LIMIT = 30.0  # seconds for the whole sign-in
_CHOICE = re.compile(r'<a class="choice" href="([^"]+)"><strong>([^<]+)</strong>')
_FIELD = re.compile(r'name="(request|csrf)" value="([^"]+)"')


class SignInFailed(AssertionError):
    """A step of the sign-in did not answer as a browser expects; the message says which."""


def sign_in(
    authorize_url: str, user: str, servers: tuple[str, ...], *, deliver: bool = False
) -> str:
    """Sign ``user`` in on the page ``authorize_url``; returns the client's redirect URI with the
    code (``deliver``: after opening it). ``servers`` are the base URLs of Steward and its IdP:
    a redirect anywhere else is the client's."""
    with httpx.Client(timeout=LIMIT) as http:
        url = authorize_url
        for _ in range(10):
            r = http.get(url)
            if r.is_redirect:
                url = urljoin(url, r.headers["location"])
                if not url.startswith(tuple(f"{s.rstrip('/')}/" for s in servers)):
                    break
                continue
            if r.status_code != 200:
                msg = f"{url} answered {r.status_code}: {r.text[:300]}"
                raise SignInFailed(msg)
            choices = {html.unescape(name): href for href, name in _CHOICE.findall(r.text)}
            if choices:  # the development IdP's sign-in page: click the user's name
                if user not in choices:
                    msg = f"no {user!r} on the sign-in page, only {sorted(choices)}"
                    raise SignInFailed(msg)
                url = urljoin(url, html.unescape(choices[user]))
                continue
            fields = dict(_FIELD.findall(r.text))
            if "request" not in fields or "decision" not in r.text:
                msg = f"{url} is neither the sign-in nor the consent page: {r.text[:300]}"
                raise SignInFailed(msg)
            origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
            # the consent cookie is Secure: a browser keeps it for http://127.0.0.1 (a
            # trustworthy origin), httpx does not, so it is sent as a browser would
            cookie = r.headers["set-cookie"].split(";")[0]
            r = http.post(
                urljoin(url, "/consent"),
                data={**fields, "decision": "allow"},
                headers={"origin": origin, "cookie": cookie},
            )
            if not r.is_redirect:
                msg = f"the consent answered {r.status_code}: {r.text[:300]}"
                raise SignInFailed(msg)
            url = urljoin(url, r.headers["location"])
            break
        else:
            msg = f"more than 10 steps from {authorize_url}"
            raise SignInFailed(msg)
        if "code=" not in url:
            msg = f"the sign-in ended at {url} without a code"
            raise SignInFailed(msg)
        if deliver:
            r = http.get(url)
            if r.status_code >= 400:
                msg = f"the client's callback {url} answered {r.status_code}: {r.text[:300]}"
                raise SignInFailed(msg)
        return url
