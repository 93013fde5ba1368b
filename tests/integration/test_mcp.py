"""The MCP server over stdio, driven by the `mcp` package's own client.

Each test starts a real hub and node in-process and spawns the server as a subprocess,
configured the way an MCP client configures it (CORTEX_HUB, CORTEX_TOKEN, CORTEX_CA).
Long tasks wait on a gate file the test creates, never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client as McpClient
from mcp import StdioServerParameters
from mcp_calls import call, call_error, cancel_task

from cortex.hub.server import Hub
from cortex.mcp import OUTPUT_LIMIT, TOOL_NAMES
from cortex.mcp._output import Clip, Page
from cortex.node.agent import Agent

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
# Until `cortex mcp` is registered in cortex.cli this is the same server: ["-m", "cortex", "mcp"].
SERVER_ARGS = ["-m", "cortex", "mcp"]
UNKNOWN_TASK = "t-0000000000zzzzzzzzzz"
UNKNOWN_CREDENTIAL = "ctk_nosuch.secret"  # well formed, unknown to the hub

# Prints "first", waits for the file named by argv[1] to exist, prints "second".
GATED = (
    "import os, sys, time\n"
    "print('first', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n"
    "print('second', flush=True)\n"
)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only (overrides conftest's both-backends fixture): the MCP server reaches the
    hub through the SDK, so its store changes nothing here, and each test spawns a server."""
    return str(tmp_path / "hub" / "hub.db")


@contextlib.asynccontextmanager
async def mcp_server(hub: Hub, tmp_path: Path, token: str | None = None
                     ) -> AsyncIterator[McpClient]:
    """An MCP client session with `python -m cortex.mcp` serving `hub` (admin token).

    A context manager, not a fixture: the client's anyio cancel scopes must be entered
    and left in the same task, which pytest-asyncio does not promise for fixtures.
    """
    home = tmp_path / "mcp-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "CORTEX_HUB": hub.address,
        "CORTEX_TOKEN": token or hub.admin_token,
        "CORTEX_CA": str(hub.config.data_dir / "ca" / "ca.pem"),
        "CORTEX_HOME": str(home),  # no ~/.cortex/client.json of this machine
    }
    params = StdioServerParameters(command=PY, args=SERVER_ARGS, env=env)
    async with McpClient(params) as client:
        yield client


async def read_to_end(client: McpClient, task_id: str, after_seq: int = 0, skip_bytes: int = 0
                      ) -> tuple[str, dict[str, Any]]:
    """All stdout from a place on, following the task with task_output until finished."""
    stdout = ""
    for _ in range(100):
        page = await call(client, "task_output", task_id=task_id, after_seq=after_seq,
                          skip_bytes=skip_bytes, wait_s=30)
        stdout += page["stdout"]
        after_seq, skip_bytes = page["next_seq"], page["next_skip_bytes"]
        if page["finished"]:
            return stdout, page
    pytest.fail(f"task {task_id} did not finish within 100 task_output calls")


async def read_until(client: McpClient, task_id: str, text: str) -> int:
    """Follow the task's stdout until it ends with `text`; the next_seq after it."""
    stdout, after_seq = "", 0
    while not stdout.endswith(text):
        page = await call(client, "task_output", task_id=task_id, after_seq=after_seq,
                          wait_s=30)
        assert not page["finished"], f"task ended before printing {text!r}: {stdout!r}"
        assert page["next_skip_bytes"] == 0  # small output: whole events
        stdout += page["stdout"]
        after_seq = page["next_seq"]
    return after_seq


# --- tools over stdio -----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_lists_every_tool_with_a_description_and_output_schema(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """tools/list offers each Cortex tool, described, with an output schema."""
    async with mcp_server(hub, tmp_path) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert set(tools) == set(TOOL_NAMES)
        for tool in tools.values():
            assert len(tool.description or "") > 40, tool.name
            assert tool.output_schema is not None, tool.name
        assert tools["task_status"].annotations is not None
        assert tools["task_status"].annotations.read_only_hint is True


