"""The browser skill on a node: one Chromium per session, driven by a worker process.

A task of skill ``browser`` names its session (``TaskSpec.session_id``) and carries the
action in its args (``{"action": "click", "ref": "e12"}``, see cortex.workers.browser).
Before handing the call to the session's worker (`WorkerSkill`), the node makes sure the
session's Chromium runs - launching it, or adopting one an earlier agent left - and adds
where to find it (``_cdp``, ``_dir``, ``_policy``) to the args. The worker attaches over
CDP; so a killed worker loses nothing, and the next one re-attaches.

Two actions never reach a worker: ``close`` (kill the browser, delete the profile) and
``sessions`` (this node's sessions of the caller's tenant). Sessions idle for longer than
``idle_timeout_s`` are closed the same way, when the next browser task comes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.struct_pb2 import ListValue

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import InvalidArgument, NotFound, Unavailable
from cortex.skills.base import Outcome, OutputSink, TaskRun
from cortex.skills.browser._chromium import Chromium, remove_session_dir
from cortex.skills.browser._files import ArtifactStore, SessionFiles, discard_outbox
from cortex.skills.worker import WorkerPool, WorkerSkill

__all__ = ["BrowserPolicy", "BrowserSettings", "BrowserSkill", "session_limit"]

SESSION_MIB = 600  # Chromium (~400 MiB PSS with a page) + worker with Playwright's driver
_RESERVED_MIB = 1024  # left to the node, its tasks and the OS
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_OPENERS = ("open", "restore")  # the actions that may start a new session
_WENT_AWAY = "went away underneath"  # the worker's words for a browser gone mid-call


def session_limit(memory_mib: int) -> int:
    """How many browser sessions a node with `memory_mib` of RAM holds at once."""
    return max(1, (memory_mib - _RESERVED_MIB) // SESSION_MIB)


@dataclass(frozen=True, slots=True)
class BrowserPolicy:
    """What pages may do on this node."""

    allow_file_urls: bool = False  # file:// exposes the node's disk to whoever drives it

    def as_dict(self) -> dict[str, bool]:
        return {"allow_file_urls": self.allow_file_urls}


@dataclass(frozen=True, slots=True)
class BrowserSettings:
    """The node's browser settings, from the environment (read once, at start).

    CORTEX_CHROMIUM              the Chromium binary (default: Debian's real binary)
    CORTEX_BROWSER_SESSIONS      session limit (default: from memory, `session_limit`)
    CORTEX_BROWSER_IDLE_S        close a session idle this long (default 1800)
    CORTEX_BROWSER_FILE_URLS=1   allow file:// URLs (off: they expose the node's disk)
    """

    chromium: str = ""
    max_sessions: int = 0  # 0: from memory
    idle_timeout_s: float = 1800.0
    allow_file_urls: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str]) -> BrowserSettings:
        try:
            return cls(chromium=env.get("CORTEX_CHROMIUM", ""),
                       max_sessions=int(env.get("CORTEX_BROWSER_SESSIONS", "0")),
                       idle_timeout_s=float(env.get("CORTEX_BROWSER_IDLE_S", "1800")),
                       allow_file_urls=env.get("CORTEX_BROWSER_FILE_URLS", "") == "1")
        except ValueError as exc:
            raise InvalidArgument(f"browser settings from the environment: {exc} "
                                  "(CORTEX_BROWSER_SESSIONS is a count, "
                                  "CORTEX_BROWSER_IDLE_S seconds)") from exc


@dataclass(slots=True)
class _Session:
    key: str  # "tenant/name", as the agent scoped it
    dir: Path
    browser: Chromium | None = None
    previous: Chromium | None = None  # the browser of the last call, to notice a restart
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class BrowserSkill:
    """Skill ``browser``; see the module docstring."""

    name = "browser"

    def __init__(self, pool: WorkerPool, *, data_dir: Path, chromium: str,
                 max_sessions: int, idle_timeout_s: float = 1800.0,
                 policy: BrowserPolicy | None = None,
                 artifacts: ArtifactStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1:
            raise InvalidArgument(f"max_sessions must be at least 1, got {max_sessions}")
        if not (math.isfinite(idle_timeout_s) and idle_timeout_s > 0):
            raise InvalidArgument(f"idle_timeout_s must be > 0 seconds, got {idle_timeout_s}")
        self._worker = WorkerSkill("browser", pool)
        self._root = data_dir / "browser"
        self._chromium = chromium
        self.max_sessions = max_sessions
        self._idle_timeout_s = idle_timeout_s
        self._policy = policy or BrowserPolicy()
        self._sessions: dict[str, _Session] = {}
        self._clock = clock
        # None: the session's files stay on the node only (fetch action).
        self._files = SessionFiles(artifacts) if artifacts is not None else None
        self.capacity = {"browser_sessions": max_sessions}  # advertised in the node's hello

    async def start(self, *, task_id: str, attempt: int, spec: common_pb2.TaskSpec,
                    timeout_s: float | None, sink: OutputSink) -> TaskRun:
        if not spec.session_id:
            raise InvalidArgument("the browser skill needs a session: cortex browser open "
                                  "--session NAME, or TaskSpec.session_id")
        action = spec.args["action"] if "action" in spec.args else None  # noqa: SIM401
        if not isinstance(action, str) or not action:
            raise InvalidArgument('the browser skill needs args {"action": "<name>", ...} '
                                  "(cortex browser do SESSION ACTION ...)")
        hidden = sorted(k for k in spec.args.fields if k.startswith("_"))
        if hidden:
            raise InvalidArgument(f"browser args starting with '_' are the node's: {hidden}")
        await self._close_idle(keep=spec.session_id)
        if action == "sessions":
            return _Done(sink, self._list(spec.session_id.split("/", 1)[0]))
        session = self._sessions.get(spec.session_id)
        if action == "close":
            # Not in memory: an earlier agent may have left its browser running.
            closed = await self._close(session or self._session(spec.session_id))
            return _Done(sink, {"ok": True, "action": "close", "closed": closed})
        if session is None and action not in _OPENERS \
                and not self._session(spec.session_id).dir.exists():
            name = spec.session_id.split("/", 1)[-1]
            raise NotFound(f"no browser session {name!r} on this node: open it first "
                           f"(cortex browser open --session {name}, or the open action)")
        session = session or self._open(spec.session_id)
        async with session.lock:
            had_browser = session.browser is not None
            browser = await self._ensure_browser(session)
            session.last_used = self._clock()
        note = b""
        if had_browser and browser is not session.previous:
            note = (b"[browser session: its Chromium was gone (killed or crashed) and was "
                    b"started again with the same profile: open tabs and unsaved page state "
                    b"are lost]\n")
        session.previous = browser
        call = common_pb2.TaskSpec()
        call.CopyFrom(spec)
        call.args.update({"_cdp": browser.cdp_url, "_dir": str(session.dir),
                          "_policy": self._policy.as_dict()})
        if action == "upload" and "artifacts" in spec.args:
            await self._fetch_inputs(call, session)
        noted = _Noted(sink, note, hold_stdout=self._files is not None)
        run = await self._worker.start(task_id=task_id, attempt=attempt, spec=call,
                                       timeout_s=timeout_s, sink=_reattach_note(noted))
        publish: Publish = functools.partial(discard_outbox, session.dir)
        if self._files is not None:
            publish = functools.partial(self._files.publish, session.dir, task_id)
        return _BrowserRun(run, noted, publish,
                           gone=lambda: self._drop_dead(session, browser))

    async def _fetch_inputs(self, call: common_pb2.TaskSpec, session: _Session) -> None:
        """upload's ``artifacts`` (ids) downloaded into the session dir, added to paths."""
        if self._files is None:
            raise InvalidArgument("this node's browser skill cannot fetch artifacts: pass "
                                  "paths on the node instead")
        ids = call.args["artifacts"]
        if not isinstance(ids, ListValue):
            raise InvalidArgument("upload: artifacts is a list of artifact ids")
        paths = await self._files.fetch(session.dir, list(ids))
        paths_arg = call.args["paths"] if "paths" in call.args else None  # noqa: SIM401
        given = list(paths_arg) if isinstance(paths_arg, ListValue) else []
        del call.args["artifacts"]
        call.args.update({"paths": [*given, *paths]})

    async def aclose(self) -> None:
        """Kill every session's browser (the node is stopping; the profiles stay)."""
        if self._files is not None:
            await self._files.aclose()
        for session in list(self._sessions.values()):
            if session.browser is not None:
                await session.browser.kill()
                session.browser = None

    # --- sessions ------------------------------------------------------------------------
    def in_use(self) -> dict[str, int]:
        """Sessions whose Chromium runs now (the node's heartbeats report it)."""
        return {"browser_sessions": sum(1 for s in self._sessions.values()
                                        if s.browser is not None)}


    def _open(self, key: str) -> _Session:
        live = sum(1 for s in self._sessions.values() if s.browser is not None)
        if live >= self.max_sessions:
            raise Unavailable(
                f"this node holds its limit of {self.max_sessions} browser sessions (about "
                f"{SESSION_MIB} MiB each, from its memory): close one (cortex browser close "
                "NAME) or open the session on another node (--node/--label)")
        session = self._sessions[key] = self._session(key)
        return session

    def _session(self, key: str) -> _Session:
        safe = _UNSAFE.sub("_", key)[:80] + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
        return _Session(key=key, dir=self._root / safe, last_used=self._clock())

    async def _ensure_browser(self, session: _Session) -> Chromium:
        browser = session.browser
        if browser is not None and browser.alive():
            return browser
        session.dir.mkdir(parents=True, exist_ok=True)
        adopted = await asyncio.to_thread(Chromium.adopt, session.dir)
        session.browser = adopted or await Chromium.launch(self._chromium, session.dir)
        return session.browser

    async def _close(self, session: _Session) -> bool:
        async with session.lock:
            if session.browser is None and session.dir.exists():
                session.browser = await asyncio.to_thread(Chromium.adopt, session.dir)
            was_open = session.browser is not None
            if self._files is not None:  # a recording ends with its browser
                await self._files.forget(session.dir)
            if session.browser is not None:
                await session.browser.kill()
            session.browser = None
            self._sessions.pop(session.key, None)
            await asyncio.to_thread(remove_session_dir, session.dir)
        return was_open

    async def _drop_dead(self, session: _Session, browser: Chromium) -> None:
        """A call failed because `browser` went away underneath (killed or crashed). A killed
        Chromium can still look alive for a while as it exits; killing and reaping it here
        makes the next call start a new one, as the failure promised, instead of racing it."""
        async with session.lock:
            if session.browser is browser:
                await browser.kill()

    async def _close_idle(self, *, keep: str) -> None:
        now = self._clock()
        for session in list(self._sessions.values()):
            idle = now - session.last_used
            if session.key != keep and idle > self._idle_timeout_s and not session.lock.locked():
                await self._close(session)

    def _list(self, tenant: str) -> dict[str, object]:
        now = self._clock()
        rows = [
            {"session": key.split("/", 1)[1], "alive": bool(s.browser and s.browser.alive()),
             "idle_s": round(now - s.last_used, 1), "dir": str(s.dir)}
            for key, s in sorted(self._sessions.items()) if key.split("/", 1)[0] == tenant
        ]
        return {"ok": True, "action": "sessions", "sessions": rows,
                "limit": self.max_sessions}


class _Noted:
    """A sink that puts `note` on STDERR first (before any output, or at the end); with
    `hold_stdout`, stdout (the action's JSON result) is kept until `release`, so the
    artifacts the action produced can join it."""

    def __init__(self, sink: OutputSink, note: bytes, *, hold_stdout: bool = False) -> None:
        self._sink = sink
        self._note = note
        self._held: bytearray | None = bytearray() if hold_stdout else None

    def __call__(self, stream: int, data: bytes) -> None:
        self.flush()
        if stream == common_pb2.STDOUT and self._held is not None:
            self._held.extend(data)
            return
        self._sink(stream, data)

    def flush(self) -> None:
        if self._note:
            note, self._note = self._note, b""
            self._sink(common_pb2.STDERR, note)

    def release(self, extra: dict[str, object]) -> None:
        """Send the held stdout, with `extra` merged into its JSON result line."""
        held, self._held = bytes(self._held or b""), None
        if extra:
            held = _with_fields(held, extra)
        if held:
            self._sink(common_pb2.STDOUT, held)


def _with_fields(stdout: bytes, extra: dict[str, object]) -> bytes:
    lines = stdout.rstrip(b"\n").split(b"\n") if stdout.strip() else []
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):  # no result (the worker died): the files alone
        return stdout + (json.dumps({"ok": False, **extra}) + "\n").encode()
    result.update(extra)
    return b"\n".join([*lines[:-1], json.dumps(result).encode()]) + b"\n"


