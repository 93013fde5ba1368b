"""API tokens (clients) and join tokens (nodes): random secrets, stored as SHA-256 only.

    API token:  ctk_<id>.<secret>                 shown once; role + tenant bound
    join token: cjt_<id>.<secret>#sha256:<pin>    single-use; pins the CA's public key
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cortex.core.tokens import parse_join_token
from cortex.errors import InvalidArgument, PermissionDenied
from cortex.hub.access import ROLES
from cortex.store.base import DEFAULT_POOL, ApiTokenRecord, JoinTokenRecord, Store

__all__ = [
    "Authenticator",
    "Principal",
    "hash_secret",
    "issue_api_token",
    "issue_api_token_record",
    "issue_join_token",
    "parse_join_token",
]

_CACHE_S = 5.0  # a revoked token keeps working at most this long on a hub
_WHERE = "the hub wrote its admin token to <CORTEX_HOME>/hub/admin.token"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: str
    token_id: str


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def issue_api_token(store: Store, *, tenant: str, role: str, name: str, now: float,
                          ttl_s: float = 0.0) -> str:
    token, _ = await issue_api_token_record(store, tenant=tenant, role=role, name=name,
                                            now=now, ttl_s=ttl_s)
    return token


async def issue_api_token_record(store: Store, *, tenant: str, role: str, name: str,
                                 now: float, ttl_s: float = 0.0
                                 ) -> tuple[str, ApiTokenRecord]:
    """A new API token (the secret, shown once) and its stored record (hash only)."""
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if ttl_s < 0 or ttl_s > 10 * 365 * 86400:
        raise InvalidArgument("ttl must be between 0 (never expires) and 10 years")
    if not 1 <= len(name) <= 128:
        raise InvalidArgument("token name: give 1 to 128 characters (what the token is for)")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    rec = ApiTokenRecord(
        id=token_id, tenant=tenant, name=name, role=role, secret_hash=hash_secret(secret),
        created_at=now, expires_at=now + ttl_s if ttl_s else 0.0,
    )
    await store.create_api_token(rec)
    return f"ctk_{token_id}.{secret}", rec


async def issue_join_token(store: Store, *, tenant: str, labels: dict[str, str], now: float,
                           ttl_s: float, fingerprint: str, pool: str = DEFAULT_POOL
                           ) -> tuple[str, float]:
    if not 0 < ttl_s <= 30 * 86400:
        raise InvalidArgument("join token ttl must be between 1 s and 30 days")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    expires = now + ttl_s
    await store.create_join_token(JoinTokenRecord(
        id=token_id, tenant=tenant, secret_hash=hash_secret(secret), labels=labels,
        created_at=now, expires_at=expires, pool=pool,
    ))
    return f"cjt_{token_id}.{secret}#{fingerprint}", expires


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Principal]] = {}

    def forget(self, token_id: str) -> None:
        """A token revoked through this hub stops working here at once (not after the
        cache's few seconds)."""
        self._cache = {k: v for k, v in self._cache.items() if v[1].token_id != token_id}

    async def authenticate(self, metadata: tuple[tuple[str, str | bytes], ...] | None,
                           *, now: float, mono: float) -> Principal:
        token = _bearer(metadata)
        cached = self._cache.get(token)
        if cached and mono - cached[0] < _CACHE_S:
            return cached[1]
        token_id, dot, secret = token.removeprefix("ctk_").partition(".")
        if not token.startswith("ctk_") or not dot:
            raise PermissionDenied("malformed API token: expected ctk_<id>.<secret>")
        rec = await self._store.find_api_token(token_id)
        if rec is None or not hmac.compare_digest(rec.secret_hash, hash_secret(secret)):
            raise PermissionDenied(
                f"unknown API token: pass a valid one with --token or CORTEX_TOKEN ({_WHERE})")
        if rec.revoked_at:
            raise PermissionDenied("this API token was revoked")
        if rec.expires_at and rec.expires_at <= now:
            raise PermissionDenied("this API token has expired; create a new one")
        principal = Principal(rec.tenant, rec.role, rec.id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (mono, principal)
        return principal


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise PermissionDenied("authorization metadata must be 'Bearer <token>'")
    raise PermissionDenied(f"no API token: pass --token or set CORTEX_TOKEN ({_WHERE})")
