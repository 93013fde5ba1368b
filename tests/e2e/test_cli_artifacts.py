"""The README's "Files and artifacts" commands, end to end against `cortex up`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cortex

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TRACEBACK = "Traceback (most recent call last)"


def test_run_with_artifact_then_ls_get_put_rm(cortex: Cortex, tmp_path: Path) -> None:
    """`run --artifact` lists File refs; `artifacts ls/get` fetch them verified; `put`
    uploads, `rm` deletes, and a deleted id is a clear error, not a traceback."""
    work = tmp_path / "work"
    work.mkdir()
    payload = os.urandom(300_000)
    (tmp_path / "payload.bin").write_bytes(payload)
    out = cortex.json("run", "--cwd", str(work), "--artifact", "out/*.tar.gz", "--",
                      "sh", "-c", f"mkdir -p out && cp {tmp_path / 'payload.bin'} "
                      "out/app.tar.gz && echo not me > out/notes.txt")
    task = out["task"]
    assert [f["name"] for f in task["files"]] == ["out/app.tar.gz"]
    listed = cortex.json("artifacts", "ls", task["id"])
    assert [f["artifact_id"] for f in listed] == [task["files"][0]["artifact_id"]]
    dest = tmp_path / "dl"
    dest.mkdir()
    got = cortex.ok("artifacts", "get", task["id"], "out/app.tar.gz", "-o", str(dest))
    assert got.stdout.strip() == str(dest / "app.tar.gz")
    assert (dest / "app.tar.gz").read_bytes() == payload

    put = cortex.json("artifacts", "put", str(tmp_path / "payload.bin"), "--name", "p.bin")
    assert put["sha256"] == hashlib.sha256(payload).hexdigest()
    cortex.ok("artifacts", "rm", put["artifact_id"])
    gone = cortex.run("artifacts", "stat", put["artifact_id"])
    assert gone.returncode != 0
    assert "no artifact" in gone.stderr
    assert TRACEBACK not in gone.stderr


def test_get_resumes_a_partial_download(cortex: Cortex, tmp_path: Path) -> None:
    """`artifacts get` continues a <file>.part left by an interrupted download."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(500_000))
    art = cortex.json("artifacts", "put", str(src))
    dest = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(src.read_bytes()[:200_000])
    cortex.ok("artifacts", "get", art["artifact_id"], "-o", str(dest))
    assert dest.read_bytes() == src.read_bytes()
    assert not (tmp_path / "out.bin.part").exists()
