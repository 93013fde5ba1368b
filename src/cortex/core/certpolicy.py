"""Certificate policy: lifetimes, when to renew, re-enrollment grace, issuer retirement.

Pure decisions over numbers (POSIX seconds); no clock, no X.509 toolkit, no I/O. The hub's
PKI (`cortex.hub.pki`) and the node's renewal loop ask these functions and act on the
answer, so every rule below is testable without waiting or making a certificate.

    leaf lifetime     configurable (hub config), clamped so no leaf outlives its issuer
    renew at          not_before + lifetime x U(0.50, 0.67), jittered per node
    after expiry      re-enroll with the old certificate only within `grace_s`, only if
                      not revoked; after that the node needs a new join token
    intermediates     rotate when less than (leaf lifetime + margin) of life is left;
                      a superseded one retires once every leaf it signed has expired
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cortex.errors import InvalidArgument

__all__ = [
    "MAX_LIFETIME_S",
    "MIN_LIFETIME_S",
    "REENROLL_CONTEXT",
    "RENEW_WINDOW",
    "CertPolicy",
    "Reenroll",
    "Validity",
    "check_validity",
    "intermediate_needs_rotation",
    "issuer_retired",
    "leaf_validity",
    "reenroll_decision",
    "renew_at",
]

MIN_LIFETIME_S = 5.0               # short enough for tests, long enough to renew in
MAX_LIFETIME_S = 7 * 86400.0       # a week: past that, revocation would matter too much
RENEW_WINDOW = (0.50, 0.67)        # fraction of the lifetime at which a node renews
BACKDATE_S = 60.0                  # NotBefore in the past: tolerates small clock skew
# What a node signs with its expired key, before the new CSR, to re-enroll (domain
# separation: such a signature can never be mistaken for anything else the key signed).
REENROLL_CONTEXT = b"cortex-reenroll\0"


@dataclass(frozen=True, slots=True)
class CertPolicy:
    """What the hub's config decides about node certificates."""

    lifetime_s: float = 24 * 3600.0
    # How long after expiry a node may still re-enroll with its old certificate (0 = never).
    reenroll_grace_s: float = 72 * 3600.0

    def __post_init__(self) -> None:
        if not MIN_LIFETIME_S <= self.lifetime_s <= MAX_LIFETIME_S:
            raise InvalidArgument(
                f"node certificate lifetime must be between {MIN_LIFETIME_S:g} s and "
                f"{MAX_LIFETIME_S:g} s (7 days); got {self.lifetime_s:g} s")
        if not 0 <= self.reenroll_grace_s <= 30 * 86400:
            raise InvalidArgument(
                "re-enrollment grace must be between 0 (off) and 30 days; got "
                f"{self.reenroll_grace_s:g} s")


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: float
    not_after: float

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before


def leaf_validity(now: float, lifetime_s: float, issuer_not_after: float) -> Validity:
    """The validity of a leaf issued at `now`: backdated, never past its issuer's end."""
    if issuer_not_after <= now:
        raise InvalidArgument("the issuing CA certificate has expired: rotate the CA "
                              "(`cortex ca rotate`) before issuing certificates")
    return Validity(now - BACKDATE_S, min(now + lifetime_s, issuer_not_after))


def renew_at(validity: Validity, u: float) -> float:
    """When to renew: at a fraction of the lifetime in RENEW_WINDOW chosen by u in [0, 1].

    The fraction is measured from the unbackdated start, so the backdate does not pull
    renewal earlier; a node that cannot reach the hub still has a third of the lifetime.
    """
    if not 0.0 <= u <= 1.0:
        raise InvalidArgument("u must be in [0, 1]")
    lo, hi = RENEW_WINDOW
    start = min(validity.not_before + BACKDATE_S, validity.not_after)
    return start + (validity.not_after - start) * (lo + (hi - lo) * u)


class Reenroll(enum.Enum):
    """What the hub does with a node that presents its (possibly expired) certificate."""

    RENEW = "renew"              # still valid: renew over mTLS instead
    ALLOWED = "allowed"          # expired, within the grace: issue a new certificate
    TOO_LATE = "too_late"        # expired past the grace: a new join token is needed
    REVOKED = "revoked"          # revoked: never again with this identity
    NOT_YET_VALID = "not_yet_valid"


def reenroll_decision(validity: Validity, *, now: float, grace_s: float,
                      revoked: bool) -> Reenroll:
    if revoked:
        return Reenroll.REVOKED
    if now < validity.not_before:
        return Reenroll.NOT_YET_VALID
    if now < validity.not_after:
        return Reenroll.RENEW
    if grace_s > 0 and now - validity.not_after <= grace_s:
        return Reenroll.ALLOWED
    return Reenroll.TOO_LATE


def check_validity(validity: Validity, now: float) -> str:
    """'' when valid at `now`, else what is wrong (for an error message)."""
    if now < validity.not_before:
        return f"not valid for another {validity.not_before - now:.0f} s (check the clock)"
    if now >= validity.not_after:
        return f"expired {now - validity.not_after:.0f} s ago"
    return ""


def intermediate_needs_rotation(issuer: Validity, *, now: float, lifetime_s: float,
                                margin_s: float = 3600.0) -> bool:
    """True when a new leaf from this issuer would be cut short (or it is about to be)."""
    return issuer.not_after - now < lifetime_s + margin_s


def issuer_retired(*, active: bool, latest_leaf_not_after: float, now: float) -> bool:
    """A superseded issuer retires once nothing it signed is still valid."""
    return not active and latest_leaf_not_after <= now
