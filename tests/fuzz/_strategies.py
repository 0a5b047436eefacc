"""Hypothesis strategies for hostile HTTP requests to Steward's endpoints.

Each strategy draws a :class:`Request` (method, path, headers, body) from a mix of garbage and
near-valid input: real tokens, session ids and client ids appear next to forged ones so that the
checks behind the first one are reached too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import attrs
from hypothesis import strategies as st

from tests.fuzz._live import Caller

VERSIONS_2025 = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
V2026 = "2026-07-28"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"
METHODS = (
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "sampling/createMessage",
)
TOOLS = ("echo", "whoami", "add", "count", "report", "profile")
REDIRECT_URI = "http://127.0.0.1:9/callback"
# a client id metadata document URL that nothing listens on: fetching it fails fast, locally
UNREACHABLE_CLIENT_URL = "http://127.0.0.1:9/client.json"


@attrs.frozen
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""
    target: str = "steward"  # or "idp": the development IdP, on its own port

    def describe(self) -> str:
        body = self.body[:300].decode("latin-1")
        tail = f"… ({len(self.body)} bytes)" if len(self.body) > 300 else ""
        where = "(development IdP) " if self.target == "idp" else ""
        return f"{where}{self.method} {self.path}?{self.query} {self.headers} {body}{tail}"


@attrs.frozen
class Known:
    """What the live node issued in the test's setup: the near-valid values strategies mix in."""

    alice: Caller
    bob: Caller
    ended_session: str
    mcp_url: str
    max_body: int
    admin_token: str = ""
    idp_url: str = ""
    idp_control_secret: str = ""


# -- building blocks ----------------------------------------------------------------------------

