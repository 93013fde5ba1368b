"""The SQLite store's engine: one writer thread that owns the connection, with group commit.

Every call becomes a closure run on that thread. The thread takes all calls queued while
it was busy and runs them in ONE transaction (each inside its own SAVEPOINT, so one failing
call rolls back alone), then commits once and wakes every caller. Under load this turns N
fsyncs into one, which is what makes durable task dispatch fast; with a single caller it
costs nothing extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cortex.errors import Conflict, Unavailable
from cortex.store._sqlite_schema import MIGRATIONS

__all__ = ["SqliteWriter"]

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], Any]
_MAX_BATCH = 512


class SqliteWriter:
    """Opens (and migrates) the database on its own thread; `_call` runs an operation there."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._queue: queue.SimpleQueue[
            tuple[_Op, asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name="cortex-sqlite", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power
        # loss can lose the last transactions. FULL would fsync every group commit.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn)
        return conn

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting opener
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._run_batch(conn, batch)

    def _run_batch(
        self,
        conn: sqlite3.Connection,
        batch: list[tuple[_Op, asyncio.Future[Any], asyncio.AbstractEventLoop]],
    ) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # noqa: BLE001 - returned to that op's caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, _translate(exc)))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            err = Unavailable(f"the SQLite store failed to commit: {exc}")
            err.__cause__ = exc
            results = [(False, err)] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = {}
        for (_, fut, loop), (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, items in by_loop.items():
            # RuntimeError: that caller's loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, items)

    async def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._closed:
            raise Unavailable("the store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, fut, loop))
        return await fut


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise Conflict(f"the database is at schema version {version} but this hub knows only "
                       f"{len(MIGRATIONS)}: upgrade the hub (never point an older one at it)")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")


def _resolve_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _translate(exc: Exception) -> Exception:
    """SQLite's errors as Cortex's (the original chained); others pass through."""
    if isinstance(exc, sqlite3.IntegrityError):
        err: Exception = Conflict(f"the store refused a write that conflicts with existing "
                                  f"data: {exc}")
    elif isinstance(exc, sqlite3.Error):
        err = Unavailable(f"the SQLite store failed: {exc}")
    else:
        return exc
    err.__cause__ = exc
    return err
