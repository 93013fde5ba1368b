"""One session's Chromium: launched by the node, not by the worker that drives it.

Chromium runs in its own session and process group with its own profile directory and a
DevTools (CDP) port on 127.0.0.1 that Chromium picks itself (``--remote-debugging-port=0``)
and writes to ``<profile>/DevToolsActivePort``. The worker attaches over CDP, so a crash or
a kill of the worker leaves the browser - tabs, cookies, typed input - as it was.

A small ``chromium.json`` beside the profile records pid and port, so a node agent that
restarts adopts a browser that is still running instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cortex.errors import Unavailable

__all__ = ["CHROMIUM_FLAGS", "Chromium", "find_chromium", "probe_chromium"]

# Headless, no sandbox (nodes often run as root or in containers), and nothing that
# phones home: a node must work offline, so no flag or feature may reach the internet.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-pings",
    "--mute-audio",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",
    "--disable-back-forward-cache",  # a page restored from it fires no load: back() hangs
    "--window-size=1280,720",
)

# Debian's /usr/bin/chromium is a launcher script (it sources chromium.d snippets and adds
# flags); the real binary sits beside its libraries.
_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
_READY_TIMEOUT_S = 30.0
_POLL_S = 0.02


def find_chromium(configured: str = "") -> str | None:
    """The Chromium binary to run: `configured`, $CORTEX_CHROMIUM, or Debian's."""
    for path in (configured, os.environ.get("CORTEX_CHROMIUM", ""), *_CANDIDATES):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def probe_chromium(path: str | None, timeout_s: float = 20.0) -> str:
    """"" when `path` runs (``--version``), else why the browser skill is off on this node."""
    if path is None:
        return ("no Chromium found (apt-get install chromium, or set CORTEX_CHROMIUM to the "
                "binary)")
    try:
        done = subprocess.run(  # noqa: S603 - the node's configured Chromium binary
            [path, "--version"], capture_output=True, stdin=subprocess.DEVNULL,
            timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} --version failed: {exc}"
    if done.returncode != 0:
        return f"{path} --version exited {done.returncode}: {done.stderr[-300:]!r}"
    try:
        import playwright  # noqa: F401 - only whether the worker will be able to drive it
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return ""


@dataclass(slots=True)
class Chromium:
    """A running Chromium of one session."""

    pid: int
    port: int
    profile: Path
    proc: asyncio.subprocess.Process | None = None  # None when adopted after a restart

    @property
    def cdp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            return False
        try:  # killed but not reaped yet is a zombie ("Z"): gone for our purposes
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X") and (self.proc is not None or _is_chromium(self.pid))

    @classmethod
    async def launch(cls, binary: str, session_dir: Path) -> Chromium:
        """Start Chromium for the session whose files live in `session_dir`."""
        profile = session_dir / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        active = profile / "DevToolsActivePort"
        active.unlink(missing_ok=True)
        _unlock(profile)
        try:
            proc = await asyncio.create_subprocess_exec(
                binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                "about:blank",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own group: outlives the worker, killed whole
            )
        except OSError as exc:
            raise Unavailable(f"cannot start Chromium {binary}: {exc.strerror or exc}") from exc
        browser = cls(pid=proc.pid, port=0, profile=profile, proc=proc)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            port = _read_port(active)  # the file may exist while still empty: need both lines
            if port:
                browser.port = port
                break
            if proc.returncode is not None or time.monotonic() > deadline:
                await browser.kill()
                raise Unavailable(f"Chromium ({binary}) did not open its DevTools port within "
                                  f"{_READY_TIMEOUT_S:g} s (exit code {proc.returncode})")
            await asyncio.sleep(_POLL_S)
        (session_dir / "chromium.json").write_text(
            json.dumps({"pid": browser.pid, "port": browser.port}))
        return browser

    @classmethod
    def adopt(cls, session_dir: Path) -> Chromium | None:
        """The session's Chromium left running by an earlier agent, if it still answers."""
        try:
            info = json.loads((session_dir / "chromium.json").read_text())
            browser = cls(pid=int(info["pid"]), port=int(info["port"]),
                          profile=session_dir / "profile")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not browser.alive() or not _answers(browser.port):
            return None
        return browser

    async def kill(self) -> None:
        """Kill the whole process group and wait until the browser is gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()
        else:
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - not our child
                await asyncio.sleep(_POLL_S)
        (self.profile.parent / "chromium.json").unlink(missing_ok=True)


def remove_session_dir(session_dir: Path) -> None:
    shutil.rmtree(session_dir, ignore_errors=True)


def _read_port(active: Path) -> int:
    try:
        lines = active.read_text().splitlines()
    except OSError:
        return 0
    if len(lines) < 2 or not lines[0].strip().isdigit():
        return 0
    return int(lines[0])


def _unlock(profile: Path) -> None:
    """Drop the singleton lock a killed Chromium left, which would stop the next start."""
    for name in ("SingletonLock", "SingletonSocket", "SingletonCookie"):
        with contextlib.suppress(OSError):
            (profile / name).unlink()


def _is_chromium(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"--remote-debugging-port" in cmdline


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