# header values h11 accepts: visible latin-1 and spaces (a CR, LF or NUL is the client's refusal)
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
).map(str.strip)
text = st.text(max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def rarely(draw: st.DrawFn, n: int) -> bool:
    """True once in ``n + 1`` draws (shrinking towards False). Hypothesis favours the bounds of
    an integer range, so ``integers(0, n) == 0`` would be far from that rare."""
    return bool(draw(st.sampled_from((False,) * n + (True,))))


def one_of_or_garbage(*values: Any) -> st.SearchStrategy[Any]:
    """One of ``values`` (three times in four), or arbitrary text."""
    known = st.sampled_from(values)
    return st.one_of(known, known, known, text)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def garbage_body(draw: st.DrawFn, max_body: int) -> bytes:
    """Bodies that are not a usable JSON object: bytes, broken JSON, deep nesting, oversize."""
    kind = draw(
        st.sampled_from(("bytes", "broken", "deep", "huge", "value", "unstorable", "empty"))
    )
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "broken":
        whole = json.dumps(draw(json_values)).encode()
        return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    if kind == "deep":
        return _deep(draw(st.integers(50, 200_000)), draw(st.sampled_from(("list", "object"))))
    if kind == "huge":
        return b'{"x":"' + b"a" * (max_body + draw(st.integers(0, 1000))) + b'"}'
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "unstorable":  # Python's json takes these; JSON, jsonb and text do not
        bad = draw(st.sampled_from(("NaN", "Infinity", "-Infinity", '"\\ud800"', '"\\u0000"')))
        key = draw(st.sampled_from(("redirect_uris", "client_name", "user_id", "x", "params")))
        return f'{{"{key}": [{bad}], "redirect_uris": ["http://127.0.0.1:9/cb"]}}'.encode()
    return b""


# -- /mcp ----------------------------------------------------------------------------------------


@st.composite
def rpc_params(draw: st.DrawFn, method: str, era: str) -> Any:
    """params for ``method``: shaped like the real thing with wrong values, or anything."""
    if rarely(draw, 4):
        return draw(json_values)
    params: dict[str, Any] = {}
    if method == "tools/call":
        params["name"] = draw(one_of_or_garbage(*TOOLS))
        params["arguments"] = draw(json_values | st.dictionaries(text, json_values, max_size=3))
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        params["uri"] = draw(one_of_or_garbage("demo://readme", "demo://users/x") | json_values)
    elif method == "prompts/get":
        params["name"] = draw(one_of_or_garbage("greet") | json_values)
        params["arguments"] = draw(json_values)
    elif method == "completion/complete":
        params["ref"] = draw(
            st.fixed_dictionaries(
                {"type": one_of_or_garbage("ref/prompt", "ref/resource"), "name": json_values}
            )
            | json_values
        )
        params["argument"] = draw(
            st.fixed_dictionaries({"name": json_values, "value": json_values}) | json_values
        )
    elif method == "logging/setLevel":
        params["level"] = draw(json_values)
    elif method == "notifications/cancelled":
        params["requestId"] = draw(json_values)
    elif method == "initialize":
        params["protocolVersion"] = draw(one_of_or_garbage(*VERSIONS_2025, V2026) | json_values)
        params["capabilities"] = draw(json_values)
        params["clientInfo"] = draw(json_values)
    elif method == "subscriptions/listen":
        params["notifications"] = draw(json_values)
    if era == "2026":
        version = V2026 if not rarely(draw, 4) else draw(one_of_or_garbage(*VERSIONS_2025))
        meta: dict[str, Any] = {META_VERSION: version}
        if not rarely(draw, 4):
            meta[META_CAPS] = draw(st.dictionaries(text, json_values, max_size=2))
        elif draw(st.booleans()):
            meta[META_CAPS] = draw(json_values)
        if draw(st.booleans()):
            meta["io.modelcontextprotocol/logLevel"] = draw(json_values)
        params["_meta"] = meta
        if rarely(draw, 3):
            params["requestState"] = draw(json_values)
        if rarely(draw, 3):
            params["inputResponses"] = draw(json_values)
    elif draw(st.booleans()):
        params["_meta"] = draw(json_values)
    return params


@st.composite
def rpc_message(draw: st.DrawFn, era: str) -> tuple[dict[str, Any], str]:
    """A JSON-RPC-shaped object with something wrong (or nothing), and its method."""
    method = draw(one_of_or_garbage(*METHODS))
    message: dict[str, Any] = {}
    if not rarely(draw, 5):
        message["jsonrpc"] = "2.0"
    elif draw(st.booleans()):
        message["jsonrpc"] = draw(json_values)
    shape = draw(st.sampled_from(("request",) * 4 + ("notification", "response", "bad")))
    if shape in ("request", "response", "bad"):
        small = st.integers(0, 10_000)
        message["id"] = draw(st.one_of(small, small, small, st.integers(), text, json_values))
    if shape in ("request", "notification"):
        message["method"] = method if not rarely(draw, 6) else draw(json_values)
        message["params"] = draw(rpc_params(method, era))
    elif shape == "response":
        message[draw(st.sampled_from(("result", "error")))] = draw(json_values)
    else:
        message.update(draw(st.dictionaries(text, json_values, max_size=3)))
    return message, method


class Faults:
    """Which parts of a request are made wrong: a few at a time, so that the checks behind the
    first ones are reached (with none wrong the request is valid up to its JSON-RPC content)."""

    def __init__(self, draw: st.DrawFn, parts: tuple[str, ...]) -> None:
        self.draw = draw
        # two requests in three are right but for their content
        wrong = st.sets(st.sampled_from(parts), min_size=1, max_size=2)
        self.broken = draw(wrong) if rarely(draw, 2) else set()

    def pick(self, part: str, valid: Any, hostile: st.SearchStrategy[Any]) -> Any:
        return self.draw(hostile) if part in self.broken else valid


MCP_PARTS = ("verb", "token", "session", "version", "accept", "content_type", "origin", "body")


@st.composite
def mcp_request(draw: st.DrawFn, known: Known) -> Request:
    """Any request to /mcp: wrong methods, headers, tokens, session ids, versions and bodies."""
    alice, bob = known.alice, known.bob
    faults = Faults(draw, MCP_PARTS)
    era = draw(st.sampled_from(("2025", "2026")))
    verb = faults.pick("verb", "POST", st.sampled_from(("GET", "DELETE", "PUT", "PATCH", "HEAD")))
    headers: dict[str, str] = {}
    token = faults.pick(
        "token", "alice", st.sampled_from(("bob", "none", "forged", "scheme", "refresh"))
    )
    headers["authorization"] = {
        "alice": f"Bearer {alice.access_token}",
        "bob": f"Bearer {bob.access_token}",
        "forged": "Bearer " + draw(header_text),
        "scheme": draw(header_text),
        "refresh": f"Bearer {alice.refresh_token}",  # a refresh token is not an access token
    }.get(token, "")
    session = faults.pick("session", "own", st.sampled_from(("foreign", "ended", "forged", "none")))
    session_id = {
        "own": alice.session_id,
        "foreign": bob.session_id,
        "ended": known.ended_session,
        "forged": draw(header_text),
    }.get(session)
    if session_id is not None:
        headers["mcp-session-id"] = session_id
    valid_version = V2026 if era == "2026" else draw(st.sampled_from(VERSIONS_2025))
    version = faults.pick(
        "version", valid_version, st.none() | one_of_or_garbage(V2026, *VERSIONS_2025, "1.0")
    )
    if version is not None:
        headers["mcp-protocol-version"] = version
    accept = faults.pick(
        "accept",
        "application/json, text/event-stream",
        st.sampled_from(("application/json", "text/event-stream", "*/*", None)) | header_text,
    )
    if accept is not None:
        headers["accept"] = accept
    content_type = faults.pick(
        "content_type",
        "application/json",
        st.sampled_from(("text/plain", "application/jsonx", None)) | header_text,
    )
    if content_type is not None:
        headers["content-type"] = content_type
    origin = faults.pick(
        "origin", None, st.sampled_from(("https://evil.example", "null")) | header_text
    )
    if origin is not None:
        headers["origin"] = origin
    if verb == "GET" and draw(st.booleans()):
        headers["last-event-id"] = draw(
            header_text | st.builds(lambda s, n: f"{s}:{n}", header_text, st.integers(-5, 10**12))
        )
    body = b""
    if verb in ("POST", "PUT", "PATCH"):
        if "body" in faults.broken:
            body = draw(garbage_body(known.max_body))
        else:
            message, method = draw(rpc_message(era))
            body = json.dumps(message).encode()
            if era == "2026" and not rarely(draw, 3):
                headers["mcp-method"] = method if not rarely(draw, 4) else draw(header_text)
                params = message.get("params")
                name = params.get("name") or params.get("uri") if isinstance(params, dict) else None
                if isinstance(name, str) and not rarely(draw, 4):
                    headers["mcp-name"] = name
                elif draw(st.booleans()):
                    headers["mcp-name"] = draw(header_text)
    if verb == "GET" and session == "own" and token == "alice":
        # a valid GET is an accepted stream that stays open: keep the request rejectable
        headers["accept"] = "application/json"
    if verb == "DELETE" and session == "own" and token == "alice":
        # a valid DELETE ends the session the other examples use: send it with a forged one
        headers["mcp-session-id"] = "forged-" + alice.session_id[:8]
    if rarely(draw, 9):  # the deprecated HTTP+SSE transport (2024-11-05)
        query = urlencode({"session_id": session_id or draw(text)})
        return Request(verb, "/messages", headers, body, query=query)
    return Request(verb, "/mcp", headers, body)


@st.composite
def mcp_call(draw: st.DrawFn, known: Known) -> Request:
    """A well-formed request of a known method in a valid session (2025) or with consistent
    2026-07-28 headers, whose params are wrong in type, shape or value: what the dispatcher and
    the application's handlers receive."""
    alice = known.alice
    era = draw(st.sampled_from(("2025", "2026")))
    method = draw(st.sampled_from(METHODS))
    params = draw(rpc_params(method, era))
    message = {"jsonrpc": "2.0", "id": draw(st.integers(0, 10_000)), "method": method}
    if isinstance(params, dict) and era == "2026":
        meta = params.setdefault("_meta", {})
        if isinstance(meta, dict):
            meta[META_VERSION] = V2026
            meta.setdefault(META_CAPS, {})
    message["params"] = params
    headers = {
        "authorization": f"Bearer {alice.access_token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    if era == "2025":
        headers["mcp-session-id"] = alice.session_id
        headers["mcp-protocol-version"] = draw(st.sampled_from(VERSIONS_2025))
    else:
        headers["mcp-protocol-version"] = V2026
        headers["mcp-method"] = method
        name = params.get("name") or params.get("uri") if isinstance(params, dict) else None
        if isinstance(name, str):
            headers["mcp-name"] = name
    return Request("POST", "/mcp", headers, json.dumps(message).encode())


# -- OAuth ---------------------------------------------------------------------------------------


def _form_field(values: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.none() | values | text


@st.composite
def token_request(draw: st.DrawFn, known: Known) -> Request:
    """POST /token: wrong grants, codes, verifiers, clients, redirect URIs, resources, bodies."""
    alice = known.alice
    fields: dict[str, str | None] = {
        "grant_type": draw(
            _form_field(
                st.sampled_from(
                    ("authorization_code", "refresh_token", "client_credentials", "password")
                )
            )
        ),
        "code": draw(_form_field(st.sampled_from(("", "x" * 43)))),
        "code_verifier": draw(_form_field(st.sampled_from(("", "v" * 43, "v" * 200)))),
        "client_id": draw(_form_field(st.sampled_from((alice.client_id, "stw-unknown")))),
        "redirect_uri": draw(_form_field(st.sampled_from((REDIRECT_URI, "https://evil.example/")))),
        "resource": draw(_form_field(st.sampled_from((known.mcp_url, known.mcp_url + "/x")))),
        "refresh_token": draw(_form_field(st.sampled_from(("", "r" * 43)))),
        "scope": draw(_form_field(st.sampled_from(("mcp:tools", "admin")))),
    }
    if rarely(draw, 3):
        # a real refresh token presented by another client must be refused without effect
        fields["grant_type"] = "refresh_token"
        fields["refresh_token"] = alice.refresh_token
        fields["client_id"] = draw(st.sampled_from((known.bob.client_id, "stw-unknown")) | text)
        if fields["client_id"] in ("", alice.client_id):
            fields["client_id"] = "stw-unknown"
    return _form_request(draw, "/token", fields, known.max_body)


@st.composite
def revoke_request(draw: st.DrawFn, known: Known) -> Request:
    """POST /revoke with tokens nobody issued (a no-op) or nothing, or alice's real tokens
    under another client's id or none (RFC 7009 §2.1: refused, nothing revoked)."""
    alice = known.alice
    fields = {
        "token": draw(
            _form_field(st.sampled_from(("", "t" * 43, alice.access_token, alice.refresh_token)))
        ),
        "token_type_hint": draw(_form_field(st.sampled_from(("access_token", "refresh_token")))),
        "client_id": draw(_form_field(st.sampled_from((known.bob.client_id, "stw-unknown")))),
    }
    if fields["client_id"] == alice.client_id:
        fields["client_id"] = "stw-unknown"
    return _form_request(draw, "/revoke", fields, known.max_body)


def _form_request(
    draw: st.DrawFn, path: str, fields: dict[str, str | None], max_body: int
) -> Request:
    verb = draw(st.sampled_from(("POST", "POST", "POST", "POST", "GET", "PUT")))
    content_type = draw(
        st.sampled_from(("application/x-www-form-urlencoded", "application/json", None))
        | header_text
    )
    headers = {"content-type": content_type} if content_type is not None else {}
    kind = draw(st.sampled_from(("form", "form", "form", "json", "garbage")))
    present = {k: v for k, v in fields.items() if v is not None}
    if kind == "form":
        body = urlencode(present).encode()
    elif kind == "json":
        body = json.dumps(present).encode()
    else:
        body = draw(garbage_body(max_body))
    return Request(verb, path, headers, body)


AUTHORIZE_PARTS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
    "scope",
    "query",
    "verb",
)


@st.composite
def authorize_request(draw: st.DrawFn, known: Known) -> Request:
    """GET /authorize: a few parameters wrong, missing or garbage at a time."""
    faults = Faults(draw, AUTHORIZE_PARTS)
    wrong = {
        "response_type": st.sampled_from(("token", "")),
        "client_id": st.sampled_from(
            ("stw-unknown", UNREACHABLE_CLIENT_URL, "https://", "http://", "")
        ),
        "redirect_uri": st.sampled_from((REDIRECT_URI + "/x", "javascript:x", "")),
        "state": st.sampled_from(("", "s" * 1025)),
        "code_challenge": st.sampled_from(("c" * 42, "c" * 129, "")),
        "code_challenge_method": st.sampled_from(("plain", "s256", "")),
        "resource": st.sampled_from(("https://other/", known.mcp_url + "/x")),
        "scope": st.sampled_from(("admin", "mcp:tools admin")),
    }
    valid = {
        "response_type": "code",
        "client_id": known.alice.client_id,
        "redirect_uri": REDIRECT_URI,
        "state": "s",
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
        "resource": known.mcp_url,
        "scope": "mcp:tools",
    }
    params = {
        key: faults.pick(key, value, st.none() | wrong[key] | text) for key, value in valid.items()
    }
    verb = faults.pick("verb", "GET", st.sampled_from(("POST", "PUT")))
    query = urlencode({k: v for k, v in params.items() if v is not None})
    if "query" in faults.broken:
        query = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=100))
    return Request(verb, "/authorize", {}, query=query)


