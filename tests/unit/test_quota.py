"""Quota accounting and weighted fair share (cortex.core.quota): pure, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex.core.quota import (
    Demand,
    Quota,
    Usage,
    pick_tenant,
    refuse_reason,
    wait_reason,
)

demands = st.builds(Demand, cpus=st.sampled_from([0, 0.25, 0.5, 1, 2, 4]),
                    memory_mib=st.integers(0, 4096), gpus=st.integers(0, 2),
                    browser_sessions=st.integers(0, 2))
quotas = st.builds(Quota, tasks=st.integers(0, 6), cpus=st.sampled_from([0, 1, 2.5, 8]),
                   memory_mib=st.integers(0, 8192), gpus=st.integers(0, 3),
                   browser_sessions=st.integers(0, 3))


def test_zero_quota_means_unlimited() -> None:
    """An empty quota refuses nothing and never makes a task wait."""
    big = Demand(cpus=64, memory_mib=1 << 20, gpus=8, browser_sessions=9)
    assert refuse_reason("a", Quota(), big) == ""
    assert wait_reason("a", Quota(), Usage(tasks=10_000, cpus=1e6), big) == ""


def test_a_task_alone_over_the_quota_is_refused_naming_it() -> None:
    """Refusal names the quota that can never be met, with both figures."""
    msg = refuse_reason("acme", Quota(cpus=2, gpus=1), Demand(cpus=4))
    for part in ("acme", "CPU cores", "needs 4", "quota is 2"):
        assert part in msg
    assert "GPUs" not in msg


def test_waiting_names_the_quota_and_usage() -> None:
    """A task that would push usage over the quota waits, with reason `quota: ...`."""
    msg = wait_reason("acme", Quota(tasks=2), Usage(tasks=2), Demand())
    assert msg.startswith("quota: ")
    assert "limit of 2 concurrent tasks" in msg


def test_quota_rejects_negative_and_unknown_fields() -> None:
    """Bad quota values are refused when the value is built."""
    with pytest.raises(ValueError, match="must be >= 0"):
        Quota(tasks=-1)
    with pytest.raises(ValueError, match="unknown quota field"):
        Quota.from_dict({"disks": 3})
    assert Quota.from_dict({"cpus": 1.5, "tasks": 3}) == Quota(tasks=3, cpus=1.5)


@given(quotas, st.lists(demands, max_size=12))
def test_admitting_only_when_wait_reason_is_empty_never_exceeds_the_quota(
        quota: Quota, tasks: list[Demand]) -> None:
    """Greedy admission through wait_reason keeps usage within every quota field."""
    usage = Usage()
    for d in tasks:
        if not wait_reason("t", quota, usage, d):
            usage = usage.plus(d)
    for name, limit in quota.as_dict().items():
        assert getattr(usage, name) <= limit + 1e-9, name


@given(quotas, demands)
def test_a_task_that_is_not_refused_fits_an_idle_tenant(quota: Quota, d: Demand) -> None:
    """Refusal and waiting agree: what is admissible at all starts on an idle tenant."""
    assert (refuse_reason("t", quota, d) == "") == (wait_reason("t", quota, Usage(), d) == "")


@given(st.lists(demands, max_size=10))
def test_releasing_what_was_taken_returns_to_idle(tasks: list[Demand]) -> None:
    """plus then minus of the same demands is the empty usage (no drift, no negatives)."""
    usage = Usage()
    for d in tasks:
        usage = usage.plus(d)
    for d in reversed(tasks):
        usage = usage.minus(d)
    assert usage == Usage()
    assert Usage().minus(Demand(cpus=1, gpus=1)) == Usage()


def test_pick_tenant_prefers_the_lowest_weighted_share() -> None:
    """Lowest tasks-per-weight first; ties by name; idle beats busy."""
    usage = {"a": Usage(tasks=4), "b": Usage(tasks=3)}
    assert pick_tenant(["a", "b"], usage, {"a": 2.0, "b": 1.0}) == "a"   # 2.0 < 3.0
    assert pick_tenant(["a", "b"], usage, {}) == "b"
    assert pick_tenant(["a", "c"], usage, {}) == "c"
    assert pick_tenant([], usage, {}) is None


@given(st.integers(1, 4), st.integers(1, 4), st.integers(4, 60))
def test_fair_share_converges_to_the_weights(wa: int, wb: int, slots: int) -> None:
    """Filling `slots` one at a time with pick_tenant splits them in proportion to weight."""
    usage = {"a": Usage(), "b": Usage()}
    weights = {"a": float(wa), "b": float(wb)}
    for _ in range(slots):
        t = pick_tenant(["a", "b"], usage, weights)
        assert t is not None
        usage[t] = usage[t].plus(Demand())
    ideal_a = slots * wa / (wa + wb)
    assert abs(usage["a"].tasks - ideal_a) <= 1.0 + 1e-9
