"""Figures `/metrics` reports that are not in the hub's memory: artifact bytes per tenant
(read from the store, cached) and the expiry of the hub's own certificates.

Reading the store on every scrape would let a tight scrape interval load the database;
`ArtifactBytes` reads it at most once per `max_age_s`, and a scrape that comes sooner
reports the figures of the last read. A failed read keeps the last figures (and logs):
a store hiccup must not make /metrics fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from cryptography import x509

from cortex.hub.http._exposition import Family

__all__ = ["ArtifactBytes", "CertExpiry", "artifact_family", "certificate_family"]

log = logging.getLogger("cortex.hub.http")

ARTIFACT_BYTES_MAX_AGE_S = 30.0
"""How stale the artifact-bytes figures may get before a scrape reads the store again."""


class ArtifactBytes:
    """Bytes of each tenant's artifacts, read through `tenants` and `bytes_of`."""

    def __init__(self, *, tenants: Callable[[], Awaitable[list[str]]],
                 bytes_of: Callable[[str], Awaitable[int]], mono: Callable[[], float],
                 max_age_s: float = ARTIFACT_BYTES_MAX_AGE_S) -> None:
        self._tenants = tenants
        self._bytes_of = bytes_of
        self._mono = mono
        self._max_age_s = max_age_s
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self.figures: dict[str, int] = {}
        self.reads = 0          # store reads so far (the cache is tested by it)

    async def refresh(self) -> None:
        """Read the store unless the figures are younger than `max_age_s`."""
        async with self._lock:   # concurrent scrapes share one read
            now = self._mono()
            if self._read_at is not None and now - self._read_at < self._max_age_s:
                return
            try:
                figures = {t: await self._bytes_of(t) for t in await self._tenants()}
            except Exception:  # the store's failure must not fail the scrape
                log.warning("metrics: could not read artifact bytes; reporting the last "
                            "figures", exc_info=True)
                return
            self.figures, self._read_at = figures, now
            self.reads += 1


def artifact_family(figures: Mapping[str, int]) -> Family:
    fam = Family("cortex_artifact_bytes", "gauge",
                 "Bytes of each tenant's stored artifacts (read from the store at most "
                 "every 30 s).")
    for tenant, size in sorted(figures.items()):
        fam.add(size, {"tenant": tenant})
    return fam


@dataclass(frozen=True, slots=True)
class CertExpiry:
    """One certificate the hub holds: what it is and when it expires (Unix time)."""

    kind: str          # "hub-serving" | "root" | "intermediate"
    name: str
    signed_by: str
    not_after: float


def serving_expiry(chain_pem: bytes) -> float:
    """The not-after time of the first certificate of a PEM chain."""
    return x509.load_pem_x509_certificate(chain_pem).not_valid_after_utc.timestamp()


def certificate_family(certs: list[CertExpiry], now: float) -> Family:
    fam = Family("cortex_certificate_expiry_seconds", "gauge",
                 "Seconds until each of the hub's own certificates expires: its serving "
                 "certificate and every CA certificate (negative: expired).")
    for cert in certs:
        fam.add(round(cert.not_after - now, 3),
                {"kind": cert.kind, "name": cert.name, "signed_by": cert.signed_by})
    return fam
