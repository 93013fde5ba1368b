"""Identifiers: time-ordered (so newest-first listing is an index scan) and unguessable."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``<prefix>-`` + 10 chars of milliseconds + 10 random chars (50 bits)."""
    ms = time.time_ns() // 1_000_000
    return f"{prefix}-{_b32(ms, 10)}{_b32(secrets.randbits(50), 10)}"
