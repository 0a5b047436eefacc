"""Rate limits per client address on the endpoints anyone can call without a token.

Each limited endpoint belongs to a kind (``register``, ``authorize``, ``token``, ``consent``,
``sign_in``) with a token bucket per client address, and optionally one bucket for the whole node
(every address together), so that an attacker rotating addresses is bounded too. The table of
buckets is bounded: at most ``max_addresses`` entries, least recently used out first, and an
entry whose bucket has filled up again is dropped (it holds nothing a fresh entry would not).

The client address is the TCP peer (the ASGI ``client``). ``X-Forwarded-For`` is read only when
the peer is one of the configured ``trusted_proxies``; by default it is ignored. IPv6 addresses
are keyed by their /64 (one subscriber's network), IPv4-mapped IPv6 addresses as IPv4.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from server.config import AddressLimitSettings
from server.http._plumbing import Scope, Send, header, send_json

__all__ = ["AddressLimiter", "Rate", "address_limiter", "client_address", "send_limited"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# entries dropped from the front of the table per admission when their buckets are full again:
# the sweep is amortised over requests and bounded per request
_SWEEP = 8


@attrs.frozen
class Rate:
    """``per_minute`` requests per minute, at most ``burst`` at once."""

    per_minute: float
    burst: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0

    @property
    def refill(self) -> float:
        """Seconds an empty bucket takes to fill up again."""
        return self.burst / self.per_second


@attrs.define(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    refill: float  # seconds this bucket takes to fill up from empty


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def client_address(scope: Scope, trusted_proxies: Iterable[IpNetwork] = ()) -> str:
    """The key of the client's address: the TCP peer, or behind a trusted proxy the rightmost
    ``X-Forwarded-For`` entry that is not itself a trusted proxy. IPv6 is keyed by its /64."""
    client = scope.get("client")
    peer = _parse(str(client[0])) if client else None
    if peer is None:
        return "unknown"
    proxies = tuple(trusted_proxies)
    if proxies and any(peer in net for net in proxies):
        forwarded = header(scope, b"x-forwarded-for")
        if forwarded:
            for hop in reversed(forwarded.split(",")):
                address = _parse(hop)
                if address is None:
                    break  # a malformed hop: trust nothing before it
                peer = address
                if not any(address in net for net in proxies):
                    break
    return _key(peer)


class AddressLimiter:
    """Token buckets per (kind, client address), plus an optional node-wide bucket per kind."""

    def __init__(
        self,
        rates: Mapping[str, Rate],
        *,
        node_rates: Mapping[str, Rate] | None = None,
        max_addresses: int = 50_000,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = dict(rates)
        self.node_rates = dict(node_rates or {})
        self.max_addresses = max_addresses
        self.trusted_proxies = tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies
        )
        self._clock = clock
        self._buckets: collections.OrderedDict[tuple[str, str], _Bucket] = collections.OrderedDict()
        self._node: dict[str, _Bucket] = {}
        self.refused: collections.Counter[str] = collections.Counter()  # by kind

    def __len__(self) -> int:
        return len(self._buckets)

    def address(self, scope: Scope) -> str:
        return client_address(scope, self.trusted_proxies)

    def take(self, kind: str, address: str) -> tuple[float, Rate, bool] | None:
        """Admit one request of ``kind`` from ``address``: None, or (seconds to wait, the rate
        that refused, whether it is the node-wide one)."""
        rate = self.rates.get(kind)
        if rate is None:
            return None
        now = self._clock()
        self._sweep(now)
        key = (kind, address)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(rate.burst), now, rate.refill)
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = _draw(bucket, rate, now)
        if wait is not None:
            self.refused[kind] += 1
            return wait, rate, False
        node_rate = self.node_rates.get(kind)
        if node_rate is not None:
            node = self._node.get(kind)
            if node is None:
                node = self._node[kind] = _Bucket(float(node_rate.burst), now, node_rate.refill)
            wait = _draw(node, node_rate, now)
            if wait is not None:
                bucket.tokens += 1.0  # not admitted: the address keeps its token
                self.refused[kind] += 1
                return wait, node_rate, True
        return None

    def _sweep(self, now: float) -> None:
        for _ in range(_SWEEP):
            if not self._buckets:
                return
            key, oldest = next(iter(self._buckets.items()))
            if now - oldest.stamp < oldest.refill:
                return
            del self._buckets[key]

    async def check(self, kind: str, scope: Scope, send: Send) -> bool:
        """Admit the request, or answer it 429 and return False."""
        refused = self.take(kind, self.address(scope))
        if refused is None:
            return True
        wait, rate, node_wide = refused
        await send_limited(send, kind, scope.get("path", ""), wait, rate, node_wide=node_wide)
        return False


def _draw(bucket: _Bucket, rate: Rate, now: float) -> float | None:
    bucket.tokens = min(float(rate.burst), bucket.tokens + (now - bucket.stamp) * rate.per_second)
    bucket.stamp = now
    if bucket.tokens < 1.0:
        return (1.0 - bucket.tokens) / rate.per_second
    bucket.tokens -= 1.0
    return None


async def send_limited(
    send: Send, kind: str, path: str, wait: float, rate: Rate, *, node_wide: bool = False
) -> None:
    """429 with ``Retry-After`` and an OAuth-style error body naming the limit."""
    retry_after = max(1, math.ceil(wait))
    who = "this server from all addresses" if node_wide else "one client address"
    body: dict[str, Any] = {
        "error": "temporarily_unavailable",
        "error_description": (
            f"too many {path or kind} requests: the limit ({kind}) is {rate.per_minute:g} per "
            f"minute with a burst of {rate.burst} for {who}; retry after {retry_after} s"
        ),
        "retry_after": retry_after,
    }
    await send_json(send, 429, body, [(b"retry-after", str(retry_after).encode())])


def address_limiter(settings: AddressLimitSettings, *, sign_in: bool = False) -> AddressLimiter:
    """Steward's limiter (register, authorize, token, consent) from ``[address_limits]``, or with
    ``sign_in`` the development IdP's (its sign-in page)."""
    s = settings
    if sign_in:
        rates = {"sign_in": Rate(s.sign_in_per_minute, s.sign_in_burst)}
        node_rates: dict[str, Rate] = {}
    else:
        rates = {
            "register": Rate(s.register_per_minute, s.register_burst),
            "authorize": Rate(s.authorize_per_minute, s.authorize_burst),
            "token": Rate(s.token_per_minute, s.token_burst),
            "consent": Rate(s.consent_per_minute, s.consent_burst),
        }
        node_rates = {
            "register": Rate(s.register_node_per_minute, max(1, s.register_node_per_minute // 4)),
            "authorize": Rate(
                s.authorize_node_per_minute, max(1, s.authorize_node_per_minute // 4)
            ),
        }
    return AddressLimiter(
        rates,
        node_rates=node_rates,
        max_addresses=s.max_addresses,
        trusted_proxies=s.trusted_proxies,
    )
