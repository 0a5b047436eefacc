"""Starting the servers under test as separate processes, pinned to a core when possible.

``peer()`` and ``steward()`` are context managers yielding a :class:`Server`; a server that cannot
be started raises :class:`Unavailable` whose message says why (the benchmark reports that reason
instead of figures). ``obtain_token`` signs a user in to Steward through its OAuth endpoints.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import attrs
import httpx
import trio

from tests.harness._serve import ServeFailed, steward_serve

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = 0
GENERATOR_CORE = 1
START_LIMIT = 120.0  # seconds a server may take to listen (Steward starts its PostgreSQL first)
STOP_GRACE = 30.0  # seconds between SIGTERM and SIGKILL
OAUTH_HOPS = 10  # redirects followed by obtain_token before it gives up
LOG_TAIL = 600  # characters of a failed server's log quoted in the reason
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never called: the code is read from the redirect

# The benchmarks measure serving, not rate limiting: every tier far above what they send, and
# the limits per client address too (every load generator connects from 127.0.0.1).
UNLIMITED_ADDRESSES = (
    "[address_limits]\n"
    + "".join(
        f"{kind}_{what} = 100000000\n"
        for kind in ("register", "authorize", "token", "consent", "sign_in")
        for what in ("per_minute", "burst")
    )
    + "register_node_per_minute = 100000000\nauthorize_node_per_minute = 100000000\n\n"
)
# Every worker of ``steward serve --workers N`` reads this file (it is passed on to each), and
# the request-rate bucket is per worker while the tool-call quota is counted across workers (the
# usage rollups): the quota per minute is set to what MAX_WORKERS workers at their full rate could
# admit, so neither binds first and the limits agree whatever the number of workers.
RATE_PER_MINUTE = 100_000_000
MAX_WORKERS = 8
TIER_LIMITS = (
    f"requests_per_minute = {RATE_PER_MINUTE}\nburst = 1000000\nmax_streams = 1000000\n"
    f"max_sessions = 100000000\ninitialize_per_minute = {RATE_PER_MINUTE}\n"
    f'tool_call_quota = "{MAX_WORKERS * RATE_PER_MINUTE}/minute"\n'
)
STEWARD_CONFIG = UNLIMITED_ADDRESSES + "".join(
    f'[[tiers]]\nname = "{tier}"\n{TIER_LIMITS}\n' for tier in ("free", "pro", "enterprise")
)


class Unavailable(Exception):
    """A server under test could not be started; the message says why."""


@attrs.frozen
class Server:
    """A running server under test."""

    name: str
    port: int
    pid: int
    path: str = "/mcp"
    token: str | None = None
    ready: dict[str, Any] = attrs.field(factory=dict)
    admin: str | None = None
    data_dir: str | None = None  # Steward's data folder (its PostgreSQL cluster is inside)


def pinned(cmd: list[str], core: int | None) -> list[str]:
    """``cmd`` run on one core with taskset, when there are two cores or more to choose from."""
    if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


@contextlib.contextmanager
def generator_pinned(core: int | None = GENERATOR_CORE) -> Iterator[int | None]:
    """Run this process (the load generator) on ``core`` inside the block, then restore its
    affinity; yields the core pinned to, or None where pinning is not possible."""
    if core is None or not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        yield None
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace").strip()
        return text[-LOG_TAIL:] if text else "(empty log)"
    return "(no log)"


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    end = time.monotonic() + START_LIMIT
    while time.monotonic() < end:
        if proc.poll() is not None:
            msg = f"{what} exited with status {proc.returncode} before listening: {_tail(log)}"
            raise Unavailable(msg)
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    msg = f"{what} did not listen on port {port} within START_LIMIT ({START_LIMIT}s)"
    raise Unavailable(msg)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kb(pid: int) -> int:
    """Resident memory of one process (kB), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"/proc/{pid}/status has no VmRSS line"
    raise LookupError(msg)


@contextlib.contextmanager
def peer(
    *, replies: str = "sse", stateless: bool = False, core: int | None = SERVER_CORE
) -> Iterator[Server]:
    """The official MCP Python SDK server in a subprocess on a free port."""
    cmd = ["-m", "bench._peer", "--replies", replies, *(["--stateless"] if stateless else [])]
    with _module_server("mcp-sdk", "the MCP SDK peer", cmd, core) as server:
        yield server


@contextlib.contextmanager
def reference(*, core: int | None = SERVER_CORE) -> Iterator[Server]:
    """An empty ASGI app on Steward's Hypercorn trio worker (bench/_reference.py)."""
    with _module_server(
        "hypercorn-reference", "the Hypercorn reference", ["-m", "bench._reference"], core
    ) as server:
        yield server


