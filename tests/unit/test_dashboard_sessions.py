"""Dashboard sessions without a clock: idle and absolute expiry, the bound, ending."""

from __future__ import annotations

from cortex.hub.web import Sessions
from cortex.hub.web._sessions import same_secret


def test_a_session_lives_while_used_and_ends_after_the_idle_bound() -> None:
    """Each use pushes the idle expiry forward; a gap longer than it ends the session."""
    live = Sessions(idle_s=10, lifetime_s=1000)
    s = live.create("tok", now=0)
    assert live.touch(s.id, now=9) is not None
    assert live.touch(s.id, now=18) is not None
    assert live.touch(s.id, now=28.5) is None
    assert len(live) == 0


def test_a_busy_session_still_ends_at_its_lifetime() -> None:
    """However often it is used, a session ends `lifetime_s` after login."""
    live = Sessions(idle_s=10, lifetime_s=25)
    s = live.create("tok", now=0)
    for t in (5, 10, 15, 20):
        assert live.touch(s.id, now=t) is not None
    assert live.touch(s.id, now=25) is None


def test_the_bound_ends_the_least_recently_used_session() -> None:
    """At the bound a new login ends the session used longest ago, not a busy one."""
    live = Sessions(idle_s=100, lifetime_s=100, max_sessions=2)
    a = live.create("a", now=0)
    b = live.create("b", now=1)
    assert live.touch(a.id, now=2) is not None      # a is now the most recent
    live.create("c", now=3)
    assert live.touch(b.id, now=4) is None
    assert live.touch(a.id, now=4) is not None
    assert len(live) == 2


def test_one_token_at_its_bound_ends_only_its_own_oldest_session() -> None:
    """Logging in again and again with one token cannot push other logins out: past its
    bound, each new login of that token ends that token's least recently used session."""
    live = Sessions(idle_s=100, lifetime_s=100, max_sessions=10, max_per_token=3)
    others = [live.create(f"other-{i}", now=0) for i in range(5)]
    mine = [live.create("noisy", now=1) for _ in range(3)]
    assert live.touch(mine[0].id, now=2) is not None     # mine[1] is now its oldest
    for t in range(3, 23):
        live.create("noisy", now=t)
    assert len(live) == 8                                 # 5 others + 3 of the noisy token
    assert all(live.touch(o.id, now=30) is not None for o in others)
    assert live.touch(mine[1].id, now=30) is None
    assert live.end_for_token("noisy") == 3
    assert len(live) == 5


def test_ending_by_token_ends_every_session_of_that_token_only() -> None:
    """A refused token takes all its sessions with it and leaves the others."""
    live = Sessions()
    one, two = live.create("t1", now=0), live.create("t1", now=0)
    other = live.create("t2", now=0)
    assert live.end_for_token("t1") == 2
    assert live.touch(one.id, now=1) is None
    assert live.touch(two.id, now=1) is None
    assert live.touch(other.id, now=1) is not None
    live.end(other.id)
    assert len(live) == 0


def test_secrets_compare_exactly_and_empty_never_matches() -> None:
    """The CSRF comparison: equal non-empty strings only."""
    live = Sessions()
    s = live.create("t", now=0)
    assert s.csrf != s.id
    assert same_secret(s.csrf, s.csrf)
    assert not same_secret(s.csrf[:-1], s.csrf)
    assert not same_secret("", "")