REGISTER_PARTS = (
    "redirect_uris",
    "token_endpoint_auth_method",
    "grant_types",
    "client_name",
    "scope",
    "client_secret",
    "body",
    "content_type",
    "verb",
)


@st.composite
def register_request(draw: st.DrawFn, known: Known) -> Request:
    """POST /register: metadata with wrong types, redirect URIs, auth methods, grants; garbage."""
    faults = Faults(draw, REGISTER_PARTS)
    uris = st.sampled_from(
        (
            "http://evil.example/cb",
            "https://app.example/cb#frag",
            "ftp://x/",
            "",
            "http://127.0.0.1:9/cb",
            "https://evil.example/cb\r\nSet-Cookie: a=b",
            "https://evil.example/c b",
            "https://app.example/" + "a" * 2000,
            "com.example.app:/cb",
            "myapp:/cb",
            "http://[::1]:5/cb",
            "javascript:alert(1)",
        )
    )
    metadata: dict[str, Any] = {
        "redirect_uris": faults.pick(
            "redirect_uris",
            ["http://127.0.0.1:9/cb", "https://app.example/cb"],
            st.lists(uris | text, max_size=3) | json_values,
        ),
    }
    for key, hostile in (
        ("token_endpoint_auth_method", st.sampled_from(("client_secret_basic",))),
        ("grant_types", st.lists(st.sampled_from(("implicit", "refresh_token")) | text)),
        ("client_name", st.sampled_from(("x" * 201,))),
        ("scope", st.sampled_from(("mcp:tools",))),
        ("client_secret", st.sampled_from(("s",))),
    ):
        value = faults.pick(key, None, hostile | json_values)
        if value is not None:
            metadata[key] = value
    body = json.dumps(metadata).encode()
    if "body" in faults.broken:
        body = draw(garbage_body(known.max_body))
    content_type = faults.pick("content_type", "application/json", st.none() | header_text)
    headers = {"content-type": content_type} if content_type is not None else {}
    verb = faults.pick("verb", "POST", st.sampled_from(("GET", "PUT")))
    return Request(verb, "/register", headers, body)


