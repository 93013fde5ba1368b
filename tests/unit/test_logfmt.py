"""JSON log lines: fields, ids taken from `extra` or from the message, exceptions."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from cortex.logfmt import JsonFormatter, setup_logging

TASK = "t-01m8cd4aj0k1whf1ys32"
NODE = "n-01m8cd45avw1j6x5f0mp"


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    info = sys.exc_info() if exc else None
    rec = logging.LogRecord("cortex.hub", logging.WARNING, __file__, 1, msg, args, info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_line_is_one_json_object_with_time_level_logger_and_message() -> None:
    """The basic fields are always there; the line has no newline inside."""
    line = JsonFormatter().format(record("hello %s\nworld", "there"))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "cortex.hub"
    assert out["message"] == "hello there\nworld"
    assert out["time"].endswith("Z")
    assert "task_id" not in out


def test_ids_come_from_the_message_when_the_call_site_gives_none() -> None:
    """The first task id and node id the message names become fields."""
    out = json.loads(JsonFormatter().format(
        record("could not assign %s to %s: busy", TASK, NODE)))
    assert out["task_id"] == TASK
    assert out["node_id"] == NODE


def test_ids_and_other_extras_given_by_the_call_site_win() -> None:
    """`extra` values are kept (non-JSON ones as their repr) and beat the message."""
    out = json.loads(JsonFormatter().format(record(
        f"about {TASK}", task_id="t-given", tenant="acme", attempt=2, obj=object())))
    assert out["task_id"] == "t-given"
    assert out["tenant"] == "acme"
    assert out["attempt"] == 2
    assert out["obj"].startswith("<object object")


def test_an_exception_adds_its_type_text_and_traceback() -> None:
    """`log.exception` lines say what failed and where."""
    try:
        raise ValueError("bad frame")
    except ValueError:
        out = json.loads(JsonFormatter().format(record("reader failed", exc=True)))
    assert out["error"] == "ValueError: bad frame"
    assert "Traceback" in out["traceback"]


def test_an_unknown_format_is_refused() -> None:
    """Only text and json exist."""
    with pytest.raises(ValueError, match="pick one of text, json"):
        setup_logging(fmt="xml")
