"""ASGI plumbing shared by every endpoint: request and response helpers, CORS, per-address limits,
static pages, Server-Sent Events encoding and the Hypercorn fast path that ends idle streams."""

from __future__ import annotations

from server.http._cors import Cors
from server.http._limits import AddressLimiter, address_limiter
from server.http._origin import OriginPolicy
from server.http._plumbing import (
    BodyTooLarge,
    ClientGone,
    Headers,
    InvalidInput,
    Receive,
    Scope,
    Send,
    contains_nul,
    form,
    header,
    lifespan,
    parse_storable_json,
    query,
    read_body,
    redirect,
    send_html,
    send_json,
    send_response,
    unavailable,
)
from server.http._sse import SSE_HEADERS, encode_event
from server.http._static import PAGE_HEAD, send_public_file
from server.http._stream_end import FastPath

__all__ = [
    "PAGE_HEAD",
    "SSE_HEADERS",
    "AddressLimiter",
    "BodyTooLarge",
    "ClientGone",
    "Cors",
    "FastPath",
    "Headers",
    "InvalidInput",
    "OriginPolicy",
    "Receive",
    "Scope",
    "Send",
    "address_limiter",
    "contains_nul",
    "encode_event",
    "form",
    "header",
    "lifespan",
    "parse_storable_json",
    "query",
    "read_body",
    "redirect",
    "send_html",
    "send_json",
    "send_public_file",
    "send_response",
    "unavailable",
]
