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
        """The key ring of a key file, generated once (one key, ``key_id``) with owner-only
        permissions when the file does not exist yet."""
        if path.exists():
            return cls.load(path, key_id)
        ring = cls({key_id: AESGCM.generate_key(bit_length=256)}, key_id)
        ring.save(path)
        return ring

    @classmethod
    def load(cls, path: Path, default_id: str = "k1") -> KeyRing:
        """Read a key file: one ``<key id> <base64 key>`` per line, the last one current.

        A file holding a bare base64 key (as Steward wrote before key rotation) is one key with
        id ``default_id``.
        """
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        if len(lines) == 1 and len(lines[0]) == 1:
            return cls.from_base64(default_id, lines[0][0])
        keys: dict[str, bytes] = {}
        for n, fields in enumerate(lines, 1):
            if len(fields) != 2:
                msg = f"key file {str(path)!r}, line {n}: expected '<key id> <base64 key>'"
                raise ValueError(msg)
            try:
                keys[fields[0]] = base64.b64decode(fields[1], validate=True)
            except ValueError:
                msg = f"key file {str(path)!r}, line {n}: the key is not base64"
                raise ValueError(msg) from None
        if not keys:
            msg = f"key file {str(path)!r} holds no key"
            raise ValueError(msg)
        return cls(keys, lines[-1][0])

    def save(self, path: Path) -> None:
        """Write the ring to ``path`` (mode 0600), the current key last; atomic: a reader sees
        the old file or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        order = [k for k in self._raw if k != self.current] + [self.current]
        text = "".join(f"{k} {base64.b64encode(self._raw[k]).decode()}\n" for k in order)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def next_key_id(self) -> str:
        """A key id not in the ring: ``k<n>`` one past the highest ``k<n>``."""
        numbers = [int(k[1:]) for k in self._raw if k[:1] == "k" and k[1:].isdigit()]
        return f"k{max(numbers, default=0) + 1}"

    def rotated(self) -> KeyRing:
        """A ring with a new random key, current, beside the old ones (which still decrypt)."""
        return self.with_key(self.next_key_id(), AESGCM.generate_key(bit_length=256))

    def only_current(self) -> KeyRing:
        """A ring of the current key alone (old keys retired)."""
        return KeyRing({self.current: self._raw[self.current]}, self.current)

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
