"""Artifact rules without I/O (names, upload ids, chunks, quota, expiry, output globs) and
the node's fs path check."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex.core.artifacts import (
    MAX_CHUNK_BYTES,
    check_artifact_globs,
    check_chunk,
    check_name,
    check_quota,
    check_upload_id,
    expiry,
)
from cortex.errors import Conflict, InvalidArgument, PermissionDenied
from cortex.node.fs import safe_path


@pytest.mark.parametrize("name", ["", "/abs", "../x", "a/../b", "a//b", "./a", "a/.", "a\\b",
                                  "a\0b", "x" * 1025])
def test_bad_names_are_refused(name: str) -> None:
    """Names become local paths: nothing absolute, empty, dotted or escaping passes."""
    with pytest.raises(InvalidArgument):
        check_name(name)


@given(st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(
    lambda p: p not in (".", "..")), min_size=1, max_size=5))
def test_relative_names_pass(parts: list[str]) -> None:
    """Any relative path of ordinary parts is a valid name."""
    name = "/".join(parts)
    assert check_name(name) == name


@pytest.mark.parametrize("uid", ["short", "has space xx", "x" * 65, "über-upload"])
def test_bad_upload_ids(uid: str) -> None:
    """Upload ids are 8-64 characters of [A-Za-z0-9_-]."""
    with pytest.raises(InvalidArgument, match="upload_id"):
        check_upload_id(uid)


def test_chunk_checks_name_both_numbers() -> None:
    """Offsets must equal the committed size; chunk size and declared size are bounds."""
    check_chunk(offset=10, committed=10, length=5, declared=15)
    with pytest.raises(InvalidArgument, match="write_offset 20 is beyond the 10 bytes"):
        check_chunk(offset=20, committed=10, length=5, declared=-1)
    with pytest.raises(InvalidArgument, match="write_offset 5 is before the 10 bytes"):
        check_chunk(offset=5, committed=10, length=5, declared=-1)
    with pytest.raises(InvalidArgument, match="limit"):
        check_chunk(offset=0, committed=0, length=MAX_CHUNK_BYTES + 1, declared=-1)
    with pytest.raises(InvalidArgument, match="passes the 12 bytes"):
        check_chunk(offset=10, committed=10, length=5, declared=12)


def test_quota() -> None:
    """Quota 0 is unlimited; past it Conflict names usage, need and quota."""
    check_quota(used=10**15, adding=10**15, quota=0)
    check_quota(used=50, adding=50, quota=100)
    with pytest.raises(Conflict, match="stores 50 bytes, this upload needs 51 more"):
        check_quota(used=50, adding=51, quota=100)


def test_expiry() -> None:
    """An explicit ttl wins over the default; both 0 mean never; bad ttls are refused."""
    assert expiry(now=100.0, ttl_s=5.0, default_ttl_s=50.0) == 105.0
    assert expiry(now=100.0, ttl_s=0.0, default_ttl_s=50.0) == 150.0
    assert expiry(now=100.0, ttl_s=0.0, default_ttl_s=0.0) == 0.0
    with pytest.raises(InvalidArgument):
        expiry(now=0.0, ttl_s=-1.0, default_ttl_s=0.0)


def test_output_globs() -> None:
    """Output globs are relative without '..'; at most 64."""
    assert check_artifact_globs(["out/*.tar.gz", "**/*.log"]) == []
    assert check_artifact_globs(["/etc/*"])
    assert check_artifact_globs(["a/../../b"])
    assert check_artifact_globs([""])
    assert check_artifact_globs(["x"] * 65)


def test_safe_path_rules(tmp_path: Path) -> None:
    """safe_path: absolute, no '..', resolved inside a root; no roots = refused."""
    root = tmp_path.resolve()
    (root / "a").mkdir()
    assert safe_path([root], f"{root}/a/new.txt") == root / "a" / "new.txt"
    with pytest.raises(InvalidArgument):
        safe_path([root], "relative/path")
    with pytest.raises(PermissionDenied, match=r"'\.\.' is not allowed"):
        safe_path([root], f"{root}/a/../a")
    with pytest.raises(PermissionDenied, match="--fs-root"):
        safe_path([], f"{root}/a")