@st.composite
def flow_request(draw: st.DrawFn, known: Known) -> Request:
    """/callback and /consent with forged state, codes, CSRF tokens and cookies."""
    if draw(st.booleans()):
        query = urlencode(
            {k: draw(text) for k in draw(st.lists(st.sampled_from(("state", "code", "error"))))}
        )
        return Request("GET", "/callback", {}, query=query)
    fields = {
        "request": draw(_form_field(st.sampled_from(("r" * 43,)))),
        "csrf": draw(_form_field(st.sampled_from(("c" * 43,)))),
        "decision": draw(_form_field(st.sampled_from(("allow", "deny")))),
    }
    request = _form_request(draw, "/consent", fields, known.max_body)
    headers = dict(request.headers)
    if draw(st.booleans()):
        headers["cookie"] = "__Host-steward_csrf=" + (fields["csrf"] or draw(header_text))
    if draw(st.booleans()):
        headers["origin"] = draw(st.sampled_from(("https://evil.example",)) | header_text)
    return attrs.evolve(request, headers=headers)


METADATA_PATHS = (
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
    "/.well-known/oauth-protected-resource/other",
)


@st.composite
def metadata_request(draw: st.DrawFn, known: Known) -> Request:
    """The metadata documents, with any verb, query, headers and body."""
    verb = draw(st.sampled_from(("GET", "GET", "POST", "PUT", "DELETE", "HEAD")))
    headers = draw(st.dictionaries(st.sampled_from(("accept", "authorization")), header_text))
    body = draw(garbage_body(known.max_body)) if verb in ("POST", "PUT") else b""
    query = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
    return Request(verb, draw(st.sampled_from(METADATA_PATHS)), headers, body, query=query)