@pytest.mark.asyncio
async def test_list_nodes_shows_the_connected_node(node: Agent, hub: Hub, tmp_path: Path) -> None:
    """list_nodes returns compact rows; a label filter that matches nothing says so."""
    async with mcp_server(hub, tmp_path) as mcp:
        nodes = (await call(mcp, "list_nodes"))["nodes"]
        assert [(n["name"], n["state"]) for n in nodes] == [("n1", "online")]
        assert "shell" in nodes[0]["skills"]
        assert nodes[0]["running"] == 0
        none = await call(mcp, "list_nodes", labels=["os=plan9"])
        assert none["nodes"] == []
        assert "without filters" in none["hint"]


@pytest.mark.asyncio
async def test_run_command_answers_inline_with_exit_code_and_output(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """A short command's exit code, state, stdout and stderr come back in the answer."""
    async with mcp_server(hub, tmp_path) as mcp:
        res = await call(mcp, "run_command", command="echo hello; echo oops >&2; exit 3")
        assert (res["state"], res["exit_code"]) == ("failed", 3)
        assert (res["stdout"], res["stderr"]) == ("hello\n", "oops\n")
        assert "hint" not in res
        assert "next_seq" not in res
        ok = await call(mcp, "run_command", argv=[PY, "-c", "print(6 * 7)"])
        assert (ok["state"], ok["exit_code"], ok["stdout"]) == ("succeeded", 0, "42\n")


@pytest.mark.asyncio
async def test_run_command_caps_big_output_and_says_where_the_rest_is(
        hub: Hub, node: Agent, tmp_path: Path) -> None:
    """Big output keeps its head and tail; the place in the marker reads the middle."""
    async with mcp_server(hub, tmp_path) as mcp:
        script = "import sys\nfor i in range(5000): sys.stdout.write('%05d\\n' % i)\n"
        res = await call(mcp, "run_command", argv=[PY, "-c", script])
        stdout = res["stdout"]
        assert stdout.startswith("00000\n")
        assert stdout.endswith("04999\n")
        assert len(stdout.encode()) < OUTPUT_LIMIT + 200
        marker = re.search(r"\[truncated: (\d+) more bytes here; read them with task_output"
                           r"\(task_id='([^']+)', after_seq=(\d+), skip_bytes=(\d+)\)\]",
                           stdout)
        assert marker is not None, stdout[OUTPUT_LIMIT // 2 - 100:OUTPUT_LIMIT // 2 + 300]
        omitted = 5000 * 6 - OUTPUT_LIMIT
        assert int(marker[1]) == omitted
        assert marker[2] == res["task_id"]
        rest, _ = await read_to_end(mcp, res["task_id"], after_seq=int(marker[3]),
                                    skip_bytes=int(marker[4]))
    # The middle starts right after the head and runs to the end (the tail included).
    everything = "".join(f"{i:05d}\n" for i in range(5000))
    assert rest == everything[OUTPUT_LIMIT // 2:]


@pytest.mark.asyncio
async def test_a_long_run_command_returns_a_task_to_follow(
        tmp_path: Path, hub: Hub, node: Agent) -> None:
    """Past wait_s, run_command answers 'running' with a task id; task_output and
    task_status then follow it to its end."""
    async with mcp_server(hub, tmp_path) as mcp:
        gate = tmp_path / "gate"
        res = await call(mcp, "run_command", argv=[PY, "-c", GATED, str(gate)], wait_s=0.5)
        assert res["state"] in ("queued", "assigned", "running")
        assert "task_output" in res["hint"]
        assert "next_seq" in res
        task_id = res["task_id"]
        after = await read_until(mcp, task_id, "first\n")
        status = await call(mcp, "task_status", task_id=task_id)
        assert (status["state"], status["finished"]) == ("running", False)
        assert status["node_id"]
        assert "exit_code" not in status
        gate.touch()
        rest, last = await read_to_end(mcp, task_id, after_seq=after)
        assert rest == "second\n"
        assert (last["state"], last["exit_code"], last["more"]) == ("succeeded", 0, False)
        done = await call(mcp, "task_status", task_id=task_id)
        assert (done["state"], done["exit_code"], done["finished"]) == ("succeeded", 0, True)
        assert done["run_s"] >= 0
        assert done["finished_at"]
        listed = await call(mcp, "list_tasks", state="succeeded")
        assert [t["task_id"] for t in listed["tasks"]] == [task_id]


@pytest.mark.asyncio
async def test_task_output_pages_by_max_bytes(hub: Hub, node: Agent, tmp_path: Path) -> None:
    """task_output fills pages to max_bytes, cutting events; the next place reads on."""
    async with mcp_server(hub, tmp_path) as mcp:
        script = "import sys\nfor i in range(300):\n    print('%04d' % i, flush=i % 7 == 0)\n"
        task_id = (await call(mcp, "start_task", argv=[PY, "-c", script]))["task_id"]
        whole, _ = await read_to_end(mcp, task_id)
        assert whole == "".join(f"{i:04d}\n" for i in range(300))
        pages: list[dict[str, Any]] = []
        after, skip = 0, 0
        while not (pages and pages[-1]["finished"]) and len(pages) < 20:
            pages.append(await call(mcp, "task_output", task_id=task_id, after_seq=after,
                                    skip_bytes=skip, max_bytes=256))
            after, skip = pages[-1]["next_seq"], pages[-1]["next_skip_bytes"]
    assert "".join(p["stdout"] for p in pages) == whole
    assert [len(p["stdout"]) for p in pages[:5]] == [256] * 5  # 1500 bytes: 5 full pages
    assert all(p["more"] for p in pages[:5])
    assert "more output is waiting" in pages[0]["hint"]
    assert (pages[-1]["finished"], pages[-1]["more"], pages[-1]["exit_code"]) == (True, False, 0)


@pytest.mark.asyncio
async def test_cancel_task_stops_a_long_job(hub: Hub, node: Agent, tmp_path: Path) -> None:
    """cancel_task on a running job ends it as cancelled; cancelling again changes nothing."""
    async with mcp_server(hub, tmp_path) as mcp:
        script = "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"
        task_id = (await call(mcp, "start_task", argv=[PY, "-c", script]))["task_id"]
        await read_until(mcp, task_id, "ready\n")
        res = await cancel_task(mcp, task_id, reason="test is done with it")
        assert (res["state"], res["finished"]) == ("cancelled", True), res
        again = await call(mcp, "cancel_task", task_id=task_id)
        assert again["state"] == "cancelled"
        assert "already ended" in again["hint"]
        assert (await call(mcp, "task_status", task_id=task_id))["state"] == "cancelled"


@pytest.mark.asyncio
async def test_cancelling_a_run_command_call_cancels_its_task(hub: Hub, node: Agent,
                                                              tmp_path: Path) -> None:
    """When the MCP client abandons run_command (the user pressed stop), the task is cancelled."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    os.mkfifo(started)
    # Opens the FIFO (the test's read returns once it is closed), then waits for the gate.
    script = f"open({str(started)!r}, 'w').close()\n" + GATED
    async with mcp_server(hub, tmp_path) as mcp:
        pending = asyncio.create_task(mcp.call_tool(
            "run_command", {"argv": [PY, "-c", script, str(gate)], "wait_s": 30}))
        await asyncio.to_thread(started.read_text)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        tasks = (await call(mcp, "list_tasks"))["tasks"]
        assert len(tasks) == 1
        _, last = await read_to_end(mcp, tasks[0]["task_id"])
    assert last["state"] == "cancelled"
    assert not gate.exists()


@pytest.mark.asyncio
async def test_write_stdin_feeds_an_interactive_task(hub: Hub, node: Agent, tmp_path: Path) -> None:
    """Two write_stdin calls (the second with eof) reach an interactive task in order."""
    async with mcp_server(hub, tmp_path) as mcp:
        res = await call(mcp, "start_task", argv=["cat"], interactive=True)
        task_id = res["task_id"]
        assert "write_stdin" in res["hint"]
        first = await call(mcp, "write_stdin", task_id=task_id, data="one\n")
        assert first["bytes_written"] == 4
        after = await read_until(mcp, task_id, "one\n")
        await call(mcp, "write_stdin", task_id=task_id, data="two\n", eof=True)
        rest, last = await read_to_end(mcp, task_id, after_seq=after)
        assert rest == "two\n"
        assert (last["state"], last["exit_code"]) == ("succeeded", 0)
        error = await call_error(mcp, "write_stdin", task_id=task_id, data="three\n")
        assert "already ended" in error


@pytest.mark.asyncio
async def test_tool_errors_name_the_problem_and_the_fix(hub: Hub, node: Agent,
                                                        tmp_path: Path) -> None:
    """Unknown task ids, stdin for a non-interactive task, a missing or doubled command and
    a bad state filter each fail with a message naming the problem and what to do."""
    gate = tmp_path / "gate"
    async with mcp_server(hub, tmp_path) as mcp:
        for tool in ("task_status", "task_output", "cancel_task", "write_stdin"):
            args = {"data": "x"} if tool == "write_stdin" else {}
            error = await call_error(mcp, tool, task_id=UNKNOWN_TASK, **args)
            assert f"no task {UNKNOWN_TASK!r}" in error, (tool, error)
            assert "list_tasks" in error, (tool, error)
        task_id = (await call(mcp, "start_task", argv=[PY, "-c", GATED, str(gate)]))["task_id"]
        error = await call_error(mcp, "write_stdin", task_id=task_id, data="x")
        assert f"task {task_id} was not started with interactive=true" in error
        assert "start_task(..., interactive=true)" in error
        gate.touch()
        assert "nothing to run" in await call_error(mcp, "run_command")
        assert "not both" in await call_error(mcp, "start_task", command="ls", argv=["ls"])
        assert "not one of" in await call_error(mcp, "list_tasks", state="sleeping")
        await read_to_end(mcp, task_id)


@pytest.mark.asyncio
async def test_an_invalid_token_gives_a_clear_tool_error(hub: Hub, tmp_path: Path) -> None:
    """With a token the hub does not know, a tool call fails saying to fix CORTEX_TOKEN."""
    async with mcp_server(hub, tmp_path, token=UNKNOWN_CREDENTIAL) as client:
        error = await call_error(client, "list_nodes")
    assert "permission denied" in error
    assert "unknown API token" in error
    assert "CORTEX_TOKEN" in error
    assert "restart" in error


# --- output shaping (no I/O) ---------------------------------------------------------------

def test_clip_keeps_everything_within_its_limit() -> None:
    """Output that fits comes back whole, without a marker."""
    clip = Clip(16)
    for seq, data in enumerate([b"abcd", b"efgh", b"ijklmnop"], start=1):
        clip.add(seq, data)
    assert clip.text("t-1") == "abcdefghijklmnop"
    assert clip.omitted == 0


def test_clip_keeps_head_and_tail_and_names_where_the_gap_starts() -> None:
    """Past its limit a clip keeps limit/2 of head and tail; the gap starts 1 byte into
    event 2 (after_seq=1, skip_bytes=1)."""
    clip = Clip(8)
    for seq, data in enumerate([b"abc", b"defgh", b"ijk", b"lmnop"], start=1):
        clip.add(seq, data)
    assert (clip.omitted, clip.gap) == (8, (1, 1))
    assert clip.text("t-1") == (
        "abcd\n[truncated: 8 more bytes here; read them with "
        "task_output(task_id='t-1', after_seq=1, skip_bytes=1)]\nmnop")


def test_clip_never_splits_a_utf8_character() -> None:
    """Head and tail end on character boundaries, so no U+FFFD appears."""
    clip = Clip(8)
    clip.add(1, "ééééé".encode())  # 10 bytes
    text = clip.text("t-1")
    assert "\ufffd" not in text
    assert text.startswith("éé\n[truncated: 2 more bytes")
    assert text.endswith("]\néé")


def test_page_stops_at_the_budget_and_names_the_next_place() -> None:
    """A page takes output up to max_bytes, cutting an event; the next page goes on from
    there, skipping what was read."""
    page = Page(after_seq=0, skip_bytes=0, max_bytes=10)
    assert page.add_output(1, b"aaaa", to_stdout=True)
    page.add_other(2)
    assert not page.add_output(3, b"bbbbbbbb", to_stdout=False)
    assert not page.add_output(4, b"cccc", to_stdout=True)
    page.add_other(5)
    assert (bytes(page.stdout), bytes(page.stderr), page.full) == (b"aaaa", b"bbbbbb", True)
    assert (page.next_seq, page.next_skip_bytes) == (2, 6)
    nxt = Page(after_seq=2, skip_bytes=6, max_bytes=10)
    assert nxt.add_output(3, b"bbbbbbbb", to_stdout=False)
    assert nxt.add_output(4, b"cccc", to_stdout=True)
    assert (bytes(nxt.stdout), bytes(nxt.stderr), nxt.full) == (b"cccc", b"bb", False)
    assert (nxt.next_seq, nxt.next_skip_bytes) == (4, 0)
