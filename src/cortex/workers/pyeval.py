"""The pyeval skill: a persistent Python session, like a small Jupyter kernel.

Each call runs ``args["code"]`` in the session's one namespace, so names defined by one
call are there for the next. As in a REPL, when the last statement is an expression its
repr is the call's result text and is printed to stdout (``_`` holds the value). An
exception fails the call with its traceback on stderr and its last line as the reason; the
session lives on. KeyboardInterrupt (the node's cancel) answers CANCELLED.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import sys
import traceback
from collections import deque
from types import CodeType
from typing import Any

from google.protobuf import struct_pb2

from cortex._proto.cortex.v1 import common_pb2, worker_pb2

__all__ = ["MAX_TEXT", "Session", "open_handler"]

MAX_TEXT = 64 << 10  # characters of a result's repr kept (and printed)
_MAX_REASON = 1000  # characters of the one-line reason
_CELLS_KEPT = 100  # sources kept for tracebacks (linecache never evicts them itself)

WorkerResult = worker_pb2.WorkerResult


def open_handler() -> Session:
    return Session()


class Session:
    """One namespace, and the calls run in it."""

    def __init__(self) -> None:
        self._namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self._cells = 0
        self._sources: deque[str] = deque()

    def handle(self, args: struct_pb2.Struct) -> worker_pb2.WorkerResult:
        code = args["code"] if "code" in args else None  # noqa: SIM401 - a Struct has no get()
        if not isinstance(code, str):
            return _failed('the pyeval skill needs args {"code": "<python source>"}')
        filename = self._remember(code)
        try:
            body, last = _compile(code, filename)
        except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
            print("".join(traceback.format_exception_only(exc)), end="", file=sys.stderr)
            return _failed(_reason(exc))
        return self._run(body, last)

    def _run(self, body: CodeType, last: CodeType | None) -> worker_pb2.WorkerResult:
        try:
            exec(body, self._namespace)  # noqa: S102 - running the caller's code is the skill
            value = None if last is None else eval(last, self._namespace)  # noqa: S307
            text = "" if value is None else _capped(repr(value))
        except KeyboardInterrupt as exc:
            _print_traceback(exc)
            return WorkerResult(state=common_pb2.CANCELLED, error="interrupted")
        except SystemExit as exc:
            if exc.code in (None, 0):
                return WorkerResult(state=common_pb2.SUCCEEDED)
            _print_traceback(exc)
            return _failed(_reason(exc))
        except BaseException as exc:  # noqa: BLE001 - the code's error is the call's result
            _print_traceback(exc)
            return _failed(_reason(exc))
        if value is not None:
            self._namespace["_"] = value
            print(text)
        return WorkerResult(state=common_pb2.SUCCEEDED, text=text)

    def _remember(self, code: str) -> str:
        """A file name for this call's source, whose lines tracebacks can then show."""
        self._cells += 1
        filename = f"<pyeval-{self._cells}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        self._sources.append(filename)
        if len(self._sources) > _CELLS_KEPT:
            linecache.cache.pop(self._sources.popleft(), None)
        return filename


def _compile(code: str, filename: str) -> tuple[CodeType, CodeType | None]:
    """The code split as a REPL does: the statements, and the last one if an expression."""
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(final := tree.body[-1], ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(final.value), filename, "eval")
    return compile(tree, filename, "exec"), last


def _capped(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"... [{len(text) - MAX_TEXT} more characters cut]"


def _print_traceback(exc: BaseException) -> None:
    tb = exc.__traceback__
    # The first frame is _run's exec/eval line: the user's traceback starts below it.
    skipped = tb.tb_next if tb is not None else None
    lines = traceback.format_exception(type(exc), exc, skipped)
    print("".join(lines), end="", file=sys.stderr)


def _reason(exc: BaseException) -> str:
    """The traceback's last line, without notes: ``ZeroDivisionError: division by zero``."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(exc).strip()
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error's type
        message = "<unprintable>"
    line = f"{name}: {message}" if message else name
    line = line.splitlines()[0] if line else name
    return line if len(line) <= _MAX_REASON else line[:_MAX_REASON] + "..."


def _failed(reason: str) -> worker_pb2.WorkerResult:
    return WorkerResult(state=common_pb2.FAILED, error=reason)
