"""The certificate lifecycle from the CLI, as docs/security.md tells it: `cortex ca status`,
`cortex ca rotate [--root]` while tasks run, and `cortex nodes revoke` of a joined node."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Cortex

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
TRACEBACK = "Traceback (most recent call last)"


def test_rotate_status_and_revoke_from_the_cli(cortex: Cortex, tmp_path: Path) -> None:
    """Rotation with a task in flight leaves it succeeding; status shows the chain; a
    joined node is revoked: it goes `revoked`, the local node keeps running tasks."""
    before = cortex.json("ca", "status")
    assert [(a["name"], a["kind"]) for a in before["authorities"]] == [
        ("ca", "root"), ("int-1", "intermediate")]
    running = cortex.popen("run", "--", "sh", "-c", "sleep 2; echo survived",
                           stdout=subprocess.PIPE, text=True)
    rotated = cortex.json("ca", "rotate", "--root")
    assert rotated["issuer"] == "int-2/root-2"
    out, _ = running.communicate(timeout=60)
    assert (running.returncode, out) == (0, "survived\n")
    human = cortex.ok("ca", "status")
    assert "root-2" in human.stdout, human.stdout
    assert "int-2" in human.stdout, human.stdout

    token = cortex.ok("token", "join", "--ttl", "10m").stdout.strip()
    address = json.loads((cortex.home / "client.json").read_text())["address"]
    log = tmp_path / "node2.log"
    with log.open("wb") as sink:
        node2 = cortex.popen("node", "--hub", address, "--token", token, "--data-dir",
                             str(tmp_path / "node2"), "--name", "second",
                             stdout=sink, stderr=subprocess.STDOUT)

    def second() -> dict[str, Any] | None:
        assert node2.poll() is None, log.read_text()
        found = [n for n in cortex.json("nodes", "ls") if n["name"] == "second"
                 and n.get("state") == "ONLINE"]
        return found[0] if found else None

    node = cortex.eventually(second, "the second node online")
    revoked = cortex.ok("nodes", "revoke", node["id"], "--reason", "test")
    assert "revoked node" in revoked.stdout
    assert TRACEBACK not in revoked.stderr
    cortex.eventually(lambda: [n for n in cortex.json("nodes", "ls")
                               if n["id"] == node["id"] and n.get("state") == "REVOKED"],
                      "the node shown revoked")
    assert cortex.run("run", "--", "echo", "still").stdout == "still\n"
    again = cortex.run("nodes", "revoke", "n-nosuchnode")
    assert again.returncode == 1, again.stderr
    assert "cortex nodes ls" in again.stderr, again.stderr
    node2.send_signal(signal.SIGTERM)
    node2.wait(timeout=60)
