"""The README tour, end to end: `cortex up` in one terminal, `cortex ...` in another.

Every test runs the installed `cortex` console script as a child process with only
CORTEX_HOME set, so the CLI finds the hub through $CORTEX_HOME/client.json exactly as a
user's shell would. The hub and its local node are shared by the module (see conftest).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import termios
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Cortex

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TASK_ID = re.compile(r"^t-[0-9a-z]+$")
# What a CortexError must never look like on a terminal.
TRACEBACK = "Traceback (most recent call last)"
WAIT_S = 30.0  # bound of every wait in this module
PTY_RUNS = 5   # `cortex run -t` at once: the pty spawn path must hold up more than once


def task_ids(tasks: list[dict[str, Any]]) -> list[str]:
    return [t["id"] for t in tasks]


def find_task(cortex: Cortex, marker: str) -> dict[str, Any] | None:
    """The one task whose argv carries `marker`, if the hub has it yet."""
    found = [t for t in cortex.json("tasks", "ls", "--limit", "200")
             if any(marker in arg for arg in t["spec"]["shell"]["argv"])]
    assert len(found) <= 1, found
    return found[0] if found else None


def wait_for_file(path: Path, *, then: str) -> str:
    """A shell script that waits (at most 60 s, on its own) for `path`, then runs `then`."""
    return (f'i=0; while [ ! -e "{path}" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); '
            f'done; {then}')


# --- cortex run ------------------------------------------------------------------------------

def test_run_prints_the_kernel_line_and_exits_zero(cortex: Cortex) -> None:
    """`cortex run -- uname -a` prints what uname -a prints here (the node is local), exit 0."""
    done = cortex.run("run", "--", "uname", "-a")
    local = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, local.stdout, "")


def test_run_exits_with_the_task_exit_code(cortex: Cortex) -> None:
    """`cortex run -- sh -c 'exit 7'` exits 7 and adds no note of its own for a plain exit."""
    done = cortex.run("run", "--", "sh", "-c", "exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "", "")


def test_run_sends_task_stderr_to_stderr_and_stdout_to_stdout(cortex: Cortex) -> None:
    """A task's two streams arrive on the CLI's matching streams, unmixed."""
    done = cortex.run("run", "--", "sh", "-c", "echo to-out; echo to-err >&2; echo more-out")
    assert (done.returncode, done.stdout, done.stderr) == (0, "to-out\nmore-out\n", "to-err\n")


def test_run_with_a_label_prints_lines_in_order(cortex: Cortex) -> None:
    """`--label os=linux` places on the local node; its lines arrive in the order printed."""
    done = cortex.run("run", "--label", "os=linux", "--", "sh", "-c",
                      "for i in 1 2 3; do echo $i; sleep 0.2; done")
    assert (done.returncode, done.stdout) == (0, "1\n2\n3\n"), done.stderr


def test_run_streams_output_while_the_task_still_runs(cortex: Cortex, tmp_path: Path) -> None:
    """The first line reaches the CLI's stdout while the task waits for a file that the test
    creates only after reading that line: output is streamed, not delivered at exit."""
    flag = tmp_path / "go"
    proc = cortex.popen("run", "--", "sh", "-c",
                        "echo first; " + wait_for_file(flag, then="echo second"),
                        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = cortex.lines(proc.stdout)
    assert out.next() == "first\n"
    assert proc.poll() is None, "the CLI finished before the task could have"
    flag.touch()
    assert out.rest() == "second\n"
    assert cortex.wait(proc) == 0


def test_run_interactive_forwards_stdin(cortex: Cortex) -> None:
    """`echo hello | cortex run -i -- python3 -c 'print(input())'` prints hello."""
    done = cortex.run("run", "-i", "--", "python3", "-c", "print(input())", stdin="hello\n")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr


def test_run_interactive_closes_task_stdin_at_eof(cortex: Cortex) -> None:
    """Local EOF reaches the task: `wc -c` of piped input ends and counts every byte."""
    data = "x" * 200_000 + "\n"
    done = cortex.run("run", "-i", "--", "wc", "-c", stdin=data)
    assert (done.returncode, done.stdout.strip()) == (0, str(len(data))), done.stderr


class InPty:
    """`cortex ARGS` started with a real pseudo-terminal (rows x cols) as stdin and stdout,
    as a user's shell runs it; `finish()` gives its exit status and what it printed there."""

    def __init__(self, cortex: Cortex, *args: str, rows: int = 24, cols: int = 80) -> None:
        self._cortex = cortex
        self._master, slave = pty.openpty()
        self._chunks: list[bytes] = []
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            self.proc = cortex.popen(*args, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                     start_new_session=True)
        finally:
            os.close(slave)  # the child's copy is the last: EOF on the master when it exits
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # EIO: every slave end is closed
            while data := os.read(self._master, 4096):
                self._chunks.append(data)

    def finish(self) -> tuple[int, str]:
        try:
            code = self._cortex.wait(self.proc)
            assert self.proc.stderr is not None
            stderr = self.proc.stderr.read().decode(errors="replace")
            self._reader.join(WAIT_S)
            assert not self._reader.is_alive(), "the terminal stayed open after the CLI exited"
        finally:
            os.close(self._master)
        assert TRACEBACK not in stderr, stderr
        return code, b"".join(self._chunks).decode(errors="replace")


