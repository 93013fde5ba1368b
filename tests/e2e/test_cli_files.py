"""`cortex cp` and `cortex fs` as a user types them, against a hub and a node started as
processes (the node with --fs-root), through CORTEX_HUB / CORTEX_TOKEN / CORTEX_CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex.testing import HubProcess, NodeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CORTEX_BIN = Path(sys.executable).with_name("cortex")
TRACEBACK = "Traceback (most recent call last)"


class Cli:
    def __init__(self, hub: HubProcess) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
        self.env.update(CORTEX_HUB=hub.address, CORTEX_TOKEN=hub.token,
                        CORTEX_CA=str(hub.data_dir / "ca" / "ca.pem"),
                        CORTEX_HOME=str(hub.data_dir.parent / "home"))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CORTEX_BIN), *args], capture_output=True, text=True,
                              env=self.env, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"cortex {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Cli, Path]]:
    """A hub and a node named fsnode allowed to touch <tmp>/root only."""
    root = tmp_path / "root"
    root.mkdir()
    hub = HubProcess(tmp_path / "hub")
    hub.start()
    node = None
    try:
        cli = Cli(hub)
        token = cli.ok("token", "join").strip()
        node = NodeProcess(tmp_path / "node", hub.address, token,
                           extra=("--name", "fsnode", "--fs-root", str(root)))
        node.start()
        deadline = time.monotonic() + 30
        while not any(n["name"] == "fsnode" and n["state"] == "ONLINE"
                      for n in json.loads(cli.ok("nodes", "ls", "--json"))):
            assert time.monotonic() < deadline, f"node never came online:\n{node.log()}"
        yield cli, root
    finally:
        if node is not None:
            node.kill()
        hub.kill()
        if hub.proc is not None and hub.proc.stdout is not None:
            hub.proc.stdout.close()


def test_cp_both_ways_and_fs_commands(fleet: tuple[Cli, Path], tmp_path: Path) -> None:
    """cp up and down round-trips bytes; fs ls/stat/rm work; '..' and paths outside the
    roots are refused with a message, not a traceback."""
    cli, root = fleet
    src = tmp_path / "dataset.bin"
    src.write_bytes(os.urandom(300_000))
    assert cli.ok("cp", "-q", str(src), f"fsnode:{root}/").strip() == \
        f"fsnode:{root / 'dataset.bin'}"
    assert (root / "dataset.bin").read_bytes() == src.read_bytes()
    down = tmp_path / "down"
    down.mkdir()
    assert cli.ok("cp", "-q", f"fsnode:{root}/dataset.bin", str(down)).strip() == \
        str(down / "dataset.bin")
    assert (down / "dataset.bin").read_bytes() == src.read_bytes()

    listing = json.loads(cli.ok("fs", "ls", "--json", f"fsnode:{root}"))
    assert [(e["name"], e["size"]) for e in listing] == [("dataset.bin", 300_000)]
    assert "dataset.bin" in cli.ok("fs", "ls", f"fsnode:{root}")
    assert json.loads(cli.ok("fs", "stat", f"fsnode:{root}/dataset.bin"))["type"] == "file"
    cli.ok("fs", "rm", f"fsnode:{root}/dataset.bin")
    assert not (root / "dataset.bin").exists()

    for bad, why in ((f"fsnode:{root}/../x", "'..' is not allowed"),
                     ("fsnode:/etc/passwd", "outside the node's allowed roots")):
        done = cli.run("fs", "stat", bad)
        assert done.returncode != 0
        assert why in done.stderr, done.stderr
        assert TRACEBACK not in done.stderr
    done = cli.run("cp", str(src), str(tmp_path / "elsewhere"))
    assert done.returncode == 2
    assert "exactly one of SRC and DST" in done.stderr
