"""Submission limits: each bound holds exactly at the limit and fails one past it, naming
the field and the limit; shell specs need exactly one of argv/command and no NUL bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.core.validation import LIMITS, Limits, check_labels, check_shell, check_task

L = LIMITS


def task_problems(**overrides: Any) -> list[str]:
    fields: dict[str, Any] = {
        "skill": "shell", "labels": {}, "timeout_s": 60.0, "max_output_bytes": 0,
        "priority": 0, "idempotency_key": "", "session_id": "", "node_id": "",
        "max_attempts": 1,
    }
    fields.update(overrides)
    return check_task(**fields)


def shell_problems(*, argv: list[str] | None = None, command: str = "",
                   env: dict[str, str] | None = None, stdin: bytes = b"") -> list[str]:
    if argv is None and not command:
        argv = ["true"]
    return check_shell(argv or [], command, env or {}, stdin)


def only_problem(problems: list[str], *needles: str) -> str:
    """The single problem reported, checked to mention each needle."""
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], (needle, problems[0])
    return problems[0]


def test_defaults_are_the_documented_limits() -> None:
    """The shared LIMITS value is the documented default set (other tests lean on it)."""
    assert Limits() == LIMITS
    assert (L.command_bytes, L.env_bytes, L.stdin_bytes) == (65536, 262144, 4 * 1024 * 1024)
    assert (L.label_key, L.label_value, L.labels, L.id_chars) == (63, 255, 64, 128)
    assert (L.max_timeout_s, L.max_attempts, L.priority) == (604800.0, 10, 1000)


def test_a_plain_task_has_no_problems() -> None:
    """A reasonable task and shell spec pass every check."""
    assert task_problems(labels={"os": "linux"}, idempotency_key="k-1") == []
    assert shell_problems(argv=["echo", "hi"], env={"A": "1"}, stdin=b"x") == []
    assert shell_problems(command="echo hi") == []


# -- check_task ------------------------------------------------------------------------

@pytest.mark.parametrize("skill", ["s", "a" * 32, "shell", "no-op_2", "browser"])
def test_skill_names_up_to_32_lowercase_chars_pass(skill: str) -> None:
    """Skill names of 1..32 lowercase letters, digits, '_' and '-' (letter first) pass."""
    assert task_problems(skill=skill) == []


@pytest.mark.parametrize("skill", ["", "a" * 33, "Shell", "1shell", "sh ell", "-x", "shell\x00"])
def test_bad_skill_names_fail_naming_the_field_and_the_limit(skill: str) -> None:
    """Empty, over-long (33), uppercase, digit-first, spaced and NUL names are refused."""
    only_problem(task_problems(skill=skill), "skill:", "32")


def test_skill_name_with_trailing_newline_is_refused() -> None:
    """A skill name ending in a newline is not a skill name."""
    only_problem(task_problems(skill="shell\n"), "skill:")


def test_timeout_at_bounds() -> None:
    """timeout_s 0 and exactly the maximum pass; negative or just over fail naming both."""
    assert task_problems(timeout_s=0.0) == []
    assert task_problems(timeout_s=L.max_timeout_s) == []
    over = math.nextafter(L.max_timeout_s, math.inf)
    for bad in (over, L.max_timeout_s + 1, -0.001, math.nan, math.inf):
        only_problem(task_problems(timeout_s=bad), "timeout", "604800")


def test_max_output_bytes_at_bound() -> None:
    """max_output_bytes at the limit passes; one over fails naming field and limit."""
    assert task_problems(max_output_bytes=L.max_output_bytes) == []
    only_problem(task_problems(max_output_bytes=L.max_output_bytes + 1),
                 "max_output_bytes", str(L.max_output_bytes))


@pytest.mark.parametrize("sign", [1, -1])
def test_priority_at_bounds(sign: int) -> None:
    """Priority of +-1000 passes; +-1001 fails naming field and range."""
    assert task_problems(priority=sign * L.priority) == []
    only_problem(task_problems(priority=sign * (L.priority + 1)), "priority", "1000")


@pytest.mark.parametrize("name", ["idempotency_key", "session_id", "node_id"])
def test_ids_at_bound_and_without_nul(name: str) -> None:
    """Ids of exactly 128 chars pass; 129 chars or a NUL fail naming the field and limit."""
    assert task_problems(**{name: "x" * L.id_chars}) == []
    only_problem(task_problems(**{name: "x" * (L.id_chars + 1)}), name, "128")
    only_problem(task_problems(**{name: "a\x00b"}), name, "NUL")


def test_max_attempts_at_bound() -> None:
    """max_attempts 10 passes; 11 fails naming retry.max_attempts and the limit."""
    assert task_problems(max_attempts=L.max_attempts) == []
    only_problem(task_problems(max_attempts=L.max_attempts + 1), "retry.max_attempts", "10")


def test_every_problem_is_reported_not_just_the_first() -> None:
    """A task wrong in several ways gets one problem per wrong field."""
    problems = task_problems(skill="", priority=5000, max_attempts=99, node_id="x" * 200)
    assert len(problems) == 4
    assert [p.split(":")[0] for p in problems] == [
        "skill", "priority", "node_id", "retry.max_attempts"]


def test_check_task_checks_labels() -> None:
    """Label problems of a task are reported under `labels`."""
    only_problem(task_problems(labels={"": "x"}), "labels:")


def test_custom_limits_are_honoured() -> None:
    """A Limits value passed in replaces the defaults."""
    tight = Limits(priority=5, id_chars=3)
    assert check_task(skill="shell", labels={}, timeout_s=1, max_output_bytes=0, priority=5,
                      idempotency_key="abc", session_id="", node_id="", max_attempts=1,
                      limits=tight) == []
    problems = check_task(skill="shell", labels={}, timeout_s=1, max_output_bytes=0,
                          priority=6, idempotency_key="abcd", session_id="", node_id="",
                          max_attempts=1, limits=tight)
    assert problems == ["priority: must be between -5 and 5",
                        "idempotency_key: at most 3 characters, no NUL"]


# -- check_labels ----------------------------------------------------------------------

def test_label_count_at_bound() -> None:
    """64 labels pass; 65 fail naming the field, the limit and the count."""
    assert check_labels({f"k{i}": "v" for i in range(L.labels)}) == []
    only_problem(check_labels({f"k{i}": "v" for i in range(L.labels + 1)}),
                 "labels:", "at most 64", "65")


def test_label_key_length_at_bound() -> None:
    """A 63-char key passes; a 64-char key fails naming the field and the limit."""
    assert check_labels({"k" * L.label_key: "v"}) == []
    only_problem(check_labels({"k" * (L.label_key + 1): "v"}), "labels:", "63")


def test_label_value_length_at_bound() -> None:
    """A 255-char value passes (so does an empty one); 256 fails naming field and limit."""
    assert check_labels({"k": "v" * L.label_value, "e": ""}) == []
    only_problem(check_labels({"k": "v" * (L.label_value + 1)}), "labels:", "'k'", "255")


@pytest.mark.parametrize("key", ["os", "a", "kubernetes.io/arch", "x-y_z.1", "9lives"])
def test_good_label_keys(key: str) -> None:
    """Keys of letters, digits, '_', '-', '.', '/' starting alphanumeric pass."""
    assert check_labels({key: "v"}) == []


@pytest.mark.parametrize("key", ["", "-os", ".os", "/os", "o s", "os=mac", "os\x00", "ös"])
def test_bad_label_keys(key: str) -> None:
    """Empty keys, keys starting with punctuation, and other characters are refused."""
    only_problem(check_labels({key: "v"}), "labels:", repr(key), "63")


@pytest.mark.parametrize("key", ["os\n", "\nos", "o\ns"])
def test_label_key_with_a_newline_is_refused(key: str) -> None:
    """A newline anywhere in a key (also at the very end) is refused."""
    only_problem(check_labels({key: "v"}), "labels:", repr(key))


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "end\n"])
def test_label_values_without_nul_or_newline(value: str) -> None:
    """A value carrying NUL or a newline is refused, naming the key."""
    only_problem(check_labels({"k": value}), "labels:", "'k'", "NUL or newline")


def test_label_field_name_is_configurable() -> None:
    """Problems are reported under the field name the caller gives."""
    only_problem(check_labels({"": "v"}, field="node.labels"), "node.labels:")


# -- check_shell -----------------------------------------------------------------------

def test_exactly_one_of_argv_or_command() -> None:
    """Giving both argv and command, or neither, is one problem saying to pick one."""
    for problems in (check_shell(["ls"], "ls", {}, b""), check_shell([], "", {}, b"")):
        only_problem(problems, "exactly one of argv", "command")


def test_empty_program_name() -> None:
    """argv[0] may not be empty."""
    only_problem(shell_problems(argv=["", "x"]), "argv[0]")


def test_argv_accepts_any_iterable() -> None:
    """argv may be a generator or a protobuf repeated field, not only a list."""
    assert check_shell(iter(["echo", "hi"]), "", {}, b"") == []
    assert check_shell((a for a in ["x" * 10]), "", {}, b"") == []


def test_command_bytes_at_bound() -> None:
    """A command string of exactly the limit in bytes passes; one byte more fails."""
    assert shell_problems(command="x" * L.command_bytes) == []
    only_problem(shell_problems(command="x" * (L.command_bytes + 1)),
                 "shell:", "65537 bytes", "limit is 65536")


def test_command_limit_counts_utf8_bytes_not_characters() -> None:
    """Multi-byte characters count by their encoded size."""
    assert shell_problems(command="é" * (L.command_bytes // 2)) == []
    only_problem(shell_problems(command="é" * (L.command_bytes // 2) + "x"), "65537 bytes")


def test_argv_bytes_at_bound_count_a_terminator_per_argument() -> None:
    """argv costs each argument's bytes plus one; exactly the limit passes, one more fails."""
    half = L.command_bytes // 2
    assert shell_problems(argv=["a" * (half - 1), "b" * (half - 1)]) == []
    only_problem(shell_problems(argv=["a" * (half - 1), "b" * half]),
                 "shell:", "65537 bytes", "65536")


