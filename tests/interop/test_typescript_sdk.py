"""The TypeScript SDK's client with its OAuthClientProvider (ts_client.mjs), once with the
optional ``state()`` and once without (PKCE alone, as the SDK's own example provider): it signs in
through the development IdP, lists the tools, calls one with progress, opens the GET stream and
ends the session with DELETE; the free user's call of the pro tool reads Steward's sentence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.interop import _user
from tests.interop._child import child
from tests.interop.conftest import FREE_USER, PRO_USER, TIER_SENTENCE, Clients, Steward

SCRIPT = Path(__file__).with_name("ts_client.mjs")
REDIRECT = "http://127.0.0.1:9/oauth/callback"  # never opened: the code is handed back on stdin
LIMIT = 60.0


def run(clients: Clients, steward: Steward, user: str, *, state: bool) -> dict[str, Any]:
    cfg = {
        "modules": str(clients.modules),
        "url": steward.mcp_url,
        "redirect": REDIRECT,
        "state": state,
    }
    with child([clients.node, SCRIPT, json.dumps(cfg)]) as c:
        line = c.wait_for(lambda s: s.startswith("{"), LIMIT)
        authorize = json.loads(line)["authorize"]
        c.send(_user.sign_in(authorize, user, steward.servers))
        done = json.loads(c.wait_for(lambda s: s.startswith('{"result"'), LIMIT))
        result: dict[str, Any] = done["result"]
        result["authorize"] = authorize
        assert c.proc.wait(LIMIT) == 0
        return result


@pytest.mark.parametrize("state", [True, False], ids=["with-state", "pkce-only"])
def test_the_typescript_sdk_client_signs_in_and_works(
    clients: Clients, steward: Steward, state: bool
) -> None:
    for user in (FREE_USER, PRO_USER):
        seen = run(clients, steward, user, state=state)
        assert seen["signIns"] == 1
        query = parse_qs(urlsplit(seen["authorize"]).query)
        assert ("state" in query) is state
        if state:
            assert seen["returnedState"] == seen["sentState"]
        else:
            assert seen["returnedState"] is None  # nothing sent, nothing invented
        assert seen["protocolVersion"] == "2025-11-25" and seen["sessionId"]
        assert "echo" in seen["tools"] and "count" in seen["tools"]
        assert seen["counted"] == "counted to 3" and seen["progress"] == [1, 2, 3]
        if user == FREE_USER:
            assert "report" not in seen["tools"]
            assert seen["report"]["isError"] is True
            assert TIER_SENTENCE in seen["report"]["text"]
        else:
            assert "report" in seen["tools"]
            assert seen["report"]["isError"] is False
            assert seen["report"]["text"].startswith("report on q3")
        requests = seen["requests"]
        mcp = [r for r in requests if r["url"] == steward.mcp_url]
        assert any(
            r["method"] == "GET"
            and r["status"] == 200
            and r["type"].startswith("text/event-stream")
            for r in mcp
        ), requests
        deletes = [r["status"] for r in mcp if r["method"] == "DELETE"]
        assert deletes and deletes[-1] in (200, 202, 204), requests
        assert seen["sessionAfterDelete"] is None
        assert seen["errorsBeforeSignIn"] == ["Error: Unauthorized"]
        assert seen["errors"] == [], seen["errors"]  # none after, the DELETE's included
