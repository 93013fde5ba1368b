"""`--log-format json` on a real node process: every line on stderr is one JSON object,
and the node's lines carry its node id."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.testing import NodeProcess, cli_env, running_hub

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.mark.asyncio
async def test_a_node_logs_json_lines_with_its_node_id(tmp_path: Path) -> None:
    """The node's log (enrolment, connection, shutdown) is JSON with node_id set."""
    async with running_hub(tmp_path / "hub") as hub:
        token = await hub.join_token()
        node = NodeProcess(tmp_path / "node", hub=hub.address, token=token,
                           extra=("--log-format", "json"))
        node.start()
        try:
            # Bounded (60 s): the node dials within seconds. The hub registers the node
            # when its hello arrives, a moment before the node hears back and logs it.
            for _ in range(1200):
                if hub.registry.all() and "connected to hub" in node.log():
                    break
                await asyncio.sleep(0.05)
            (conn,) = hub.registry.all()
        finally:
            node.signal(15)
            await asyncio.to_thread(node.wait, 60)
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    assert lines, "the node logged nothing"
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    connected = [line for line in lines if line["message"].startswith("connected to hub")]
    assert connected
    assert connected[0]["node_id"] == conn.node_id


def test_an_unknown_log_format_is_refused_before_starting(tmp_path: Path) -> None:
    """`cortex hub --log-format xml` exits 2 naming the choices; nothing starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "cortex", "hub", "--log-format", "xml", "--data-dir",
         str(tmp_path / "hub")], capture_output=True, text=True, timeout=60,
        env=cli_env(tmp_path), check=False)
    assert proc.returncode == 2
    assert "pick one of text, json" in proc.stderr
    assert not (tmp_path / "hub").exists()
