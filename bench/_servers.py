"""Starting the servers under test as separate processes, pinned to a core when possible."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    msg = f"nothing listened on port {port} within {timeout}s"
    raise TimeoutError(msg)


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (kB)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


@contextlib.contextmanager
def peer(json_response: bool = False, core: int = 0) -> Iterator[dict[str, Any]]:
    port = free_port()
    cmd = pinned(
        [sys.executable, "-m", "bench._peer", str(port), "json" if json_response else "sse"], core
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield {"name": "mcp-sdk", "port": port, "pid": proc.pid, "token": None}
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def steward(core: int | None = 0, workers: int = 1) -> Iterator[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="stw-bench-"))
    os.chmod(folder, 0o755)
    ready = folder / "ready.json"
    config = folder / "steward.toml"
    # the benchmark measures serving, not rate limiting: limits far above what it sends
    config.write_text(
        '[[tiers]]\nname = "enterprise"\nrequests_per_minute = 100000000\nburst = 1000000\n'
    )
    env = {
        **os.environ,
        "STEWARD_LOG_LEVEL": "warning",
        "STEWARD_ADMIN_TOKEN": "bench-admin",
        "STEWARD_WORKERS": str(workers),
    }
    cmd = pinned(
        [
            sys.executable,
            "-m",
            "server._cli",
            "--config",
            str(config),
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(folder / "data"),
            "--ready-file",
            str(ready),
        ],
        core,
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        end = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                msg = "steward serve did not become ready"
                raise RuntimeError(msg)
            time.sleep(0.1)
        doc = json.loads(ready.read_text())
        port = urlsplit(doc["mcp_url"]).port
        yield {
            "name": "steward",
            "port": port,
            "pid": proc.pid,
            "token": obtain_token(doc),
            "ready": doc,
            "admin": "bench-admin",
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def obtain_token(ready: dict[str, Any], user: str = "carol") -> str:
    """The authorization-code flow with PKCE through the development IdP (auto sign-in)."""
    base = ready["base_url"]
    redirect_uri = "http://127.0.0.1:9/callback"
    with httpx.Client(timeout=30) as http:
        client_id = http.post(
            f"{base}/register", json={"redirect_uris": [redirect_uri], "client_name": "bench"}
        ).json()["client_id"]
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": "b",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": user,
        }
        r = http.get(f"{base}/authorize", params=params)
        r = http.get(r.headers["location"])
        r = http.get(r.headers["location"])
        if r.status_code == 200:
            cookie = r.headers["set-cookie"].split(";")[0]
            fields = dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', r.text))
            r = http.post(
                f"{base}/consent", data={**fields, "decision": "allow"}, headers={"cookie": cookie}
            )
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        tokens = http.post(
            f"{base}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "client_id": client_id,
                "redirect_uri": redirect_uri,
            },
        ).json()
        token: str = tokens["access_token"]
        return token