def _reattach_note(sink: OutputSink) -> OutputSink:
    """The pool says a reset session lost its state; a browser session did not (Chromium
    kept running and the new worker re-attaches), so say that instead."""

    def deliver(stream: int, data: bytes) -> None:
        if stream == common_pb2.STDERR and data.startswith(b"[browser session ") \
                and b"was reset" in data:
            why = data.split(b": its worker ", 1)[-1].split(b";", 1)[0]
            data = (b"[browser session: its worker " + why + b"; a new worker re-attached "
                    b"to the running browser: tabs, cookies and page state are kept, "
                    b"snapshot refs are not]\n")
        sink(stream, data)

    return deliver


Publish = Callable[[], Awaitable[tuple[list[dict[str, object]], str]]]


class _BrowserRun:
    """A worker run whose "state is gone" (true of pyeval) says what is true of a browser,
    and whose files are published as artifacts before it ends."""

    def __init__(self, run: TaskRun, noted: _Noted, publish: Publish | None = None, *,
                 gone: Callable[[], Awaitable[None]] | None = None) -> None:
        self._run = run
        self._noted = noted
        self._publish = publish
        self._gone = gone
        self._ended: Outcome | None = None
        self._ending = asyncio.Lock()  # wait() is awaited by more than one caller
        self.write_stdin = run.write_stdin
        self.close_stdin = run.close_stdin
        self.resize = run.resize
        self.cancel = run.cancel

    @property
    def pid(self) -> int | None:
        return self._run.pid

    @pid.setter
    def pid(self, value: int | None) -> None:
        self._run.pid = value

    async def wait(self) -> Outcome:
        async with self._ending:
            if self._ended is None:
                self._ended = await self._end()
        return self._ended

    async def _end(self) -> Outcome:
        outcome = await self._run.wait()
        self._noted.flush()
        if (self._gone is not None and outcome.state is State.FAILED
                and _WENT_AWAY in outcome.reason):
            await self._gone()
        extra: dict[str, object] = {}
        if self._publish is not None:
            rows, problems = await self._publish()
            if rows:
                extra["artifacts"] = rows
            if problems:
                extra["artifact_errors"] = problems
        self._noted.release(extra)
        if "the session's state is gone" not in outcome.reason:
            return outcome
        reason = outcome.reason.replace(
            "the session's state is gone",
            "the browser kept running: retry the action (a new worker re-attaches)")
        return Outcome(outcome.state, outcome.exit_code, reason)


class _Done:
    """A node-side action: its JSON result on stdout, then success."""

    pid: int | None = None

    def __init__(self, sink: OutputSink, result: dict[str, object]) -> None:
        self._sink = sink
        self._result: dict[str, object] | None = result

    def write_stdin(self, data: bytes) -> None:
        raise InvalidArgument("browser tasks take no stdin")

    def close_stdin(self) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass

    def cancel(self, state: State = State.CANCELLED, reason: str = "") -> None:
        pass

    async def wait(self) -> Outcome:
        if self._result is not None:  # wait() may be awaited more than once
            result, self._result = self._result, None
            self._sink(common_pb2.STDOUT, (json.dumps(result) + "\n").encode())
        return Outcome(State.SUCCEEDED, None)
