"""``python -m cortex.workers SKILL``: the loop of one worker process.

At start the protocol moves off fd 0 and fd 1 to private, non-inheritable descriptors, so
that what the skill runs - ``os.system``, a subprocess, a C library's printf - can neither
read requests nor corrupt replies: fd 0 becomes /dev/null and fd 1 a copy of fd 2, whose
bytes the node passes on as the running call's STDERR. sys.stdout and sys.stderr become
writers that send Output frames of the running call.

Two threads. The main thread runs calls, one at a time; Python runs signal handlers only
there, so it is where KeyboardInterrupt lands. The reader thread takes frames off the
pipe: it queues calls, and turns a cancel frame into a SIGINT aimed at the main thread
(``pthread_kill``, so even a blocking ``time.sleep`` wakes up). End of input means the
node is gone or closed us: a running call is interrupted and the process exits, by force
if something (a non-daemon thread of the session) holds it past a grace period.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import BinaryIO

from cortex import __version__
from cortex._proto.cortex.v1 import common_pb2, worker_pb2
from cortex.errors import CortexError
from cortex.skills._framing import PROTOCOL, read_frame_blocking, write_frame_blocking
from cortex.workers import SKILLS, Handler

_FLUSH_AT = 4096  # characters buffered before output goes out without a newline
_CHUNK = 64 << 10  # bytes of output per frame
_EXIT_GRACE_S = 5.0  # after end of input, how long a clean exit may take
_CANCELLED = common_pb2.CANCELLED


class _Interrupts:
    """When SIGINT raises KeyboardInterrupt: only while a call runs, at most once per call,
    and never inside a frame being written (a torn frame would kill the whole session)."""

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        self.armed = False
        self._deferred = False
        self._shield = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed:
            return  # between calls, or a late cancel of a call that has already ended
        if self._shield:
            self._deferred = True
            return
        self.armed = False
        raise KeyboardInterrupt

    def arm(self) -> None:
        self._deferred = False
        self.armed = True

    def disarm(self) -> None:
        self.armed = False
        self._deferred = False

    def interrupt_main(self) -> None:
        if self._main is not None:
            signal.pthread_kill(self._main, signal.SIGINT)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        if threading.get_ident() != self._main:
            yield  # signal handlers never run on other threads
            return
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
            if not self._shield and self._deferred and self.armed:
                self.disarm()
                raise KeyboardInterrupt


class _Channel:
    """Replies to the node; whole frames only, from any thread."""

    def __init__(self, fd: int, interrupts: _Interrupts) -> None:
        self._fd = fd
        self._interrupts = interrupts
        self._lock = threading.Lock()

    def send(self, reply: worker_pb2.WorkerReply) -> None:
        with self._interrupts.shielded(), self._lock:
            write_frame_blocking(self._fd, reply)


class _Output:
    """What the code writes to sys.stdout and sys.stderr, sent as Output frames.

    One buffer for both streams, flushed at a newline, at ``_FLUSH_AT`` characters and
    whenever the stream changes, so the node sees the order the code wrote in. Writing
    blocks while the node is not reading (the pipe is the bound).
    """

    def __init__(self, channel: _Channel, interrupts: _Interrupts) -> None:
        self._channel = channel
        self._interrupts = interrupts
        self._lock = threading.RLock()
        self._parts: list[str] = []
        self._size = 0
        self._stream: common_pb2.OutputStream.ValueType = common_pb2.STDOUT
        self._call_id = 0  # 0: output of a background thread between calls

    def bind(self, call_id: int) -> None:
        """Send what is pending, then label further output with `call_id`."""
        with self._interrupts.shielded(), self._lock:
            self._flush()
            self._call_id = call_id

    def write(self, stream: common_pb2.OutputStream.ValueType, text: str) -> None:
        with self._interrupts.shielded(), self._lock:
            if self._parts and stream != self._stream:
                self._flush()
            self._stream = stream
            self._parts.append(text)
            self._size += len(text)
            if "\n" in text or self._size >= _FLUSH_AT:
                self._flush()

    def flush(self) -> None:
        with self._interrupts.shielded(), self._lock:
            self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        try:
            data = text.encode("utf-8", "surrogateescape")  # bytes decoded with it go back
        except UnicodeEncodeError:
            data = text.encode("utf-8", "backslashreplace")
        for start in range(0, len(data), _CHUNK):
            out = common_pb2.Output(stream=self._stream, data=data[start : start + _CHUNK])
            self._channel.send(worker_pb2.WorkerReply(call_id=self._call_id, output=out))


class _Writer(io.TextIOBase):
    """sys.stdout or sys.stderr of a worker: text in, Output frames out."""

    encoding = "utf-8"

    def __init__(self, output: _Output, stream: common_pb2.OutputStream.ValueType,
                 name: str) -> None:
        super().__init__()
        self._output = output
        self._stream = stream
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._output.write(self._stream, text)
        return len(text)

    def flush(self) -> None:
        self._output.flush()


class _Worker:
    def __init__(self, skill: str, handler: Handler, requests: BinaryIO, channel: _Channel,
                 output: _Output, interrupts: _Interrupts) -> None:
        self._skill = skill
        self._handler = handler
        self._requests_in = requests
        self._channel = channel
        self._output = output
        self._interrupts = interrupts
        # The node sends one call at a time, so this holds at most one call (plus the end).
        self._requests: queue.SimpleQueue[worker_pb2.WorkerRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the running call id, its arming, pending cancels
        self._current = 0
        self._cancelled = 0  # a cancel that came before its call started
        self._ended = False  # end of input: calls still queued are not started

    def serve(self) -> int:
        reader = threading.Thread(target=self._read, name="cortex-worker-reader", daemon=True)
        reader.start()
        hello = worker_pb2.WorkerHello(skill=self._skill, pid=os.getpid(),
                                       version=__version__, protocol=PROTOCOL)
        try:
            self._channel.send(worker_pb2.WorkerReply(hello=hello))
            while (request := self._requests.get()) is not None:
                self._serve(request)
        except BrokenPipeError:
            return 0  # the node is gone: nobody is left to answer
        return 0

    def _serve(self, request: worker_pb2.WorkerRequest) -> None:
        self._output.bind(request.call_id)
        result = self._call(request)
        self._output.bind(0)  # the call's output goes out before its result
        self._channel.send(worker_pb2.WorkerReply(call_id=request.call_id, result=result))

    def _call(self, request: worker_pb2.WorkerRequest) -> worker_pb2.WorkerResult:
        try:
            try:
                if not self._begin(request.call_id):
                    return worker_pb2.WorkerResult(state=_CANCELLED, error="cancelled")
                return self._handler.handle(request.args)
            finally:
                self._end()
        except KeyboardInterrupt:
            return worker_pb2.WorkerResult(state=_CANCELLED, error="interrupted")
        except Exception as exc:  # noqa: BLE001 - a bug in the skill fails the call, not the session
            traceback.print_exc()
            return worker_pb2.WorkerResult(
                state=common_pb2.FAILED, error=f"the {self._skill} worker failed: {exc!r}")

    def _begin(self, call_id: int) -> bool:
        with self._lock:
            self._current = call_id
            if self._cancelled == call_id or self._ended:
                return False
            self._interrupts.arm()  # inside the lock: a cancel seeing this call finds it armed
        return True

    def _end(self) -> None:
        self._interrupts.disarm()
        with self._lock:
            self._current = 0

    def _read(self) -> None:
        try:
            while (request := read_frame_blocking(self._requests_in,
                                                  worker_pb2.WorkerRequest)) is not None:
                if request.cancel:
                    self._cancel(request.call_id)
                else:
                    self._requests.put(request)
        except (CortexError, OSError) as exc:
            os.write(2, f"cortex worker: cannot read requests: {exc}\n".encode())
        # Nobody will read answers any more: stop the running call and exit. A clean exit
        # (atexit, files flushed) ends this daemon thread too; one that does not come in
        # time (code deaf to the interrupt, a non-daemon thread of the session) is forced.
        self._requests.put(None)
        with self._lock:
            self._ended = True
            if self._current:
                self._interrupts.interrupt_main()
        time.sleep(_EXIT_GRACE_S)
        os._exit(1)

    def _cancel(self, call_id: int) -> None:
        with self._lock:
            if call_id == self._current:
                self._interrupts.interrupt_main()
            elif call_id > self._current:
                self._cancelled = call_id


def _take_protocol_fds() -> tuple[BinaryIO, int]:
    """Move the pipes to private descriptors; fd 0 reads /dev/null, fd 1 writes to fd 2."""
    requests = os.fdopen(os.dup(0), "rb")  # os.dup: not inherited by subprocesses (PEP 446)
    replies = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return requests, replies


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SKILLS:
        known = ", ".join(sorted(SKILLS))
        print(f"usage: python -m cortex.workers SKILL; SKILL is one of: {known} (got {argv})",
              file=sys.stderr)
        return 2
    skill = argv[0]
    requests, replies = _take_protocol_fds()
    # Loaded before the hello: a skill that cannot load fails the start, with its traceback
    # on stderr for the node to report.
    handler: Handler = importlib.import_module(SKILLS[skill]).open_handler()
    interrupts = _Interrupts()
    channel = _Channel(replies, interrupts)
    output = _Output(channel, interrupts)
    sys.stdout = _Writer(output, common_pb2.STDOUT, "<stdout>")
    sys.stderr = _Writer(output, common_pb2.STDERR, "<stderr>")
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin for its whole life
    interrupts.install()
    return _Worker(skill, handler, requests, channel, output, interrupts).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