def test_run_tty_gives_each_task_a_pseudo_terminal(cortex: Cortex) -> None:
    """`cortex run -t -- tty` in a terminal prints only the task's /dev/pts device and exits
    0 — every time, for several such runs at once."""
    runs = [InPty(cortex, "run", "-t", "--", "tty") for _ in range(PTY_RUNS)]
    results = [run.finish() for run in runs]
    bad = [(code, out) for code, out in results
           if code != 0 or not re.fullmatch(r"/dev/pts/\d+\r\n", out)]
    assert not bad, f"{len(bad)} of {PTY_RUNS} runs: {bad}"


def test_run_tty_sizes_the_remote_terminal_like_the_local_one(cortex: Cortex) -> None:
    """`cortex run -t -- stty size` in a 33x101 terminal prints 33 101."""
    assert InPty(cortex, "run", "-t", "--", "stty", "size", rows=33, cols=101
                 ).finish() == (0, "33 101\r\n")


def test_run_times_out_with_124(cortex: Cortex) -> None:
    """`cortex run --timeout 1 -- sleep 30` exits 124 and says the task timed out."""
    done = cortex.run("run", "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124, done.stderr
    assert "timed_out" in done.stderr, done.stderr


def test_timeout_note_names_the_requested_timeout(cortex: Cortex) -> None:
    """The timed-out note names the timeout the user asked for (1 s), not what was left of
    it when the node started the task (`timed out after 0.997 s`)."""
    done = cortex.run("run", "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124, done.stderr
    assert re.search(r"timed out after 1(\.0)? ?s\b", done.stderr), done.stderr


def test_run_json_prints_one_document_with_the_exit_status(cortex: Cortex) -> None:
    """`cortex run --json -- echo hi` prints one JSON document: task, output, exit status."""
    done = cortex.run("run", "--json", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["stdout"], doc["stderr"], doc["exit_status"]) == ("hi\n", "oops\n", 3)
    assert (doc["task"]["state"], doc["task"]["exit_code"]) == ("FAILED", 3)
    ok = json.loads(cortex.ok("run", "--json", "--", "echo", "hi").stdout)
    assert (ok["stdout"], ok["exit_status"], ok["task"]["state"]) == ("hi\n", 0, "SUCCEEDED")


# --- detached tasks and `cortex tasks` ---------------------------------------------------------

def test_detached_task_can_be_inspected_followed_and_listed(cortex: Cortex) -> None:
    """`run --detach` prints an id; `tasks get --json`, `tasks logs -f` (ends with the task),
    `tasks ls --json` and `tasks ls --state` all see that task."""
    detached = cortex.ok("run", "--detach", "--", "sleep", "0.2")
    task_id = detached.stdout.strip()
    assert TASK_ID.match(task_id), detached.stdout
    assert cortex.json("tasks", "get", task_id)["id"] == task_id

    followed = cortex.ok("tasks", "logs", "-f", task_id)
    assert (followed.stdout, followed.stderr) == ("", "")
    final = cortex.json("tasks", "get", task_id)
    assert (final["state"], final["exit_code"]) == ("SUCCEEDED", 0), final

    assert task_id in task_ids(cortex.json("tasks", "ls"))
    succeeded = cortex.json("tasks", "ls", "--state", "succeeded")
    assert task_id in task_ids(succeeded)
    assert {t["state"] for t in succeeded} == {"SUCCEEDED"}
    assert task_id in cortex.ok("tasks", "get", task_id).stdout


def test_logs_follow_streams_a_detached_task_live_and_ends_with_it(cortex: Cortex,
                                                                    tmp_path: Path) -> None:
    """`tasks logs -f` prints a detached task's output as it comes (stdout and stderr apart)
    while the task still waits for a file, and exits 0 once the task ends."""
    flag = tmp_path / "go"
    task_id = cortex.ok("run", "-d", "--", "sh", "-c", "echo one; " + wait_for_file(
        flag, then="echo two >&2; echo three")).stdout.strip()
    follow = cortex.popen("tasks", "logs", "-f", task_id, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    assert follow.stderr is not None
    out = cortex.lines(follow.stdout)
    assert out.next() == "one\n"
    assert follow.poll() is None, "logs -f ended while the task still ran"
    flag.touch()
    assert out.rest() == "three\n"
    assert cortex.wait(follow) == 0
    assert follow.stderr.read() == "two\n"
    assert cortex.json("tasks", "get", task_id)["state"] == "SUCCEEDED"


def test_tasks_cancel_ends_a_running_task_as_cancelled(cortex: Cortex) -> None:
    """`tasks cancel ID` of a detached `sleep 300`: the task ends in state cancelled."""
    task_id = cortex.ok("run", "--detach", "--", "sleep", "300").stdout.strip()
    cancelled = cortex.ok("tasks", "cancel", task_id)
    assert task_id in cancelled.stdout
    cortex.ok("tasks", "logs", "-f", task_id)  # returns once the task is over
    final = cortex.json("tasks", "get", task_id)
    assert final["state"] == "CANCELLED", final


def test_run_of_a_task_cancelled_elsewhere_exits_130(cortex: Cortex) -> None:
    """A `cortex run` waiting on a task that another process cancels exits 130 and says so."""
    marker = f"e2e-{uuid.uuid4().hex}"
    proc = cortex.popen("run", "--", "sh", "-c", f"echo {marker}; exec sleep 300", marker,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert cortex.lines(proc.stdout).next() == f"{marker}\n"  # running, and the CLI is attached
    task = find_task(cortex, marker)
    assert task is not None
    cortex.ok("tasks", "cancel", task["id"])
    assert cortex.wait(proc) == 130
    stderr = proc.stderr.read()
    assert "cancelled" in stderr, stderr
    assert TRACEBACK not in stderr, stderr


# --- nodes and join tokens ------------------------------------------------------------------

def test_nodes_ls_shows_the_local_node_online_with_the_shell_skill(cortex: Cortex) -> None:
    """`nodes ls --json` lists the node `cortex up` started, online, offering shell; the
    table says online."""
    nodes = cortex.json("nodes", "ls")
    local = [n for n in nodes if n["id"] == cortex.node_id]
    assert len(local) == 1, nodes
    assert local[0]["state"] == "ONLINE", local
    assert "shell" in local[0]["skills"], local
    assert [n["id"] for n in nodes if n["name"] == "local"] == [cortex.node_id]
    assert "online" in cortex.ok("nodes", "ls").stdout


def online(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if n["state"] == "ONLINE"]


def test_second_node_joins_with_a_token_runs_tasks_and_the_token_is_single_use(
        cortex: Cortex, tmp_path: Path) -> None:
    """`token join` prints a cjt_ token; a second `cortex node` joins with it and runs the
    tasks labelled for it; the same token then fails for a third node; SIGTERM stops the
    second node with status 0."""
    created = cortex.ok("token", "join", "--ttl", "1h")
    token = created.stdout.strip()
    assert token.startswith("cjt_"), created.stdout
    assert "\n" not in token, created.stdout
    assert "cortex node --hub" in created.stderr, created.stderr  # the hint is not on stdout

    address = json.loads((cortex.home / "client.json").read_text())["address"]
    assert address == cortex.address
    log = tmp_path / "node2.log"
    with log.open("wb") as out:
        node2 = cortex.popen("node", "--hub", address, "--token", token, "--data-dir",
                             str(tmp_path / "node2"), "--name", "second", "--label",
                             "role=second", stdout=out, stderr=subprocess.STDOUT)

    def two_online() -> list[dict[str, Any]] | None:
        assert node2.poll() is None, f"node2 exited {node2.returncode}:\n{log.read_text()}"
        nodes = online(cortex.json("nodes", "ls"))
        return nodes if len(nodes) == 2 else None

    second = [n for n in cortex.eventually(two_online, "2 nodes online")
              if n["name"] == "second"]
    assert len(second) == 1, second
    assert second[0]["labels"]["role"] == "second", second

    ran = cortex.run("run", "--label", "role=second", "--", "hostname")
    assert (ran.returncode, ran.stdout) == (0, socket.gethostname() + "\n"), ran.stderr
    [task] = cortex.json("tasks", "ls", "--label", "role=second")
    assert cortex.json("tasks", "get", task["id"])["node_id"] == second[0]["id"]

    third = cortex.run("node", "--hub", address, "--token", token, "--data-dir",
                       str(tmp_path / "node3"), "--name", "third")
    assert third.returncode != 0, third.stdout
    assert "already used" in third.stderr, third.stderr
    assert TRACEBACK not in third.stderr, third.stderr

    node2.send_signal(signal.SIGTERM)
    assert cortex.wait(node2) == 0, log.read_text()
    cortex.eventually(lambda: [n["id"] for n in online(cortex.json("nodes", "ls"))]
                      == [cortex.node_id], "only the local node online")


# --- errors -----------------------------------------------------------------------------------

def test_unknown_task_is_one_error_line_and_exit_1(cortex: Cortex) -> None:
    """`tasks get t-doesnotexist` exits 1 with `error:` on stderr and no traceback."""
    done = cortex.run("tasks", "get", "t-doesnotexist")
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("error:"), done.stderr
    assert "t-doesnotexist" in done.stderr, done.stderr
    assert TRACEBACK not in done.stderr


def test_bad_token_is_refused_with_exit_1(cortex: Cortex) -> None:
    """`--token ctk_bad.bad tasks ls` exits 1 with a message about the API token."""
    done = cortex.run("--token", "ctk_bad.bad", "tasks", "ls")
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("error:"), done.stderr
    assert "token" in done.stderr, done.stderr
    assert TRACEBACK not in done.stderr


def test_bad_token_error_says_where_a_valid_token_comes_from(cortex: Cortex) -> None:
    """The refusal of an unknown token says what to do, as the no-token error does (names
    --token, CORTEX_TOKEN or the admin.token file)."""
    done = cortex.run("--token", "ctk_bad.bad", "tasks", "ls")
    assert done.returncode == 1, done.stdout
    assert re.search(r"--token|CORTEX_TOKEN|admin\.token", done.stderr), done.stderr


def test_run_without_a_command_is_a_usage_error(cortex: Cortex) -> None:
    """`cortex run` with nothing to run exits 2 and explains how to give a command."""
    done = cortex.run("run")
    assert done.returncode == 2, done.stdout
    assert "nothing to run" in done.stderr, done.stderr
    assert TRACEBACK not in done.stderr, done.stderr


# --- --json everywhere it is documented -----------------------------------------------------

def test_every_documented_json_flag_prints_json(cortex: Cortex) -> None:
    """--json of run -d, tasks cancel, tasks logs and token join prints JSON (tasks ls/get
    and nodes ls are parsed as JSON throughout this module)."""
    task = cortex.json("run", "-d", "--", "sleep", "300")
    assert TASK_ID.match(task["id"]), task
    assert cortex.json("tasks", "cancel", task["id"])["id"] == task["id"]
    logged = cortex.ok("tasks", "logs", "-f", task["id"], "--json").stdout.splitlines()
    events = [json.loads(line) for line in logged]
    assert events, logged
    assert events[-1]["state"]["state"] == "CANCELLED", events
    token = cortex.json("token", "join", "--ttl", "5m")
    assert token["token"].startswith("cjt_"), token
    assert token["token"] in token["join_command"], token