@contextlib.contextmanager
def _module_server(name: str, what: str, args: list[str], core: int | None) -> Iterator[Server]:
    """``python ARGS --port P`` in a subprocess on a free port, once it listens."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="peer-bench-"))
    log_path = folder / "server.log"
    cmd = [sys.executable, *args, "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(pinned(cmd, core), cwd=ROOT, stdout=log, stderr=log)
    try:
        _wait_listening(proc, port, log_path, what)
        yield Server(name, port, proc.pid)
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def steward(
    *,
    core: int | None = SERVER_CORE,
    workers: int = 1,
    user: str = "carol",
    node_options: list[str] | None = None,
) -> Iterator[Server]:
    """``steward serve --ready-file F`` on a fresh data folder, with a token for ``user``.

    With ``node_options`` the node is ``python -m bench._node`` with those options instead (the
    same node with a session policy of the benchmark's choosing; its ready file also names the
    database URL, the development IdP's control secret and the admin token)."""
    if not (ROOT / "server" / "cli" / "_main.py").exists():
        msg = "the steward command (server/cli/_main.py) does not exist in this tree"
        raise Unavailable(msg)
    env = {
        "STEWARD_LOG_LEVEL": "warning",
        "STEWARD_ADMIN_TOKEN": "bench-admin",
        "STEWARD_WORKERS": str(workers),
    }
    try:
        with steward_serve(
            *(["--port", "0"] if node_options is None else node_options),
            config=STEWARD_CONFIG,
            env=env,
            launcher=pinned([], core),
            module="server.cli" if node_options is None else "bench._node",
        ) as server:
            url = urlsplit(server.ready["mcp_url"])
            if url.port is None:
                msg = f"the ready file's mcp_url {server.ready['mcp_url']!r} names no port"
                raise Unavailable(msg)
            try:
                token = obtain_token(server.ready, user)
            except (httpx.HTTPError, LookupError, ValueError) as exc:
                msg = f"no token from Steward's OAuth flow: {type(exc).__name__}: {exc}"
                raise Unavailable(msg) from exc
            yield Server(
                "steward",
                url.port,
                server.pid,
                path=url.path or "/",
                token=token,
                ready=server.ready,
                admin="bench-admin",
                data_dir=str(server.folder / "data"),
            )
    except ServeFailed as exc:
        raise Unavailable(str(exc)) from exc


def on_steward(
    node_options: list[str], measure: Callable[[Server], dict[str, Any]]
) -> tuple[int | None, dict[str, Any]]:
    """``measure`` run against ``bench._node`` started with ``node_options`` (pinned to the server
    core, this process to the generator core): the generator core and what ``measure`` returned,
    or ``{"available": False, "reason": ...}`` when Steward could not be started."""
    with generator_pinned() as core:
        try:
            with steward(node_options=node_options) as server:
                return core, measure(server)
        except Unavailable as exc:
            return core, {"available": False, "reason": str(exc)}


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def obtain_token(ready: dict[str, Any], user: str = "carol") -> str:
    """An access token for ``user``: the authorization-code flow with PKCE, over HTTP (see
    :func:`obtain_tokens`); for synchronous callers and worker threads.

    Raises:
        LookupError: the flow ended somewhere other than the client's redirect URI with a code.
        httpx.HTTPError: a request failed or answered an error status.
    """
    return trio.run(obtain_tokens, ready, [user])[0]


async def obtain_tokens(
    ready: dict[str, Any], users: list[str], *, concurrency: int = 1
) -> list[str]:
    """An access token for each of ``users`` (in order): the authorization-code flow with PKCE.

    Discovers the endpoints from the authorization server metadata at ``issuer_url``, registers
    one client dynamically, and for each user follows ``/authorize`` through the development IdP
    (``login_hint`` signs the user in without a page) and back, accepts the consent page if one
    is shown, and exchanges the code; ``concurrency`` users at a time.

    Raises:
        LookupError: the flow ended somewhere other than the client's redirect URI with a code.
        httpx.HTTPError: a request failed or answered an error status.
    """
    issuer = ready["issuer_url"].rstrip("/")
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        meta = await http.get(f"{issuer}/.well-known/oauth-authorization-server")
        meta.raise_for_status()
        endpoints = meta.json()
        registered = await http.post(
            endpoints["registration_endpoint"],
            json={
                "redirect_uris": [REDIRECT_URI],
                "client_name": "steward-bench",
                "token_endpoint_auth_method": "none",
            },
        )
        registered.raise_for_status()
        client_id = registered.json()["client_id"]
        tokens: list[str] = [""] * len(users)
        todo = iter(enumerate(users))

        async def signer() -> None:
            for i, user in todo:
                tokens[i] = await _sign_in(http, ready, endpoints, client_id, user)

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, min(concurrency, len(users)))):
                nursery.start_soon(signer)
        return tokens


async def _sign_in(
    http: httpx.AsyncClient,
    ready: dict[str, Any],
    endpoints: dict[str, Any],
    client_id: str,
    user: str,
) -> str:
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(12)
    r = await http.get(
        endpoints["authorization_endpoint"],
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": user,
            "resource": ready["mcp_url"],
        },
    )
    for _ in range(OAUTH_HOPS):
        if r.status_code in (301, 302, 303, 307, 308):
            location = urljoin(str(r.url), r.headers["location"])
            if location.startswith(REDIRECT_URI):
                answer = parse_qs(urlsplit(location).query)
                if answer.get("state") != [state] or "code" not in answer:
                    msg = f"the authorization answered {location!r}"
                    raise LookupError(msg)
                break
            r = await http.get(location)
        elif r.status_code == 200 and 'action="/consent"' in r.text:
            fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
            cookie = r.headers["set-cookie"].split(";")[0]
            r = await http.post(
                urljoin(str(r.url), "/consent"),
                data={**fields, "decision": "allow"},
                headers={"cookie": cookie},
            )
        else:
            msg = f"the authorization flow stopped at {r.url} with status {r.status_code}"
            raise LookupError(msg)
    else:
        msg = f"the authorization flow took more than OAUTH_HOPS ({OAUTH_HOPS}) redirects"
        raise LookupError(msg)
    tokens = await http.post(
        endpoints["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": answer["code"][0],
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "resource": ready["mcp_url"],
        },
    )
    tokens.raise_for_status()
    token: str = tokens.json()["access_token"]
    return token
