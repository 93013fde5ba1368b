"""Task cgroups: one group per task attempt, so a kill reaches every process the task started,
including grandchildren that left its process group with setsid().

Backends (the first whose functional probe passes wins; `detect` returns None if none does):

- ``v2``: the cgroup2 mount, pure (``/sys/fs/cgroup``) or the hybrid ``unified`` one. It
  needs no controller to list and kill members: ``cgroup.kill`` (Linux 5.14+), or freeze
  with ``cgroup.freeze`` + SIGKILL each member + thaw on older kernels.
- ``v1``: the freezer hierarchy: freeze, SIGKILL each member, thaw.

Groups live under the agent's own cgroup (``<own>/<root_name>/<name>``) in every hierarchy
used, so they inherit whatever limits the agent itself runs under and never touch groups of
other software. A task is born inside its group (`Cgroup.begin_spawn`/`end_spawn` around
the fork), so even a grandchild forked at once cannot escape; `add` is the fallback.

Limits (`Limits`) are applied through the v1 memory/cpu/pids hierarchies where they are
mounted: that covers v1 hosts and the hybrid layout (whose cgroup2 mount has no
controllers). Pure-v2 limits (``memory.max``, ``cpu.max``, ``pids.max``) are the follow-up:
they need the agent to move itself into a leaf group first (the "no internal processes"
rule) and cannot be exercised on the hybrid CI machines, so `create` refuses them with a
clear error instead of silently running without them.

Everything here is synchronous file I/O on cgroupfs (microseconds per call); only
`kill_stale` waits, and it is meant for agent start-up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cortex.errors import Conflict, InvalidArgument, NotFound, Unavailable

__all__ = ["Cgroup", "CgroupManager", "Kind", "Limits"]

log = logging.getLogger(__name__)

Kind = Literal["v2", "v1"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_CPU_PERIOD_US = 100_000
# kind -> (file, frozen value, thawed value)
_FREEZE = {"v2": ("cgroup.freeze", "1", "0"), "v1": ("freezer.state", "FROZEN", "THAWED")}
_LimitFiles = Mapping[str, list[tuple[str, str, bool]]]  # controller -> (file, value, optional)
_MIN_CPU_QUOTA_US = 1_000  # the kernel refuses smaller quotas


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one task; None leaves a resource unlimited."""

    memory_bytes: int | None = None  # RAM (and RAM+swap where swap is accounted)
    cpus: float | None = None  # CPU time per wall second, in cores (0.5 = half a core)
    pids: int | None = None  # processes and threads alive at once

    def __post_init__(self) -> None:
        for field in ("memory_bytes", "pids"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise InvalidArgument(f"limit {field} must be at least 1, got {value}")
        if self.cpus is not None and not (math.isfinite(self.cpus) and self.cpus >= 0.01):
            raise InvalidArgument(f"limit cpus must be at least 0.01 cores, got {self.cpus}")

    def files(self) -> dict[str, list[tuple[str, str, bool]]]:
        """v1 controller -> [(file, value, optional)] in the order they must be written."""
        out: dict[str, list[tuple[str, str, bool]]] = {}
        if self.memory_bytes is not None:
            size = str(self.memory_bytes)
            # memsw (RAM+swap) must be >= the RAM limit, so it comes second; it exists only
            # when the kernel accounts swap.
            out["memory"] = [
                ("memory.limit_in_bytes", size, False),
                ("memory.memsw.limit_in_bytes", size, True),
            ]
        if self.cpus is not None:
            quota = max(_MIN_CPU_QUOTA_US, round(self.cpus * _CPU_PERIOD_US))
            out["cpu"] = [
                ("cpu.cfs_period_us", str(_CPU_PERIOD_US), False),
                ("cpu.cfs_quota_us", str(quota), False),
            ]
        if self.pids is not None:
            out["pids"] = [("pids.max", str(self.pids), False)]
        return out


class Cgroup:
    """One task's group: a primary directory (membership and kill) plus v1 limit directories."""

    def __init__(
        self, *, kind: Kind, path: Path, limit_paths: Sequence[Path] = (), kill_file: bool
    ) -> None:
        self._kind: Kind = kind
        self._path = path
        self._dirs = (path, *limit_paths)
        self._kill_file = kill_file

    def __repr__(self) -> str:
        return f"<Cgroup {self._kind} {self._path}>"

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dirs(self) -> tuple[Path, ...]:
        """The primary directory, then one per v1 controller that limits this group."""
        return self._dirs

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into every directory of the group."""
        for directory in self._dirs:
            try:
                _write(directory / "cgroup.procs", str(pid))
            except ProcessLookupError as exc:
                raise NotFound(f"process {pid} is gone; nothing to put in {self}") from exc
            except OSError as exc:
                raise Unavailable(f"cannot move process {pid} into {directory}: {exc}") from exc

    def begin_spawn(self) -> None:
        """Until `end_spawn`, processes the calling thread forks are born inside the group.

        This closes the race of `add` after spawn: a child that forks at once (``sh -c
        '(setsid daemon &)'``) left its daemon outside the group in 1 of 5 bare Popen runs
        here, and 9 of 10 through the event loop. On v2 membership is per process, so the
        whole agent moves in and back out (two writes, tens of microseconds on an idle host);
        on v1 only the calling thread does. Nothing may kill or freeze the group meanwhile:
        `kill` refuses while the agent is inside. (Once v2 limits exist, the agent's own
        allocations in that window would be charged to the task: revisit then, e.g. with
        clone3(CLONE_INTO_CGROUP) in a spawn helper.)
        """
        joined: list[tuple[Path, bool]] = []
        try:
            for directory, whole in self._spawn_dirs():
                _join(directory, whole)
                joined.append((directory, whole))
        except OSError as exc:
            for directory, whole in reversed(joined):
                with contextlib.suppress(OSError):
                    _join(directory.parent.parent, whole)
            raise Unavailable(f"cannot spawn inside {self}: {exc}") from exc

    def end_spawn(self) -> None:
        """Move the agent (v2) or the calling thread (v1) back to where it was."""
        for directory, whole in reversed(self._spawn_dirs()):
            home = directory.parent.parent  # groups are always <home>/<root_name>/<name>
            try:
                _join(home, whole)
            except OSError as exc:
                raise Unavailable(f"the agent cannot leave {self} for {home}: {exc}") from exc

    def _spawn_dirs(self) -> list[tuple[Path, bool]]:
        """(directory, move the whole process?): only the v2 primary needs the whole."""
        return [(d, i == 0 and self._kind == "v2") for i, d in enumerate(self._dirs)]

    def pids(self) -> list[int]:
        """Live members (zombies are not listed), in every directory of the group."""
        found: set[int] = set()
        for directory in self._dirs:
            try:
                found.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise Unavailable(f"cannot list the processes of {directory}: {exc}") from exc
        return sorted(found)

    def is_empty(self) -> bool:
        return not self.pids()

    def kill(self) -> None:
        """SIGKILL every member. Returns at once; poll `is_empty` to see them gone."""
        members = self.pids()
        if not members:
            return
        if os.getpid() in members:
            # Only possible if end_spawn() failed: killing (or freezing) now would take the
            # agent down with the task.
            raise Conflict(f"the agent itself is inside {self}; refusing to kill it")
        if self._kill_file:
            self._write_own("cgroup.kill", "1")
            _sigkill(members)  # for members only in limit dirs (half-made stale groups)
            return
        freeze, frozen, thawed = _FREEZE[self._kind]
        # Frozen members cannot fork between the listing and the kill. The freeze is not
        # awaited (the kernel may still be freezing), so callers loop until empty.
        self._write_own(freeze, frozen)
        try:
            _sigkill(self.pids())
        finally:
            self._write_own(freeze, thawed)

    def remove(self) -> None:
        """Remove every directory of the group; Conflict if processes are still inside."""
        for directory in reversed(self._dirs):
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise Conflict(f"{directory} still has processes; kill it first") from exc
                raise Unavailable(f"cannot remove {directory}: {exc}") from exc

    def _write_own(self, file: str, value: str) -> None:
        try:
            _write(self._path / file, value)
        except FileNotFoundError:
            return  # the group is already gone: nothing left to freeze or kill
        except OSError as exc:
            raise Unavailable(f"cannot write {file} of {self}: {exc}") from exc


class CgroupManager:
    """Creates task groups under ``<agent's cgroup>/<root_name>`` and sweeps stale ones."""

    def __init__(
        self, *, kind: Kind, root: Path, limit_roots: Mapping[str, Path], kill_file: bool
    ) -> None:
        self._kind: Kind = kind
        self._root = root
        self._limit_roots = dict(limit_roots)
        self._kill_file = kill_file

    def __repr__(self) -> str:
        return f"<CgroupManager {self._kind} {self._root} limits={sorted(self._limit_roots)}>"

    @classmethod
    def detect(
        cls, root_name: str = "cortex", *, kinds: Sequence[Kind] = ("v2", "v1")
    ) -> CgroupManager | None:
        """The first backend in `kinds` that works here (functional probe), else None."""
        _check_name(root_name)
        try:
            mounts = _parse_mountinfo(Path("/proc/self/mountinfo").read_text())
            own = _parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
        except OSError:
            return None
        limit_roots = {
            controller: home / root_name
            for controller in ("memory", "cpu", "pids")
            if (home := _v1_home(mounts, own, controller)) is not None
            and _probe(home / root_name, ("cgroup.procs",))
        }
        for kind in kinds:
            manager = cls._try_kind(kind, mounts, own, root_name, limit_roots)
            if manager is not None:
                return manager
        return None

    @classmethod
    def _try_kind(
        cls,
        kind: Kind,
        mounts: list[_Mount],
        own: Mapping[str, str],
        root_name: str,
        limit_roots: Mapping[str, Path],
    ) -> CgroupManager | None:
        if kind == "v2":
            home = _v2_home(mounts, own)
            needed: tuple[str, ...] = ("cgroup.procs", "cgroup.events", "cgroup.freeze")
        else:
            home = _v1_home(mounts, own, "freezer")
            needed = ("cgroup.procs", "freezer.state")
        if home is None or not _probe(home / root_name, needed):
            return None
        root = home / root_name
        kill_file = kind == "v2" and (root / "cgroup.kill").exists()
        return cls(kind=kind, root=root, limit_roots=limit_roots, kill_file=kill_file)

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def root(self) -> Path:
        return self._root

    @property
    def supported_limits(self) -> frozenset[str]:
        """Controllers `create` can limit: a subset of {"memory", "cpu", "pids"}."""
        return frozenset(self._limit_roots)

    def create(self, name: str, limits: Limits | None = None) -> Cgroup:
        """A new empty group (an empty leftover of the same name is reused)."""
        _check_name(name)
        files = limits.files() if limits is not None else {}
        missing = sorted(set(files) - set(self._limit_roots))
        if missing:
            raise InvalidArgument(
                f"this node cannot enforce {', '.join(missing)} limits: no usable v1 "
                "controller for them (pure cgroup v2 limits are not supported yet)"
            )
        group = self._group(name, [self._limit_roots[c] / name for c in files])
        try:
            _make(group, files, self._limit_roots)
        except BaseException:
            with contextlib.suppress(Conflict, Unavailable):
                group.remove()
            raise
        return group

    @property
    def enforces(self) -> frozenset[str]:
        """Which of "memory" and "cpu" `create_for_task` limits."""
        return frozenset({"memory", "cpu"} & set(self._limit_roots))

    def create_for_task(self, name: str, *, memory_bytes: int | None = None,
                        cpus: float | None = None) -> Cgroup:
        """A task's group with the limits this host can enforce (the others are left out:
        the caller checks `enforces` and falls back to rlimits)."""
        limits = Limits(
            memory_bytes=memory_bytes if "memory" in self.enforces else None,
            cpus=max(cpus, 0.01) if cpus and "cpu" in self.enforces else None,
        )
        wanted = limits.memory_bytes is not None or limits.cpus is not None
        return self.create(name, limits if wanted else None)

    def kill_stale(self, keep: Set[str], *, timeout_s: float = 5.0) -> list[str]:
        """Kill and remove groups not named in `keep` (left by a crashed agent); their names.

        Blocks up to `timeout_s` per group while the kernel finishes the kills: call it at
        start-up or through `asyncio.to_thread`. Groups that stay populated are logged and left.
        """
        names: set[str] = set()
        for root in (self._root, *self._limit_roots.values()):
            names.update(_subdirs(root))
        removed = []
        for name in sorted(names - set(keep)):
            limit_dirs = [r / name for r in self._limit_roots.values() if (r / name).is_dir()]
            group = self._group(name, limit_dirs)
            if _kill_until_empty(group, timeout_s):
                group.remove()
                removed.append(name)
            else:
                log.warning("stale cgroup %s still has processes %s; left", group, group.pids())
        return removed

    def destroy(self, *, timeout_s: float = 5.0) -> None:
        """Kill every group and remove the root folders too (uninstall, tests)."""
        self.kill_stale(set(), timeout_s=timeout_s)
        for root in (*self._limit_roots.values(), self._root):
            try:
                root.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise Unavailable(f"cannot remove {root}: {exc}") from exc

    def _group(self, name: str, limit_paths: Sequence[Path]) -> Cgroup:
        return Cgroup(
            kind=self._kind,
            path=self._root / name,
            limit_paths=limit_paths,
            kill_file=self._kill_file,
        )


def _make(group: Cgroup, files: _LimitFiles, roots: Mapping[str, Path]) -> None:
    try:
        for directory in (group.path, *(roots[c] / group.name for c in files)):
            directory.mkdir(exist_ok=True)
        for controller, entries in files.items():
            for file, value, optional in entries:
                path = roots[controller] / group.name / file
                if optional and not path.exists():
                    continue
                _write(path, value)
    except OSError as exc:
        raise Unavailable(f"cannot create cgroup {group.name!r}: {exc}") from exc
    if not group.is_empty():
        raise Conflict(f"{group} already has processes {group.pids()}; kill_stale() it first")


def _kill_until_empty(group: Cgroup, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        group.kill()
        if group.is_empty():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _sigkill(pids: Iterable[int]) -> None:
    me = os.getpid()
    for pid in pids:
        if pid != me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _join(directory: Path, whole_process: bool) -> None:
    if whole_process:
        _write(directory / "cgroup.procs", str(os.getpid()))
    else:
        _write(directory / "tasks", str(threading.get_native_id()))


def _write(path: Path, value: str) -> None:
    # One write() per value: cgroupfs parses each write on its own.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _probe(root: Path, needed: Sequence[str]) -> bool:
    """Can we create (and remove) a group under `root` that has the `needed` files?"""
    probe = root / f".probe-{os.getpid()}"
    try:
        root.mkdir(exist_ok=True)
        probe.mkdir()
        try:
            return all((probe / file).exists() for file in needed)
        finally:
            probe.rmdir()
    except OSError:
        return False


def _subdirs(root: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"cgroup name {name!r} must be 1-255 of A-Z a-z 0-9 _ . - and not start with '.' or '-'"
        )


@dataclass(frozen=True, slots=True)
class _Mount:
    point: Path
    root: str
    fstype: str
    options: frozenset[str]


def _parse_mountinfo(text: str) -> list[_Mount]:
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3:
            point, root = Path(_unescape(fields[4])), _unescape(fields[3])
            mounts.append(_Mount(point, root, tail[0], frozenset(tail[2].split(","))))
    return mounts


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the cgroup2 entry is under ""."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    return own


def _v2_home(mounts: Sequence[_Mount], own: Mapping[str, str]) -> Path | None:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or "" not in own:
        return None
    return _under(mount, own[""])


def _v1_home(mounts: Sequence[_Mount], own: Mapping[str, str], controller: str) -> Path | None:
    mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
    if mount is None or controller not in own:
        return None
    return _under(mount, own[controller])


def _under(mount: _Mount, own_path: str) -> Path:
    # Inside a container the mount's root may be our own group; paths are then relative.
    if mount.root != "/" and own_path.startswith(mount.root):
        own_path = own_path[len(mount.root) :]
    return mount.point / own_path.lstrip("/")
