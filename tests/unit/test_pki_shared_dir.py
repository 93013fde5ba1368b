"""One CA directory shared by several hubs: created once under concurrent starts, and a
rotation made through one CA object is seen by (and never clobbered by) the others."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
from pathlib import Path
from typing import Any

from cortex.hub.pki import CertificateAuthority

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _open(directory: str, barrier: Any, results: Any) -> None:
    """In a child process: wait for the others, then load or create the CA and report
    the fingerprint it pins."""
    barrier.wait()
    results.put(CertificateAuthority.load_or_create(Path(directory), now=NOW).fingerprint)


def test_hubs_starting_at_once_create_one_ca(tmp_path: Path) -> None:
    """Six processes released together into one empty directory agree on one root (without
    the lock, every such run ends with several)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(tmp_path / "ca"), barrier, results))
             for _ in range(6)]
    for p in procs:
        p.start()
    prints = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert len(set(prints)) == 1
    state = json.loads((tmp_path / "ca" / "state.json").read_text())
    assert state["roots"] == ["ca"]
    assert state["intermediates"] == ["int-1"]


def test_a_rotation_is_seen_by_the_other_hub(tmp_path: Path) -> None:
    """After hub A rotates, hub B reloads once: same issuer, same bundle, new generation."""
    a = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    b = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    assert not b.reload_if_changed()
    a.rotate(now=NOW, new_root=True)
    generation = b.generation
    assert b.node_issuer != a.node_issuer
    assert b.reload_if_changed()
    assert b.node_issuer == a.node_issuer == "int-2/root-2"
    assert b.cert_pem == a.cert_pem
    assert b.generation == generation + 1
    assert not b.reload_if_changed()


def test_a_stale_hub_rotating_builds_on_the_other_hubs_rotation(tmp_path: Path) -> None:
    """B rotates without having seen A's rotation: it loads A's first, so both stay."""
    a = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    b = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    a.rotate(now=NOW)
    b.rotate(now=NOW)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["intermediates"] == ["int-1", "int-2", "int-3"]
    assert a.reload_if_changed()
    assert a.node_issuer == b.node_issuer == "int-3/ca"


def test_the_lock_is_reentrant_within_one_hub(tmp_path: Path) -> None:
    """Rotating inside `locked()` (what maintenance does) does not deadlock."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    with ca.locked():
        ca.rotate(now=NOW)
    assert ca.node_issuer == "int-2/ca"
