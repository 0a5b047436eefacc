"""Encryption of upstream tokens at rest (AES-256-GCM) and hashing of Steward's own tokens."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KeyRing", "hash_token", "new_token"]

_NONCE = 12


def new_token() -> str:
    """An opaque token: 256 bits from the CSPRNG, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """What is stored of a token: its SHA-256 (tokens carry 256 random bits, so no salt is needed)."""
    return hashlib.sha256(token.encode()).digest()


class KeyRing:
    """AES-GCM keys by id: encrypt with the current key, decrypt with any known one.

    The associated data binds a ciphertext to its row (the grant id), so a ciphertext copied to
    another row does not decrypt.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            msg = f"current key id {current!r} is not among the keys {sorted(keys)}"
            raise ValueError(msg)
        for key_id, key in keys.items():
            if len(key) != 32:
                msg = f"key {key_id!r} must be 32 bytes (AES-256), got {len(key)}"
                raise ValueError(msg)
        self._raw = dict(keys)
        self._keys = {k: AESGCM(v) for k, v in keys.items()}
        self.current = current

    @classmethod
    def from_base64(cls, key_id: str, key_b64: str) -> KeyRing:
        try:
            key = base64.b64decode(key_b64, validate=True)
        except ValueError as exc:
            msg = "setting 'encryption_key' must be base64 of 32 bytes"
            raise ValueError(msg) from exc
        return cls({key_id: key}, key_id)

    @classmethod
    def load_or_create(cls, path: Path, key_id: str = "k1") -> KeyRing:
        """Development: a key generated once into ``path`` with owner-only permissions."""
        if path.exists():
            return cls.from_base64(key_id, path.read_text().strip())
        path.parent.mkdir(parents=True, exist_ok=True)
        key = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return cls.from_base64(key_id, key)

    def with_key(self, key_id: str, key: bytes) -> KeyRing:
        """A ring that also knows ``key_id`` and encrypts with it (key rotation)."""
        keys = {**self._raw, key_id: key}
        return KeyRing(keys, key_id)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def encrypt(self, plaintext: str, *, aad: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(_NONCE)
        return self.current, nonce + self._keys[self.current].encrypt(
            nonce, plaintext.encode(), aad
        )

    def decrypt(self, key_id: str, blob: bytes, *, aad: bytes) -> str:
        aes = self._keys.get(key_id)
        if aes is None:
            msg = f"no key {key_id!r} in the key ring ({self.key_ids})"
            raise KeyError(msg)
        return aes.decrypt(blob[:_NONCE], blob[_NONCE:], aad).decode()
