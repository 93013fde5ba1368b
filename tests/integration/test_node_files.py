"""`cortex cp` and `cortex fs` on a real hub and node: files move through the artifact
store, and the node's fs skill never leaves its allowed roots (no '..', no absolute path
outside, no symlink escape), answering each attempt with a clear error."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cortex.cli.files import _download, _fs, _upload
from cortex.errors import InvalidArgument, RemoteError
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import Client, ClientConfig
from cortex.testing import running_node

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest_asyncio.fixture
async def fs_node(hub: Hub, tmp_path: Path, root: Path) -> AsyncIterator[Agent]:
    async with running_node(hub, tmp_path / "fsnode", fs_roots=(str(root),)) as agent:
        yield agent


@pytest.fixture
def config(hub: Hub) -> ClientConfig:
    assert hub.ca is not None
    return ClientConfig(address=hub.address, token=hub.admin_token, ca_pem=hub.ca.cert_pem)


async def test_cp_to_and_from_a_node_round_trips(config: ClientConfig, fs_node: Agent,
                                                 root: Path, tmp_path: Path) -> None:
    """A file copied to a node directory lands there byte for byte; copied back it is the
    same again; the staging artifacts are deleted afterwards."""
    src = tmp_path / "dataset.bin"
    src.write_bytes(os.urandom(700_000))
    where = await _upload(config, src, src.stat().st_size, "fsnode", f"{root}/",
                          quiet=True)
    assert where == f"fsnode:{root / 'dataset.bin'}"
    assert (root / "dataset.bin").read_bytes() == src.read_bytes()
    back = tmp_path / "back"
    back.mkdir()
    got = await _download(config, "fsnode", str(root / "dataset.bin"), back, True,
                          quiet=True)
    assert got == back / "dataset.bin"
    assert got.read_bytes() == src.read_bytes()
    async with Client(config) as client:
        assert await client.list_artifacts() == []


async def test_fs_ls_stat_rm(config: ClientConfig, fs_node: Agent, root: Path) -> None:
    """ls lists entries with type and size, stat shows one, rm removes (dirs need -r)."""
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_text("hello")
    entries = await _fs(config, f"fsnode:{root}/d", {"op": "ls"})
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [("f.txt", "file", 5)]
    (st,) = await _fs(config, f"fsnode:{root}/d/f.txt", {"op": "stat"})
    assert st["type"] == "file"
    with pytest.raises(RemoteError, match="is a directory: pass recursive"):
        await _fs(config, f"fsnode:{root}/d", {"op": "rm"})
    await _fs(config, f"fsnode:{root}/d", {"op": "rm", "recursive": True})
    assert not (root / "d").exists()
    with pytest.raises(RemoteError, match="allowed root"):
        await _fs(config, f"fsnode:{root}", {"op": "rm", "recursive": True})


async def test_paths_outside_the_roots_are_refused(config: ClientConfig, fs_node: Agent,
                                                   root: Path, tmp_path: Path) -> None:
    """'..', absolute paths outside the roots and symlinks out of them are refused for
    every operation, and nothing outside is read or written."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "link").symlink_to(outside)
    (root / "filelink").symlink_to(outside / "secret")
    for target, why in ((f"{root}/../outside/secret", "'..' is not allowed"),
                        (f"{outside}/secret", "outside the node's allowed roots"),
                        (f"{root}/link/secret", "through a symlink"),
                        (f"{root}/filelink", "through a symlink")):
        for op in ("ls", "stat", "rm", "pull"):
            with pytest.raises(RemoteError, match=re.escape(why)):
                await _fs(config, f"fsnode:{target}", {"op": op})
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    with pytest.raises(RemoteError, match="through a symlink"):
        await _upload(config, src, 100, "fsnode", f"{root}/link/", quiet=True)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "s"


async def test_a_node_without_roots_refuses_fs(config: ClientConfig, node: Agent,
                                               tmp_path: Path) -> None:
    """With no --fs-root the skill refuses, saying how to allow directories."""
    with pytest.raises(RemoteError, match="--fs-root"):
        await _fs(config, f"n1:{tmp_path}", {"op": "ls"})


async def test_unknown_node_and_bad_target(config: ClientConfig, hub: Hub) -> None:
    """An unknown node name and a relative path get precise errors."""
    with pytest.raises(Exception, match="no node 'ghost'"):
        await _fs(config, "ghost:/tmp", {"op": "ls"})
    with pytest.raises(InvalidArgument, match="NODE:/absolute/path"):
        await _fs(config, "ghost:tmp", {"op": "ls"})
