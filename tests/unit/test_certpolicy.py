"""Certificate policy: pure decisions over numbers, with time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex.core.certpolicy import (
    BACKDATE_S,
    MAX_LIFETIME_S,
    MIN_LIFETIME_S,
    RENEW_WINDOW,
    CertPolicy,
    Reenroll,
    Validity,
    check_validity,
    intermediate_needs_rotation,
    issuer_retired,
    leaf_validity,
    reenroll_decision,
    renew_at,
)
from cortex.errors import InvalidArgument

NOW = 1_800_000_000.0
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
lifetimes = st.floats(min_value=MIN_LIFETIME_S, max_value=MAX_LIFETIME_S)
unit = st.floats(min_value=0.0, max_value=1.0)


def test_default_policy_is_a_day_with_three_days_grace() -> None:
    """The defaults: 24 h certificates, 72 h re-enrollment grace."""
    assert CertPolicy() == CertPolicy(lifetime_s=86400.0, reenroll_grace_s=3 * 86400.0)


@pytest.mark.parametrize("lifetime", [0.0, 4.9, MAX_LIFETIME_S + 1, -1.0])
def test_lifetime_out_of_bounds_is_refused_with_the_bounds(lifetime: float) -> None:
    """A lifetime outside 5 s - 7 days is refused, naming the bounds."""
    with pytest.raises(InvalidArgument, match="between 5 s and"):
        CertPolicy(lifetime_s=lifetime)


@pytest.mark.parametrize("grace", [-1.0, 31 * 86400.0])
def test_grace_out_of_bounds_is_refused(grace: float) -> None:
    """The re-enrollment grace is 0 (off) to 30 days."""
    with pytest.raises(InvalidArgument, match="grace"):
        CertPolicy(reenroll_grace_s=grace)


@given(now=times, lifetime=lifetimes, issuer_left=st.floats(min_value=1e-3, max_value=1e9))
def test_a_leaf_never_outlives_its_issuer(now: float, lifetime: float,
                                          issuer_left: float) -> None:
    """Leaves are backdated and end at the earlier of now + lifetime and the issuer's end."""
    v = leaf_validity(now, lifetime, now + issuer_left)
    assert v.not_before == now - BACKDATE_S
    assert v.not_after <= now + issuer_left
    assert v.not_after <= now + lifetime
    assert v.not_after == min(now + lifetime, now + issuer_left)


def test_an_expired_issuer_issues_nothing() -> None:
    """An issuer past its end refuses to issue, telling the operator to rotate."""
    with pytest.raises(InvalidArgument, match="cortex ca rotate"):
        leaf_validity(NOW, 3600, NOW)


@given(start=times, lifetime=lifetimes, u=unit)
def test_renewal_falls_in_the_50_to_67_percent_window(start: float, lifetime: float,
                                                      u: float) -> None:
    """Renewal happens between 50 % and 67 % of the lifetime, measured without the backdate."""
    v = Validity(start - BACKDATE_S, start + lifetime)
    at = renew_at(v, u)
    lo, hi = RENEW_WINDOW
    assert start + lifetime * lo - 1e-6 <= at <= start + lifetime * hi + 1e-6
    assert at < v.not_after


@given(u1=unit, u2=unit)
def test_renewal_time_grows_with_the_jitter_draw(u1: float, u2: float) -> None:
    """The draw maps monotonically onto the window, so jitter spreads renewals."""
    v = Validity(NOW - BACKDATE_S, NOW + 86400)
    if u1 <= u2:
        assert renew_at(v, u1) <= renew_at(v, u2)


def test_renewal_window_ends_are_exact() -> None:
    """u=0 renews at 50 % and u=1 at 67 % of a day."""
    v = Validity(NOW - BACKDATE_S, NOW + 86400)
    assert renew_at(v, 0.0) == pytest.approx(NOW + 43200)
    assert renew_at(v, 1.0) == pytest.approx(NOW + 0.67 * 86400)


@pytest.mark.parametrize("u", [-0.1, 1.1])
def test_jitter_draw_outside_unit_interval_is_refused(u: float) -> None:
    """The draw must be in [0, 1]."""
    with pytest.raises(InvalidArgument):
        renew_at(Validity(NOW, NOW + 100), u)


@pytest.mark.parametrize(("now", "revoked", "expected"), [
    (NOW - 10, False, Reenroll.NOT_YET_VALID),
    (NOW + 10, False, Reenroll.RENEW),
    (NOW + 100, False, Reenroll.ALLOWED),          # exactly at expiry
    (NOW + 100 + 50, False, Reenroll.ALLOWED),     # inside the grace
    (NOW + 100 + 60, False, Reenroll.ALLOWED),     # at the end of the grace
    (NOW + 100 + 61, False, Reenroll.TOO_LATE),
    (NOW + 10, True, Reenroll.REVOKED),
    (NOW + 150, True, Reenroll.REVOKED),
])
def test_reenroll_decisions(now: float, revoked: bool, expected: Reenroll) -> None:
    """Valid: renew instead; expired within the grace: allowed; past it or revoked: no."""
    v = Validity(NOW, NOW + 100)
    assert reenroll_decision(v, now=now, grace_s=60, revoked=revoked) is expected


@given(after=st.floats(min_value=0, max_value=1e7))
def test_zero_grace_never_allows_reenrollment(after: float) -> None:
    """With the grace off, an expired certificate always needs a new join token."""
    v = Validity(NOW, NOW + 100)
    assert reenroll_decision(v, now=v.not_after + after, grace_s=0,
                             revoked=False) is Reenroll.TOO_LATE


@given(now=times, grace=st.floats(min_value=0, max_value=1e7), revoked=st.booleans())
def test_revoked_always_wins(now: float, grace: float, revoked: bool) -> None:
    """Whatever the time and grace, a revoked node never re-enrolls."""
    d = reenroll_decision(Validity(NOW, NOW + 100), now=now, grace_s=grace, revoked=revoked)
    assert (d is Reenroll.REVOKED) == revoked


def test_check_validity_says_what_is_wrong() -> None:
    """'' while valid; 'expired' after; 'not valid for another' before."""
    v = Validity(NOW, NOW + 100)
    assert check_validity(v, NOW + 1) == ""
    assert "expired 50 s ago" in check_validity(v, NOW + 150)
    assert "not valid for another 10 s" in check_validity(v, NOW - 10)


def test_intermediate_rotates_when_a_full_leaf_no_longer_fits() -> None:
    """An issuer with less than a leaf lifetime plus margin left must be replaced."""
    issuer = Validity(NOW - 1000, NOW + 86400 + 3600 + 1)
    assert not intermediate_needs_rotation(issuer, now=NOW, lifetime_s=86400)
    assert intermediate_needs_rotation(issuer, now=NOW + 2, lifetime_s=86400)


@given(active=st.booleans(), latest=times, now=times)
def test_an_issuer_retires_only_when_inactive_and_unused(active: bool, latest: float,
                                                         now: float) -> None:
    """The active issuer never retires; a superseded one once its last leaf expired."""
    retired = issuer_retired(active=active, latest_leaf_not_after=latest, now=now)
    assert retired == (not active and latest <= now)
