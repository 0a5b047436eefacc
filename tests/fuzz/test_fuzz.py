"""Hostile input to a live Steward: every answer is a clear 4xx (or a JSON-RPC error), never a
5xx, a hang or a traceback, and rejected input leaves the database as it was."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz._property import Fuzzer, examples
from tests.fuzz._strategies import (
    Request,
    admin_request,
    dev_idp_request,
    mcp_call,
    mcp_request,
    oauth_request,
)


def fuzz(fuzzer: Fuzzer, requests: st.SearchStrategy[Request]) -> None:
    """Probe the live node with ``examples()`` requests drawn from ``requests``."""

    @settings(
        max_examples=examples(),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests)
    def probe(request: Request) -> None:
        fuzzer.probe(request)

    probe()


def test_mcp_endpoint_rejects_hostile_requests_cleanly(fuzzer: Fuzzer) -> None:
    """/mcp and /messages: malformed JSON, wrong JSON-RPC shapes, huge and deep bodies, bad
    headers, unknown versions, foreign and ended session ids, bad Accept and Content-Type, both
    protocol eras."""
    fuzz(fuzzer, mcp_request(fuzzer.known))
    print(fuzzer.report("mcp"))
    assert {s for s in fuzzer.statuses if 400 <= s < 500} >= {400, 401, 404}, fuzzer.statuses


def test_mcp_methods_answer_wrong_params_with_jsonrpc_errors(fuzzer: Fuzzer) -> None:
    """Well-formed requests of every method, in a valid session or with consistent 2026-07-28
    headers, whose params are wrong: the dispatcher and the application's handlers answer."""
    fuzz(fuzzer, mcp_call(fuzzer.known))
    print(fuzzer.report("mcp-methods"))
    assert fuzzer.statuses.get(200, 0) > examples() // 4, fuzzer.statuses


def test_oauth_endpoints_reject_hostile_requests_cleanly(fuzzer: Fuzzer) -> None:
    """/token, /authorize, /register, /revoke, /callback, /consent and the metadata documents:
    bad form fields, grant types, PKCE, redirect URIs, clients, bodies."""
    fuzz(fuzzer, oauth_request(fuzzer.known))
    print(fuzzer.report("oauth"))
    assert {s for s in fuzzer.statuses if 400 <= s < 500} >= {400, 405}, fuzzer.statuses


def test_admin_api_and_development_idp_reject_hostile_requests_cleanly(fuzzer: Fuzzer) -> None:
    """The admin API and view (forged, non-ASCII or missing tokens, cookies and CSRF headers;
    wrong bodies behind the real token) and the development IdP (its OAuth endpoints, and its
    fault controls behind forged secrets or with malformed arguments)."""
    fuzz(fuzzer, st.one_of(admin_request(fuzzer.known), dev_idp_request(fuzzer.known)))
    print(fuzzer.report("admin-and-dev-idp"))
    assert {s for s in fuzzer.statuses if 400 <= s < 500} >= {400, 401, 403, 404}, fuzzer.statuses