def oauth_request(known: Known) -> st.SearchStrategy[Request]:
    return st.one_of(
        token_request(known),
        authorize_request(known),
        register_request(known),
        revoke_request(known),
        flow_request(known),
        metadata_request(known),
    )


# -- the admin API and view ----------------------------------------------------------------------

ADMIN_ROUTES = (
    ("GET", "/admin/api/tree"),
    ("GET", "/admin/api/sessions"),
    ("GET", "/admin/api/events"),
    ("POST", "/admin/api/users/revoke"),
    ("POST", "/admin/api/users/set-tier"),
    ("POST", "/admin/api/sessions/end"),
    ("POST", "/admin/api/nothing"),
    ("GET", "/admin"),
    ("POST", "/admin/login"),
    ("POST", "/admin/logout"),
    ("GET", "/admin/static/admin.js"),
    ("GET", "/admin/static/other.js"),
)


@st.composite
def admin_request(draw: st.DrawFn, known: Known) -> Request:
    """The admin API and view: forged, non-ASCII or missing tokens, cookies and CSRF headers;
    with the real token, wrong bodies and queries (never a user or session that exists)."""
    method, path = draw(st.sampled_from(ADMIN_ROUTES))
    if rarely(draw, 5):
        method = draw(st.sampled_from(("GET", "POST", "PUT", "DELETE")))
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(("none", "forged", "scheme", "real", "cookie")))
    if auth == "forged":
        headers["authorization"] = "Bearer " + draw(header_text)
    elif auth == "scheme":
        headers["authorization"] = draw(header_text)
    elif auth == "real":
        headers["authorization"] = f"Bearer {known.admin_token}"
    elif auth == "cookie":
        expires = draw(st.sampled_from(("9999999999", "1", "\xb2", "")) | header_text)
        headers["cookie"] = f"steward_admin={expires}.{draw(header_text)}"
        if draw(st.booleans()):
            headers["x-csrf-token"] = draw(header_text)
    if draw(st.booleans()):
        headers["origin"] = draw(st.sampled_from(("https://evil.example", "null")) | header_text)
    query = ""
    if path in ("/admin/api/sessions", "/admin/api/events") and draw(st.booleans()):
        query = urlencode({draw(st.sampled_from(("limit", "user"))): draw(text)})
    body = b""
    if method == "POST":
        if path == "/admin/login":
            token = draw(header_text | text)
            if token == known.admin_token:  # a valid sign-in is not hostile input
                token += "x"
            body = urlencode({"token": token}).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        elif draw(st.booleans()):
            body = draw(garbage_body(known.max_body))
        else:
            fields = st.sampled_from(("user_id", "tier", "grant_id", "reason"))
            body = json.dumps(draw(st.dictionaries(fields, json_values, max_size=3))).encode()
    return Request(method, path, headers, body, query=query)


