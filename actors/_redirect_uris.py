"""Redirect URIs: which may be registered, and which requested URI matches a registered one.

- At most ``REDIRECT_URI_LIMIT`` characters, all of them RFC 3986 characters (no control
  character, space, non-ASCII or fragment), with well-formed percent-encoding.
- ``https`` with a host; ``http`` only on a loopback host (``127.0.0.1``, ``[::1]``,
  ``localhost``); or a private-use scheme in reverse-domain form (``com.example.app:/cb``,
  RFC 8252 §7.1). No credentials in the authority. Every other scheme is refused.
- A requested URI matches a registered one exactly, except that for ``http`` on a loopback host
  the port is not compared: a native app listens on whatever port it got (RFC 8252 §7.3).
- A remembered consent skips the consent page only for an ``https`` redirect URI: a loopback
  port or a private-use scheme can be taken by any program on the machine (RFC 8252 §8.6).
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "LOOPBACK_HOSTS",
    "REDIRECT_URI_LIMIT",
    "consent_may_be_remembered",
    "consent_redirect_key",
    "redirect_uri_matches",
    "redirect_uri_problem",
    "valid_redirect_uri",
]

REDIRECT_URI_LIMIT = 2000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_RFC3986 = re.compile(r"[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_REVERSE_DOMAIN = re.compile(r"[a-z][a-z0-9+\-]*(?:\.[a-z0-9][a-z0-9+\-]*)+")


def _split(uri: str) -> SplitResult | None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    return parts


def redirect_uri_problem(uri: object) -> str | None:
    """Why ``uri`` may not be a redirect URI, or None when it may."""
    if not isinstance(uri, str) or not uri:
        return "a redirect URI must be a non-empty string"
    if len(uri) > REDIRECT_URI_LIMIT:
        return f"a redirect URI has at most {REDIRECT_URI_LIMIT} characters"
    if "#" in uri:
        return "a redirect URI may not have a fragment"
    if not _RFC3986.fullmatch(uri) or _BAD_PERCENT.search(uri):
        return (
            "a redirect URI holds only RFC 3986 characters (no control characters, spaces or "
            "non-ASCII: percent-encode them)"
        )
    parts = _split(uri)
    if parts is None:
        return "the redirect URI does not parse (a bad port or IPv6 address)"
    if parts.username is not None or parts.password is not None:
        return "a redirect URI may not carry credentials"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    if _REVERSE_DOMAIN.fullmatch(parts.scheme):
        return None
    return (
        "a redirect URI must be https, http on a loopback host (127.0.0.1, [::1], localhost), "
        "or a private-use scheme in reverse-domain form (com.example.app:/callback)"
    )


def valid_redirect_uri(uri: object) -> bool:
    return redirect_uri_problem(uri) is None


def redirect_uri_matches(requested: str, registered: str) -> bool:
    """Whether a requested redirect URI is the registered one (any port on loopback http)."""
    if requested == registered:
        return True
    r, g = _split(requested), _split(registered)
    if r is None or g is None or r.scheme != "http" or g.scheme != "http":
        return False
    if r.hostname not in LOOPBACK_HOSTS or r.hostname != g.hostname:
        return False
    if r.username is not None or g.username is not None:
        return False
    return (r.path, r.query, r.fragment) == (g.path, g.query, g.fragment)


def consent_redirect_key(uri: str) -> str:
    """The redirect URI a remembered consent is bound to: the URI itself, without the port for
    ``http`` on a loopback host, since a native app gets a new port on every run and
    ``redirect_uri_matches`` does not compare it either."""
    parts = _split(uri)
    if parts is None or parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        return uri
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return parts._replace(netloc=host or "").geturl()


def consent_may_be_remembered(uri: str) -> bool:
    """Whether a remembered consent may send a code to ``uri`` without asking: only for
    ``https``, which only its host receives. A loopback port or a private-use scheme can be
    taken by any program on the user's machine, so the client behind it is not known and the
    user is asked every time (RFC 8252 §8.6)."""
    parts = _split(uri)
    return parts is not None and parts.scheme == "https"
