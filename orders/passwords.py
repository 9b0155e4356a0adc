"""Maîtres' passwords, hashed with the standard library's scrypt and a random salt per password.

Stored form: `scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`. The cost parameters travel with each hash, so
that raising them later does not lock anybody out: old hashes still verify with their own parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# 2**14 × 8 × 1 uses 16 MiB and about 50 ms per check on a small PC: slow for a guesser, quick for a person.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_MEMORY = 64 * 1024 * 1024
MIN_LENGTH = 10


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Hash `password` with a fresh salt; the result is what the `maitres.password_hash` column holds."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=_HASH_BYTES)
    return "$".join(("scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored`. False (never an exception) for a malformed stored hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n), r=int(r), p=int(p), maxmem=_MAX_MEMORY, dklen=len(expected),
        )
    except ValueError:  # wrong field count, bad base64 (binascii.Error is a ValueError), bad scrypt parameters
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
