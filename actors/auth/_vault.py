"""The upstream token vault: the identity provider's tokens of a grant, AES-GCM encrypted with
the key ring, their associated data binding them to the grant's row; it stores a new grant's
``upstream_tokens`` row (the refresh, the revocation and the key rotation change it later)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from actors._crypto import KeyRing
from actors._store import Conn
from actors._upstream import UpstreamTokens

__all__ = ["UpstreamVault"]


class UpstreamVault:
    """Holds the node's current key ring (``keyring``, replaced when the keys are reloaded) and
    seals and opens upstream tokens with it. The authorization flow seals what it keeps of a
    sign-in with the same ring."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def use(self, keyring: KeyRing) -> None:
        """Seal with ``keyring`` from now on (the keys were reloaded); it opens what the old one
        sealed as long as it holds the old key ids."""
        self.keyring = keyring

    def encrypt_upstream(
        self, grant_id: uuid.UUID, tokens: UpstreamTokens
    ) -> tuple[str, bytes, bytes | None]:
        key_id, access_ct = self.keyring.encrypt(tokens.access_token, aad=grant_id.bytes)
        refresh_ct = (
            self.keyring.encrypt(tokens.refresh_token, aad=grant_id.bytes)[1]
            if tokens.refresh_token
            else None
        )
        return key_id, access_ct, refresh_ct

    def decrypt_upstream(self, row: dict[str, Any]) -> UpstreamTokens:
        grant_id: uuid.UUID = row["grant_id"]
        access = self.keyring.decrypt(row["key_id"], row["access_ciphertext"], aad=grant_id.bytes)
        refresh = (
            self.keyring.decrypt(row["key_id"], row["refresh_ciphertext"], aad=grant_id.bytes)
            if row["refresh_ciphertext"]
            else None
        )
        return UpstreamTokens(access, refresh, row["access_expires_at"].timestamp())

    async def store(
        self, conn: Conn, grant_id: uuid.UUID, user_id: str, tokens: UpstreamTokens
    ) -> None:
        """A new grant's ``upstream_tokens`` row, sealed, in the caller's transaction."""
        key_id, access_ct, refresh_ct = self.encrypt_upstream(grant_id, tokens)
        await conn.execute(
            "INSERT INTO upstream_tokens (grant_id, user_id, key_id, access_ciphertext, "
            "refresh_ciphertext, access_expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            grant_id,
            user_id,
            key_id,
            access_ct,
            refresh_ct,
            datetime.datetime.fromtimestamp(tokens.expires_at, datetime.UTC),
        )