# -- the development IdP -----------------------------------------------------------------------------

IDP_CONTROLS = ("fail_refresh", "revoke_user", "set_tier", "token_ttl", "stats", "nothing")


@st.composite
def dev_idp_request(draw: st.DrawFn, known: Known) -> Request:
    """The development IdP: its OAuth endpoints with bad parameters, and its fault controls with
    forged or non-ASCII secrets, or the real secret and malformed arguments."""
    kind = draw(st.sampled_from(("authorize", "token", "userinfo", "revoke", "control", "other")))
    headers: dict[str, str] = {}
    if kind == "authorize":
        params = {
            k: draw(one_of_or_garbage(v))
            for k, v in (
                ("client_id", "steward"),
                ("redirect_uri", "http://127.0.0.1:9/callback"),
                ("code_challenge", "c" * 43),
                ("code_challenge_method", "S256"),
                ("response_type", "code"),
                ("state", "s"),
            )
            if not rarely(draw, 6)
        }
        if rarely(draw, 2):
            params["redirect_uri"] = draw(
                st.sampled_from(("http://127.0.0.1:9/cb\r\nSet-Cookie: a=b", "http://x/ y")) | text
            )
        if draw(st.booleans()):
            params["login_hint"] = draw(st.sampled_from(("alice", "Bob", "x" * 40)) | text)
        return Request("GET", "/authorize", {}, query=urlencode(params), target="idp")
    if kind in ("token", "revoke"):
        fields = {
            "grant_type": draw(
                _form_field(st.sampled_from(("authorization_code", "refresh_token")))
            ),
            "code": draw(_form_field(st.sampled_from(("x" * 32,)))),
            "code_verifier": draw(_form_field(st.sampled_from(("v" * 43,)))),
            "refresh_token": draw(_form_field(st.sampled_from(("r" * 43,)))),
            "token": draw(_form_field(st.sampled_from(("t" * 43,)))),
            "client_id": draw(_form_field(st.sampled_from(("steward",)))),
        }
        request = _form_request(draw, f"/{kind}", fields, known.max_body)
        return attrs.evolve(request, target="idp")
    if kind == "userinfo":
        headers["authorization"] = draw(header_text | st.builds("Bearer {}".format, header_text))
        return Request("GET", "/userinfo", headers, target="idp")
    if kind == "control":
        secret = draw(st.sampled_from(("none", "forged", "real")))
        if secret == "forged":
            headers["x-control-secret"] = draw(header_text)
        elif secret == "real":
            headers["x-control-secret"] = known.idp_control_secret
        if secret == "real":
            # malformed arguments to controls that need some: a valid control (a refresh fault,
            # a revoked demo user) would change what later examples see
            action = draw(st.sampled_from(("revoke_user", "set_tier", "token_ttl")))
            body = draw(
                st.sampled_from(
                    (b"[1]", b"{", b'{"user": 5}', b'{"user": []}', b'{"seconds": "x"}', b'"x"')
                )
                | st.builds(lambda v: json.dumps([v]).encode(), json_values)
            )
        else:
            action = draw(st.sampled_from(IDP_CONTROLS))
            body = json.dumps(draw(json_values)).encode()
        verb = draw(st.sampled_from(("POST", "POST", "GET", "PUT")))
        return Request(verb, f"/_control/{action}", headers, body, target="idp")
    path = draw(
        st.sampled_from(("/.well-known/oauth-authorization-server", "/nothing", "/_control"))
    )
    return Request(draw(st.sampled_from(("GET", "POST", "DELETE"))), path, {}, target="idp")
