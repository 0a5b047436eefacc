"""Rotation of the upstream-token key: every stored ciphertext moves to a new key id, nothing
becomes unreadable, an interrupted rotation resumes, and running nodes take up the new key."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from actors._crypto import KeyRing
from actors._keys import RotationBlocked, rotate_keys
from actors._store import Op, Store
from runtime import faults
from tests.harness._steward import running_node, sign_in
from tests.harness._store import running_store
from tests.harness._wait import wait_until

ROOT = Path(__file__).resolve().parent.parent


async def seed(store: Store, ring: KeyRing, n: int) -> dict[uuid.UUID, tuple[str, str]]:
    """``n`` grants with upstream tokens encrypted by ``ring``; their plaintexts by grant."""
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    ops = [
        Op(
            "INSERT INTO oauth_clients (client_id, redirect_uris, source) VALUES ('c', ARRAY['http://127.0.0.1/cb'], 'config')",
            (),
        )
    ]
    plain: dict[uuid.UUID, tuple[str, str]] = {}
    for i in range(n):
        user, grant = f"idp|u{i}", uuid.uuid4()
        plain[grant] = (f"access-{i}", f"refresh-{i}")
        key_id, access = ring.encrypt(plain[grant][0], aad=grant.bytes)
        _, refresh = ring.encrypt(plain[grant][1], aad=grant.bytes)
        ops += [
            Op(
                "INSERT INTO users (user_id, issuer, subject) VALUES ($1, 'idp', $2)",
                (user, f"u{i}"),
            ),
            Op(
                "INSERT INTO grants (grant_id, user_id, client_id, resource, tier, scopes, expires_at) VALUES ($1, $2, 'c', 'r', 'free', ARRAY['mcp:tools'], $3)",
                (grant, user, later),
            ),
            Op(
                "INSERT INTO upstream_tokens (grant_id, user_id, key_id, access_ciphertext, refresh_ciphertext, access_expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                (grant, user, key_id, access, refresh, later),
            ),
        ]
    await store.write(*ops)
    return plain


async def readable(store: Store, ring: KeyRing) -> dict[uuid.UUID, tuple[str, str]]:
    rows = await store.fetch("SELECT * FROM upstream_tokens")
    return {
        r["grant_id"]: (
            ring.decrypt(r["key_id"], r["access_ciphertext"], aad=r["grant_id"].bytes),
            ring.decrypt(r["key_id"], r["refresh_ciphertext"], aad=r["grant_id"].bytes),
        )
        for r in rows
    }


async def key_ids(store: Store) -> dict[str, int]:
    rows = await store.fetch("SELECT key_id, count(*) AS n FROM upstream_tokens GROUP BY key_id")
    return {r["key_id"]: r["n"] for r in rows}


async def test_an_interrupted_rotation_keeps_every_token_readable_and_resumes(
    fresh_db: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "upstream-token.key"
    old = KeyRing.load_or_create(key_file)
    async with running_store(fresh_db) as (store, _):
        plain = await seed(store, old, 5)
        seen: list[tuple[int, int]] = []
        interrupted = RuntimeError("interrupted")
        faults.arm("keys.batch", error=interrupted, times=1)  # stops after the first batch
        try:
            with pytest.raises(RuntimeError, match="interrupted"):
                await rotate_keys(store, key_file, batch=2, on_progress=lambda *a: seen.append(a))
        finally:
            faults.reset()
        assert seen == [(0, 5), (2, 5)]
        halfway = KeyRing.load(key_file)
        assert halfway.key_ids == ["k1", "k2"] and halfway.current == "k2"
        assert await key_ids(store) == {"k1": 3, "k2": 2}
        assert await readable(store, halfway) == plain  # the old key still decrypts the rest

        report = await rotate_keys(store, key_file, batch=2)
        assert report.resumed and report.key_id == "k2"  # no third key
        assert report.reencrypted["upstream_tokens"] == 3 and report.remaining == 0
        assert report.retired == ("k1",)
        done = KeyRing.load(key_file)
        assert done.key_ids == ["k2"]
        assert await key_ids(store) == {"k2": 5}
        assert await readable(store, done) == plain
        assert key_file.stat().st_mode & 0o777 == 0o600

        again = await rotate_keys(store, key_file, batch=2)  # a new rotation: k3
        assert not again.resumed and again.key_id == "k3" and again.retired == ("k2",)
        assert await readable(store, KeyRing.load(key_file)) == plain


async def test_a_bare_key_file_rotates_from_its_configured_key_id(
    fresh_db: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "upstream-token.key"
    bare = KeyRing.from_base64("main", "A" * 43 + "=")
    key_file.write_text("A" * 43 + "=")  # the format before rotation existed: one bare key
    async with running_store(fresh_db) as (store, _):
        plain = await seed(store, bare, 2)
        report = await rotate_keys(store, key_file, default_id="main")
        assert report.key_id == "k1" and report.retired == ("main",)
        assert await readable(store, KeyRing.load(key_file)) == plain


async def test_a_live_node_that_cannot_load_the_new_key_blocks_the_rotation(
    fresh_db: str, tmp_path: Path
) -> None:
    async with running_store(fresh_db) as (store, _):
        await store.write(
            Op(
                "INSERT INTO nodes (node_id, info) VALUES ('elsewhere', '{\"key_id\": \"k1\"}')",
                (),
            )
        )
        key_file = tmp_path / "upstream-token.key"
        ring = KeyRing.load_or_create(key_file)
        plain = await seed(store, ring, 1)
        with pytest.raises(RotationBlocked, match="the nodes elsewhere still encrypt with an old"):
            await rotate_keys(store, key_file, wait=0.3)
        assert await key_ids(store) == {"k1": 1}  # nothing re-encrypted
        assert await readable(store, KeyRing.load(key_file)) == plain


async def test_keys_rotate_command_moves_a_running_nodes_tokens_to_the_new_key(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient(timeout=20) as http:
        for user in ("alice", "bob"):
            await sign_in(http, node, user)
        before = await readable(node.store, node.auth.keyring)
        assert len(before) == 2
        with trio.fail_after(10):  # the janitor's first heartbeat names the node's key
            while not await node.store.fetchval(
                "SELECT info->>'key_id' = 'k1' FROM nodes WHERE node_id = $1", node.info.node_id
            ):
                await trio.sleep(0.05)
        command = [sys.executable, "-m", "server.cli", "keys", "rotate", "--json"]
        command += ["--database-url", fresh_db, "--data-dir", str(node.settings.data_dir)]
        out = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["key_id"] == "k2" and report["retired"] == ["k1"]
        assert report["reencrypted"]["upstream_tokens"] == 2
        assert await key_ids(node.store) == {"k2": 2}
        # the node reloads the key file once the old key is retired
        await wait_until(lambda: node.auth.keyring.key_ids == ["k2"], within=5, every=0.05)
        # the running node decrypts the re-encrypted tokens and encrypts new ones with k2
        assert await readable(node.store, node.auth.keyring) == before
        await sign_in(http, node, "carol")
        assert await key_ids(node.store) == {"k2": 3}
