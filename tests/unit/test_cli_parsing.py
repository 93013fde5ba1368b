"""The CLI's parsing and error surface, without a hub: usage errors exit 2, Cortex errors 1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cortex.cli import app
from cortex.cli._common import ago, exit_code_for, human_duration
from cortex.cli.tokens import join_address
from cortex.sdk import Task, TaskState

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CORTEX_* variables and an empty CORTEX_HOME: nothing can reach a hub."""
    for name in ("CORTEX_HUB", "CORTEX_TOKEN", "CORTEX_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CORTEX_HOME", str(tmp_path))


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and all output with rich's panel borders and line wrapping flattened."""
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    flat = re.sub(r"[│╭╮╰╯─]", " ", result.output)
    return result.exit_code, " ".join(flat.split())


def test_run_without_a_command_is_a_usage_error() -> None:
    """`cortex run` with nothing to run says how to give a command."""
    code, out = invoke("run")
    assert code == 2
    assert "nothing to run: give a command after `--` (cortex run -- ls -l)" in out


def test_run_with_an_empty_argv_after_dashes_is_a_usage_error() -> None:
    """`cortex run --` with nothing after it is the same usage error."""
    code, out = invoke("run", "--")
    assert code == 2
    assert "nothing to run" in out


def test_run_with_argv_and_shell_string_is_a_usage_error() -> None:
    """ARGV and -c exclude each other."""
    code, out = invoke("run", "-c", "ls | wc -l", "--", "ls")
    assert code == 2
    assert "not both" in out


@pytest.mark.parametrize(("args", "message"), [
    (("--label", "bad"), "Invalid value for '--label' / '-l': label 'bad' is not KEY=VALUE "
                         "(e.g. os=linux)"),
    (("-l", "os="), "label 'os=' is not KEY=VALUE"),
    (("-e", "NOEQUALS"), "Invalid value for '--env' / '-e': environment variable 'NOEQUALS' "
                         "is not KEY=VALUE"),
    (("--timeout", "soon"), "Invalid value for '--timeout': timeout 'soon' is not a duration"),
    (("--retries", "-1"), "--retries"),
    (("-d", "-i"), "an interactive task needs this terminal"),
    (("-d", "-t"), "an interactive task needs this terminal"),
    (("--json", "-i"), "cannot be combined with -i/-t"),
])
def test_bad_run_options_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    """Each malformed `cortex run` option exits 2 naming the option and the fix."""
    code, out = invoke("run", *args, "--", "ls")
    assert code == 2
    assert message in out


def test_options_after_the_command_belong_to_it() -> None:
    """`cortex run ls -la` passes -la to ls: parsing succeeds and only the missing hub fails."""
    code, out = invoke("run", "ls", "-la")
    assert code == 1
    assert out.startswith("error: no hub configured")


def test_missing_hub_is_one_red_line_and_exit_1() -> None:
    """A CortexError prints `error: ...` (what to do included) and exits 1, no traceback."""
    result = runner.invoke(app, ["tasks", "ls"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: no hub configured: start one with `make up` / `cortex up`, "
        "or set CORTEX_HUB and CORTEX_TOKEN")
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_hub_flag_is_reported_before_connecting() -> None:
    """--hub without a port fails at startup with an example address."""
    code, out = invoke("--hub", "localhost", "--token", "t", "tasks", "ls")
    assert code == 1
    assert "hub address 'localhost' is not HOST:PORT" in out


@pytest.mark.parametrize("args", [
    ("tasks", "ls", "--state", "bogus"),
    ("tasks", "ls", "--label", "bad"),
    ("tasks", "ls", "--limit", "0"),
    ("nodes", "ls", "--state", "sleeping"),
    ("nodes", "ls", "-l", "nolabel"),
    ("token", "join", "--ttl", "0"),
    ("token", "join", "--ttl", "1x"),
    ("token", "join", "-l", "x"),
    ("tasks", "logs", "t-1", "--after", "-3"),
])
def test_bad_filters_are_usage_errors(args: tuple[str, ...]) -> None:
    """Filters and durations are checked before any connection (exit 2)."""
    code, out = invoke(*args)
    assert code == 2
    assert "Invalid value" in out


def test_state_error_lists_the_states() -> None:
    """An unknown --state lists every valid one."""
    _, out = invoke("tasks", "ls", "--state", "done")
    assert "task state 'done' is not one of: queued, assigned, running, succeeded, failed, " \
           "cancelled, timed_out, lost" in out


def test_unknown_command_is_a_usage_error() -> None:
    """A mistyped command exits 2."""
    code, _ = invoke("tsks")
    assert code == 2


def test_version() -> None:
    """--version prints the package version."""
    code, out = invoke("--version")
    assert (code, out) == (0, "cortex 0.1.0")


def test_run_help_documents_the_exit_codes() -> None:
    """`cortex run --help` lists the distinct exit codes."""
    _, out = invoke("run", "--help")
    for text in ("124 timed out", "125 node lost", "126 failed without an exit code",
                 "130 cancelled or interrupted"):
        assert text in out


@pytest.mark.parametrize(("task", "code"), [
    (Task(state=TaskState.SUCCEEDED, exit_code=0, has_exit_code=True), 0),
    (Task(state=TaskState.FAILED, exit_code=3, has_exit_code=True), 3),
    (Task(state=TaskState.FAILED, exit_code=-9, has_exit_code=True), 137),
    (Task(state=TaskState.FAILED, exit_code=300, has_exit_code=True), 1),
    (Task(state=TaskState.FAILED), 126),
    (Task(state=TaskState.TIMED_OUT), 124),
    (Task(state=TaskState.CANCELLED), 130),
    (Task(state=TaskState.LOST), 125),
])
def test_exit_codes(task: Task, code: int) -> None:
    """`cortex run` exits with the task's code, or the documented code of its end state."""
    assert exit_code_for(task) == code


def test_time_formatting() -> None:
    """Relative times and durations are short and unit-suffixed."""
    assert ago(0.0) == "-"
    assert ago(97.0, now=100.0) == "3s ago"
    assert ago(100.0 - 3700, now=100.0) == "1h ago"
    assert human_duration(0.42) == "0.4s"
    assert human_duration(184) == "3m04s"
    assert human_duration(2 * 86400 + 3 * 3600) == "2d03h"


def test_join_hint_replaces_loopback_with_this_host() -> None:
    """The join hint never tells another machine to dial 127.0.0.1."""
    assert not join_address("127.0.0.1:7443").startswith("127.")
    assert join_address("127.0.0.1:7443").endswith(":7443")
    assert join_address("[::1]:7443").endswith(":7443")
    assert join_address("hub.example:7443") == "hub.example:7443"


def test_join_hint_treats_each_hub_of_a_list() -> None:
    """With several hubs, each loopback entry is replaced and the others kept, in order."""
    hint = join_address("127.0.0.1:7443,hub.example:7443")
    first, second = hint.split(",")
    assert not first.startswith("127.")
    assert first.endswith(":7443")
    assert second == "hub.example:7443"
