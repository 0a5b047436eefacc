"""The property every fuzzed request must hold, checked against the live node.

- The answer comes within ``ANSWER_LIMIT`` seconds, never a 5xx, never a traceback in the body.
- A 4xx carries a clear JSON error: a JSON-RPC error object with a message, or an OAuth error
  (``error`` plus ``error_description``). A 200 on ``/mcp`` is one JSON-RPC response (a result,
  or an error for well-formed requests with wrong params) or an SSE stream.
- Rejected input leaves the database as it was (``LiveNode.fingerprint``); accepted input (a
  valid registration, a valid authorization request, a tool call) may change it, and becomes the
  new baseline.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import attrs
import httpx
from hypothesis import reject

from tests.fuzz._live import LiveNode
from tests.fuzz._strategies import Known, Request

ANSWER_LIMIT = 10.0  # seconds: a request unanswered for this long is a hang
STREAM_IDLE = 2.0  # seconds of silence after which an accepted SSE stream is let go
SETTLE_LIMIT = 10.0  # seconds for a closed stream's row to be closed in the database
ADMIN_PAGES = ("/admin", "/admin/login")  # HTML pages of the admin view
SHORT_EXAMPLES = 800  # per fuzz test in CI; STEWARD_FUZZ_EXAMPLES overrides (release runs)


def examples() -> int:
    return int(os.environ.get("STEWARD_FUZZ_EXAMPLES", SHORT_EXAMPLES))


@attrs.frozen
class Answer:
    status: int
    content_type: str
    body: bytes
    stream_left_open: bool = False


def _clear_error(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    error = payload.get("error")
    if isinstance(error, dict):  # JSON-RPC
        return isinstance(error.get("code"), int) and bool(error.get("message"))
    return isinstance(error, str) and bool(error) and bool(payload.get("error_description"))


def _rpc_response(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and payload.get("jsonrpc") == "2.0"
        and "id" in payload
        and (("result" in payload) != ("error" in payload))
    )


class Fuzzer:
    """Sends requests to the live node and checks each answer and the database."""

    def __init__(self, live: LiveNode, known: Known) -> None:
        self.live = live
        self.known = known
        self.http = httpx.Client(
            base_url=live.url, timeout=httpx.Timeout(ANSWER_LIMIT), follow_redirects=False
        )
        for default in ("accept", "accept-encoding", "user-agent"):
            self.http.headers.pop(default, None)
        self.baseline = live.fingerprint()
        self.statuses: dict[int, int] = {}

    def close(self) -> None:
        self.http.close()

    def report(self, name: str) -> str:
        """One JSON line: how many requests were sent and the statuses they got."""
        sent = sum(self.statuses.values())
        statuses = {str(k): v for k, v in sorted(self.statuses.items())}
        return json.dumps({"fuzz": name, "requests": sent, "statuses": statuses})

    def send(self, request: Request) -> Answer:
        url = request.path + (f"?{request.query}" if request.query else "")
        if request.target == "idp":  # the development IdP listens on its own port
            url = self.known.idp_url + url
        # h11 refuses to send surrounding whitespace in a value; the server never sees it
        headers = [(k.encode(), v.strip().encode()) for k, v in request.headers.items()]
        with self.http.stream(
            request.method, url, headers=headers, content=request.body or None
        ) as response:
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                return Answer(response.status_code, content_type, response.read())
            chunks: list[bytes] = []
            # an accepted stream may stay open: it is let go after STREAM_IDLE of silence
            idle = httpx.Timeout(ANSWER_LIMIT, read=STREAM_IDLE)
            response.request.extensions["timeout"] = idle.as_dict()
            try:
                for chunk in response.iter_raw():
                    chunks.append(chunk)
            except httpx.ReadTimeout:
                return Answer(response.status_code, content_type, b"".join(chunks), True)
            return Answer(response.status_code, content_type, b"".join(chunks))

    def probe(self, request: Request) -> None:
        """Send ``request`` and assert the property; the failure message names the request."""
        started = time.monotonic()
        try:
            answer = self.send(request)
        except httpx.LocalProtocolError:
            reject()  # not sendable over HTTP/1.1: nothing to ask the server
        except httpx.TimeoutException:
            msg = f"no answer within {ANSWER_LIMIT}s to {request.describe()}"
            raise AssertionError(msg) from None
        except httpx.TransportError as exc:
            msg = f"the connection broke ({type(exc).__name__}: {exc}) on {request.describe()}"
            raise AssertionError(msg) from None
        self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
        where = f"{answer.status} {answer.body[:500]!r} for {request.describe()}"
        assert answer.status < 500, f"a server error: {where}"
        assert b"Traceback" not in answer.body and b'File "' not in answer.body, where
        rejected = self._judge(request, answer, where)
        if answer.stream_left_open:
            self._settle()
        before, self.baseline = self.baseline, self.live.fingerprint()
        if rejected:  # (the next example is judged against what is there now either way)
            changed = sorted(t for t in before if before[t] != self.baseline.get(t))
            assert not changed, f"rejected input changed the tables {changed}: {where}"
        assert time.monotonic() - started < ANSWER_LIMIT + SETTLE_LIMIT, where

    def _judge(self, request: Request, answer: Answer, where: str) -> bool:
        """Whether the request was rejected, after checking that the answer is well formed."""
        if request.method == "HEAD":  # no body to judge
            return answer.status >= 400
        if answer.status >= 400 and request.path in ADMIN_PAGES and request.target == "steward":
            # the admin view's sign-in form answers a refused sign-in with its page
            assert answer.content_type.startswith(("text/html", "application/json")), where
            return True
        if answer.status >= 400:
            assert answer.content_type.startswith("application/json"), where
            assert _clear_error(json.loads(answer.body)), f"an unclear error: {where}"
            return True
        if request.path in ("/mcp", "/messages"):
            if answer.status in (202, 204):
                return False
            assert answer.status == 200, where
            if answer.content_type.startswith("text/event-stream"):
                return False
            payload = json.loads(answer.body)
            assert _rpc_response(payload), f"not one JSON-RPC response: {where}"
            return "error" in payload
        if request.path == "/revoke":  # RFC 7009: 200 for a token this server never issued
            return True
        assert answer.status in (200, 201, 302, 303), where
        return False

    def _settle(self) -> None:
        """Wait until no stream row is open (a let-go stream closes on the server's side)."""

        async def open_streams() -> int:
            assert self.live.node is not None
            await self.live.node.store.write()
            count: int = await self.live.node.store.fetchval(
                "SELECT count(*) FROM connections WHERE closed_at IS NULL"
            )
            return count

        deadline = time.monotonic() + SETTLE_LIMIT
        while self.live.run(open_streams) and time.monotonic() < deadline:
            time.sleep(0.05)
