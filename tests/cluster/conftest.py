"""Fixtures of the cluster tests; the harness lives in `cluster_harness` (importable from
these tests by its unique name)."""

from cluster_harness import cluster

__all__ = ["cluster"]
