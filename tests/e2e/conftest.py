"""End-to-end harness: `cortex up` as a child process, and the `cortex` CLI run against it
exactly as a user in another terminal would (only CORTEX_HOME tells it where the hub is).

One `cortex up` serves every test of a module (the `cortex` fixture); each test drives it
through `Cortex.run` / `Cortex.popen`. Every wait is bounded and none is a sleep: the
harness reads the readiness line `cortex up` prints, and polls hub state through the CLI
itself (each call is a whole process, which paces the poll).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

CORTEX_BIN = Path(sys.executable).with_name("cortex")  # the venv's console script
WAIT_S = 30.0           # bound of every wait unless a test gives its own
READY = re.compile(r"^cortex is up in .*: hub (\S+), node (\S+) connected\.")

T = TypeVar("T")


class Lines:
    """A pipe read line by line on a thread, so a test can wait for a line with a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe was closed under us
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def next(self, within: float = WAIT_S) -> str | None:
        """The next line, or None at EOF; AssertionError when none comes within `within` s."""
        try:
            line = self._lines.get(timeout=within)
        except queue.Empty:
            raise AssertionError(f"no line within {within:g} s; so far: {self.seen!r}"
                                 ) from None
        if line is not None:
            self.seen.append(line)
        return line

    def rest(self, within: float = WAIT_S) -> str:
        """Every line up to EOF, joined."""
        out = []
        while (line := self.next(within)) is not None:
            out.append(line)
        return "".join(out)


@dataclass
class Cortex:
    """A running `cortex up` (hub + local node) and the CLI pointed at it."""

    home: Path
    proc: subprocess.Popen[str]
    logs: Path
    address: str = ""           # the hub's client port, HOST:PORT
    node_id: str = ""           # the local node `cortex up` started
    children: list[subprocess.Popen[Any]] = field(default_factory=list)
    out: Lines | None = None    # what `cortex up` prints after its readiness line

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
        env["CORTEX_HOME"] = str(self.home)
        return env

    def run(self, *args: str, stdin: str | None = None, within: float = WAIT_S
            ) -> subprocess.CompletedProcess[str]:
        """`cortex ARGS` to completion (stdin: that text, else /dev/null)."""
        kwargs: dict[str, Any] = {"input": stdin} if stdin is not None \
            else {"stdin": subprocess.DEVNULL}
        return subprocess.run([str(CORTEX_BIN), *args], capture_output=True, text=True,
                              env=self.env, timeout=within, check=False, **kwargs)

    def ok(self, *args: str, within: float = WAIT_S) -> subprocess.CompletedProcess[str]:
        """`cortex ARGS`, which must exit 0."""
        done = self.run(*args, within=within)
        assert done.returncode == 0, _describe(done)
        return done

    def json(self, *args: str) -> Any:
        """The parsed stdout of `cortex ARGS --json`, which must exit 0."""
        at = args.index("--") if "--" in args else len(args)  # after `--` it is ARGV
        return json.loads(self.ok(*args[:at], "--json", *args[at:]).stdout)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """`cortex ARGS` started, not awaited; killed at teardown if still running."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen([str(CORTEX_BIN), *args], env=self.env,
                                                       **kwargs)
        self.children.append(proc)
        return proc

    @staticmethod
    def lines(stream: IO[str]) -> Lines:
        """`stream` (a child's text pipe) read line by line, each wait bounded."""
        return Lines(stream)

    @staticmethod
    def wait(proc: subprocess.Popen[Any]) -> int:
        """`proc`'s exit status; it must exit within WAIT_S."""
        return proc.wait(WAIT_S)

    def eventually(self, probe: Callable[[], T | None], what: str, *,
                   within: float = WAIT_S) -> T:
        """The first truthy result of `probe` (which runs the CLI), for at most `within` s."""
        deadline = time.monotonic() + within
        last: T | None = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
        raise AssertionError(f"not within {within:g} s: {what} (last: {last!r})")

    def up_log(self) -> str:
        return self.logs.read_text(errors="replace") if self.logs.exists() else ""


def _describe(done: subprocess.CompletedProcess[str]) -> str:
    return (f"{done.args!r} exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}")


@pytest.fixture(scope="module")
def cortex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cortex]:
    """`cortex up --port 0 --node-port 0` in a fresh CORTEX_HOME, once it says it is up;
    at teardown it must stop on SIGINT with status 0 within WAIT_S."""
    root = tmp_path_factory.mktemp("e2e")
    home, logs = root / "home", root / "up.log"
    with logs.open("wb") as log:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
        proc = subprocess.Popen([str(CORTEX_BIN), "up", "--port", "0", "--node-port", "0",
                                 "--http-port", "0"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                text=True, env={**env, "CORTEX_HOME": str(home)})
    up = Cortex(home=home, proc=proc, logs=logs)
    try:
        assert proc.stdout is not None
        up.out = Lines(proc.stdout)
        first = up.out.next()
        match = READY.match(first or "")
        assert match, f"`cortex up` said {first!r}, not that it is up:\n{up.up_log()}"
        up.address, up.node_id = match.group(1), match.group(2)
        yield up
    finally:
        for child in up.children:
            if child.poll() is None:
                child.kill()
            child.wait()
            _close_pipes(child)
        try:
            _stop(up)
        finally:
            _close_pipes(up.proc)


def _close_pipes(proc: subprocess.Popen[Any]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()


def _stop(up: Cortex) -> None:
    if up.proc.poll() is not None:
        raise AssertionError(f"`cortex up` died early ({up.proc.returncode}):\n{up.up_log()}")
    up.proc.send_signal(signal.SIGINT)
    try:
        code = up.proc.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        up.proc.wait()
        raise AssertionError(f"`cortex up` still running {WAIT_S:g} s after SIGINT:\n"
                             + up.up_log()) from None
    if up.out is not None:
        up.out.rest()  # EOF: the reader thread is done with the pipe before it is closed
    assert code == 0, f"`cortex up` exited {code} on SIGINT:\n{up.up_log()}"
