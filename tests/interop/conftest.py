"""The interop set: real MCP clients nobody here wrote (the TypeScript SDK, the MCP Inspector's CLI
and web UI, mcp-remote, the Python SDK) sign in through the development IdP and work against a
real ``steward serve``.

It runs with ``.ci/interop``, which installs Node 22 and the clients pinned in package-lock.json
here into .ci/.cache and sets ``INTEROP=required``: then a missing client fails. Without
``INTEROP`` (the default ``pytest`` run) every test here is skipped; with
``INTEROP=1`` a test that needs Node is skipped when the clients are not installed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.harness._serve import StewardProcess, steward_serve

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".ci" / ".cache"
NODE_VERSION = "22.23.3"  # as .ci/conformance
MODE = os.environ.get("INTEROP", "")
ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine()
)

# Steward for the whole set: the demo app (``report`` needs the pro tier; alice is free, bob pro);
# every client signs in from 127.0.0.1, more often a minute than a person would.
CONFIG = """
[address_limits]
register_per_minute = 100000
register_burst = 100000
register_node_per_minute = 100000
authorize_per_minute = 100000
authorize_burst = 100000
authorize_node_per_minute = 100000
token_per_minute = 100000
token_burst = 100000
consent_per_minute = 100000
consent_burst = 100000
sign_in_per_minute = 100000
sign_in_burst = 100000
"""

FREE_USER = "alice"
PRO_USER = "bob"
TIER_SENTENCE = "needs the pro tier"  # the start of Steward's refusal (docs/protocol.md)


@attrs.frozen
class Clients:
    node: Path
    modules: Path  # node_modules with the pinned clients

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A client's environment: Node 22 first on PATH (a launcher starts ``node`` by name), a
        home folder of its own (stored tokens), and ``extra``."""
        return {"PATH": f"{self.node.parent}:/usr/bin:/bin", "HOME": str(home), **extra}

    def bin(self, package: str, name: str) -> Path:
        import json

        folder = self.modules / package
        manifest = json.loads((folder / "package.json").read_text())
        entry = manifest["bin"]
        return folder / (entry if isinstance(entry, str) else entry[name])


@attrs.frozen
class Steward:
    process: StewardProcess
    base_url: str
    mcp_url: str
    servers: tuple[str, ...]  # Steward's and its IdP's base URLs: where a sign-in goes


@pytest.fixture(scope="session", autouse=True)
def _interop_enabled() -> None:
    if not MODE:
        pytest.skip("the interop set runs with .ci/interop (or INTEROP=1 pytest tests/interop)")


@pytest.fixture(scope="session")
def clients() -> Clients:
    node = Path(
        os.environ.get(
            "INTEROP_NODE",
            CACHE / f"node-{NODE_VERSION}" / "node_modules" / f"node-linux-{ARCH}" / "bin" / "node",
        )
    )
    modules = Path(os.environ.get("INTEROP_MODULES", CACHE / "interop" / "node_modules"))
    missing = [str(p) for p in (node, modules / "@modelcontextprotocol" / "sdk") if not p.exists()]
    if missing:
        reason = (
            f"Node 22 and the clients are not installed ({', '.join(missing)} missing): "
            ".ci/interop installs them with npm"
        )
        if MODE == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    return Clients(node, modules)


@pytest.fixture(scope="session")
def steward() -> Iterator[Steward]:
    with steward_serve("--port", "0", config=CONFIG) as process:
        ready = process.ready
        servers = tuple(
            u for u in (ready["base_url"], ready["listen_url"], ready.get("dev_idp_url")) if u
        )
        yield Steward(process, ready["base_url"], ready["mcp_url"], servers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI (``INTEROP=required``) a test here that would skip fails: every client must run."""
    report = yield
    if MODE == "required" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped where every client must run: {report.longrepr}"
    return report