@pytest.mark.parametrize("spec", [
    {"command": "echo a\x00b"},
    {"argv": ["echo", "a\x00b"]},
    {"argv": ["ec\x00ho"]},
])
def test_nul_bytes_in_the_command_are_refused(spec: dict[str, Any]) -> None:
    """A NUL byte anywhere in argv or command is refused."""
    only_problem(shell_problems(**spec), "NUL")


@pytest.mark.parametrize("key", ["A=B", "=", "", "A\x00"])
def test_env_keys_with_equals_nul_or_empty_are_refused(key: str) -> None:
    """Env names that are empty, contain '=' or NUL are refused, naming the key."""
    only_problem(shell_problems(env={key: "v"}), "shell.env", repr(key), "'='")


def test_env_value_with_nul_is_refused_but_equals_is_fine() -> None:
    """Values may contain '=', but not NUL."""
    assert shell_problems(env={"OPTS": "a=b=c"}) == []
    only_problem(shell_problems(env={"OPTS": "a\x00b"}), "shell.env", "'OPTS'")


def test_env_bytes_at_bound() -> None:
    """Env costs key + value + 2 bytes per entry; exactly the limit passes, one more fails."""
    fill = L.env_bytes - len("K") - 2
    assert shell_problems(env={"K": "v" * fill}) == []
    only_problem(shell_problems(env={"K": "v" * (fill + 1)}),
                 "shell.env", f"{L.env_bytes + 1} bytes", f"limit is {L.env_bytes}")


