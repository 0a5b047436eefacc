"""Fetching client ID metadata documents without becoming a port scanner (SSRF).

An unauthenticated ``/authorize?client_id=<URL>`` makes Steward fetch that URL. The fetch:

- takes https URLs only (http only for a loopback host, and only when private addresses are
  allowed), with a host, a path, no credentials, no fragment, at most ``URL_LIMIT`` characters;
- resolves the host once and refuses it when any of its addresses is loopback, private,
  link-local, multicast, reserved, unspecified, shared (100.64/10) or an IPv6 form that embeds
  such an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64), unless
  ``allow_private`` (the ``client_metadata_allow_private`` setting) is on;
- connects to the address it checked (the URL names the address; ``Host`` and the TLS server
  name are the host's name, so the certificate is still verified for the name): a second DNS
  answer between the check and the connection (DNS rebinding) is never asked for;
- follows at most ``MAX_REDIRECTS`` redirects itself, each hop checked as the first;
- reads at most ``SIZE_LIMIT`` bytes, and gives up after ``TIME_LIMIT`` seconds in all;
- uses no proxy from the environment.

Every failure is the same :class:`MetadataFetchFailed` to the caller, whose ``reason`` is for the
log only: the client sees one text, whatever went wrong.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from server.http import parse_storable_json

__all__ = [
    "GENERIC_ERROR",
    "IPAddress",
    "MetadataFetchFailed",
    "MetadataFetcher",
    "Resolver",
    "address_refused",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

GENERIC_ERROR = "the client metadata document could not be fetched or is not valid"
SIZE_LIMIT = 64 * 1024  # bytes of a document
TIME_LIMIT = 5.0  # seconds for the whole fetch: resolution, redirects, body
MAX_REDIRECTS = 3
URL_LIMIT = 2000  # characters of a client id URL
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class MetadataFetchFailed(Exception):
    """The document could not be had; ``reason`` is for the log, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _IPV4_COMPATIBLE or any(ip in net for net in _NAT64):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def address_refused(ip: IPAddress) -> bool:
    """Whether a fetch may not reach ``ip``: anything but a global unicast address, or an IPv6
    address embedding an IPv4 address that is refused."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or ip.is_site_local or ip in _IPV4_COMPATIBLE:
            return True
        if any(address_refused(v4) for v4 in _embedded_ipv4(ip)):
            return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host``."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise MetadataFetchFailed(f"the host does not resolve ({type(exc).__name__})") from None
    out: list[IPAddress] = []
    for *_, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]))
        except ValueError:
            continue
        if ip not in out:
            out.append(ip)
    return out


def _loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetadataFetcher:
    """Fetches one client ID metadata document at a time under the rules above."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        time_limit: float = TIME_LIMIT,
        size_limit: int = SIZE_LIMIT,
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.transport = transport
        self.time_limit = time_limit
        self.size_limit = size_limit

    def check_url(self, url: str) -> None:
        """The form of a client id URL (or of a redirect's target).

        Raises:
            MetadataFetchFailed: the URL is not one Steward fetches.
        """
        if len(url) > URL_LIMIT or not _URL_CHARS.fullmatch(url):
            msg = f"the URL is longer than {URL_LIMIT} characters or holds characters outside RFC 3986"
            raise MetadataFetchFailed(msg)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise MetadataFetchFailed("the URL does not parse") from None
        host = parts.hostname or ""
        if not host or parts.username is not None or parts.password is not None:
            raise MetadataFetchFailed("the URL needs a host and may not carry credentials")
        if parts.fragment or "#" in url or not parts.path.strip("/"):
            raise MetadataFetchFailed("the URL needs a path and may not have a fragment")
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.allow_private and _loopback_name(host):
            return
        raise MetadataFetchFailed("the URL must be https (http only on loopback, when allowed)")

    async def _pinned(self, url: str) -> tuple[str, str, str]:
        """The request URL naming the checked address, the Host header and the TLS server name."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]  # a literal: no lookup
        except ValueError:
            addresses = await self.resolver(host, port)
        if not addresses:
            raise MetadataFetchFailed("the host has no address")
        if not self.allow_private:
            refused = [ip for ip in addresses if address_refused(ip)]
            if refused:
                msg = f"the host resolves to a refused address ({refused[0]})"
                raise MetadataFetchFailed(msg)
        ip = addresses[0]
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = literal if parts.port is None else f"{literal}:{port}"
        target = f"{parts.scheme}://{netloc}{parts.path or '/'}"
        if parts.query:
            target += f"?{parts.query}"
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        if ":" in host:
            host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
        return target, host_header, host

    async def fetch(self, url: str) -> dict[str, Any]:
        """The document at ``url``, a JSON object.

        Raises:
            MetadataFetchFailed: for every failure, with the reason for the log.
        """
        with trio.move_on_after(self.time_limit):
            return await self._fetch(url)
        msg = f"no document within {self.time_limit}s"
        raise MetadataFetchFailed(msg)

    async def _fetch(self, url: str) -> dict[str, Any]:
        timeout = httpx.Timeout(self.time_limit)
        async with httpx.AsyncClient(
            transport=self.transport, timeout=timeout, follow_redirects=False, trust_env=False
        ) as http:
            current = url
            for _hop in range(MAX_REDIRECTS + 1):
                self.check_url(current)
                target, host_header, server_name = await self._pinned(current)
                extensions = {"sni_hostname": server_name} if target.startswith("https:") else {}
                request = http.build_request(
                    "GET",
                    target,
                    headers={
                        "host": host_header,
                        "accept": "application/json",
                        "accept-encoding": "identity",
                    },
                    extensions=extensions,
                )
                try:
                    response = await http.send(request, stream=True)
                except (httpx.HTTPError, OSError) as exc:
                    msg = f"the request failed ({type(exc).__name__})"
                    raise MetadataFetchFailed(msg) from None
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise MetadataFetchFailed("a redirect without a Location")
                        current = urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        msg = f"the document answered {response.status_code}"
                        raise MetadataFetchFailed(msg)
                    raw = await self._read(response)
                finally:
                    await response.aclose()
                return _document(raw)
        msg = f"more than {MAX_REDIRECTS} redirects"
        raise MetadataFetchFailed(msg)

    async def _read(self, response: httpx.Response) -> bytes:
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise MetadataFetchFailed("the document is sent encoded (only identity is read)")
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.size_limit:
            msg = f"the document declares more than {self.size_limit} bytes"
            raise MetadataFetchFailed(msg)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():  # identity: the bytes as sent
                size += len(chunk)
                if size > self.size_limit:
                    msg = f"the document exceeds {self.size_limit} bytes"
                    raise MetadataFetchFailed(msg)
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            msg = f"reading the document failed ({type(exc).__name__})"
            raise MetadataFetchFailed(msg) from None
        return b"".join(chunks)


def _document(raw: bytes) -> dict[str, Any]:
    try:
        doc = parse_storable_json(raw)
    except ValueError as exc:
        raise MetadataFetchFailed(f"the document is not usable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise MetadataFetchFailed("the document is not a JSON object")
    return doc
