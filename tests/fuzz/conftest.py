"""The fuzz tests' live node: started once per test, up across all of its examples."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fuzz._live import LiveNode
from tests.fuzz._property import Fuzzer
from tests.fuzz._strategies import Known

MAX_BODY = 64 * 1024  # small, so that oversize bodies are cheap to send


@pytest.fixture
def fuzzer(fresh_db: str) -> Iterator[Fuzzer]:
    # a tool awaiting client input gives up soon
    with LiveNode(fresh_db, max_body_bytes=MAX_BODY, client_request_timeout=1.0) as live:
        assert live.node is not None
        alice, bob = live.caller("alice"), live.caller("bob")
        ended = live.caller("alice")
        gone = httpx.delete(
            f"{live.url}/mcp",
            headers={
                "authorization": f"Bearer {ended.access_token}",
                "mcp-session-id": ended.session_id,
            },
        )
        assert gone.status_code == 204, gone.text
        assert live.node.dev_idp is not None and live.node.info.dev_idp_url is not None
        known = Known(
            alice,
            bob,
            ended.session_id,
            live.node.info.mcp_url,
            MAX_BODY,
            admin_token=live.node.admin_token,
            idp_url=live.node.info.dev_idp_url,
            idp_control_secret=live.node.dev_idp.control_secret,
        )
        fuzzer = Fuzzer(live, known)
        try:
            yield fuzzer
        finally:
            fuzzer.close()