def test_stdin_at_bound() -> None:
    """stdin of exactly the limit passes; one byte more fails and points at attach."""
    assert shell_problems(stdin=b"x" * L.stdin_bytes) == []
    only_problem(shell_problems(stdin=b"x" * (L.stdin_bytes + 1)),
                 "shell.stdin", str(L.stdin_bytes + 1), f"limit is {L.stdin_bytes}", "attach")


_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
# Any character a protobuf string field can carry (so no lone surrogates), but NUL.
_text_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_names = st.tuples(st.sampled_from(_ALNUM), st.text(_ALNUM + "_-./", max_size=20)).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    argv=st.lists(st.text(_text_chars, max_size=30), min_size=1, max_size=8).filter(
        lambda a: a[0] != ""),
    env=st.dictionaries(_names.map(lambda n: n.upper().replace(".", "_")),
                        st.text(_text_chars, max_size=30), max_size=8),
    labels=st.dictionaries(_names, st.text("abc-._ XYZ", max_size=20), max_size=8),
)
def test_small_well_formed_specs_always_pass(
    argv: list[str], env: dict[str, str], labels: dict[str, str]
) -> None:
    """Any small spec without NUL, '=' in names or bad label characters has no problems."""
    assert check_shell(argv, "", env, b"") == []
    assert check_labels(labels) == []
