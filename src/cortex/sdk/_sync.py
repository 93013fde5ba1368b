"""`SyncClient`: the async `Client` driven from a private event loop in one owned thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack, cast

from cortex._proto.cortex.v1 import common_pb2, pki_pb2
from cortex.sdk._admin import SyncAdmin
from cortex.sdk._artifacts import Progress
from cortex.sdk._attach import Attachment
from cortex.sdk._client import Client, JoinToken, OutputCallback, Result
from cortex.sdk._config import ClientConfig, ConfigOverrides
from cortex.sdk._specs import Pairs, TaskOptions

__all__ = ["SyncAttachment", "SyncClient"]

_T = TypeVar("_T")
# After Ctrl-C, how long the caller waits for the cancelled call's cleanup (run() cancels
# its task on the hub) before the KeyboardInterrupt goes on.
_CLEANUP_GRACE_S = 5.0


class _LoopThread:
    """An event loop running in a daemon thread; runs coroutines for blocking callers."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cortex-sdk",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run `coro` on the loop and return its result; Ctrl-C cancels it."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncClient cannot be called from its own callbacks")
        call = _Call(coro)
        self._loop.call_soon_threadsafe(call.start, self._loop)
        try:
            return call.result.result()
        except KeyboardInterrupt:
            # Callbacks run in order, so call.start has run by the time this one does.
            self._loop.call_soon_threadsafe(call.cancel)
            call.finished.wait(_CLEANUP_GRACE_S)
            raise

    def close(self) -> None:
        """Cancel what still runs, stop the loop, join the thread."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _Call(Generic[_T]):
    """One coroutine run for a blocking caller: its task, outcome and completion."""

    def __init__(self, coro: Coroutine[Any, Any, _T]) -> None:
        self.coro = coro
        self.task: asyncio.Task[_T] | None = None
        self.result: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self.finished = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self.coro)
        self.task.add_done_callback(self._done)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _done(self, task: asyncio.Task[_T]) -> None:
        if task.cancelled():
            self.result.cancel()
        elif (exc := task.exception()) is not None:
            self.result.set_exception(exc)
        else:
            self.result.set_result(task.result())
        self.finished.set()


async def _cancel_all() -> None:
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


async def _next(iterator: AsyncIterator[_T]) -> tuple[bool, _T | None]:
    try:
        return True, await anext(iterator)
    except StopAsyncIteration:
        return False, None


class SyncClient:
    """Blocking twin of `Client`: same methods, iterators instead of async iterators.

    It owns a background thread and event loop; `close` (or ``with``) ends both. Output
    callbacks of `run` are called in that thread.
    """

    def __init__(
        self, config: ClientConfig | None = None, /, **overrides: Unpack[ConfigOverrides]
    ) -> None:
        self._client = Client(config, **overrides)
        self._loop: _LoopThread | None = _LoopThread()

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, then the private loop and its thread. Idempotent."""
        if self._loop is not None:
            loop, self._loop = self._loop, None
            loop.run(self._client.close())
            loop.close()

    def submit(
        self, spec: common_pb2.TaskSpec | None = None, /, **options: Unpack[TaskOptions]
    ) -> common_pb2.Task:
        return self._run(self._client.submit(spec, **options))

    def submit_many(self, specs: Iterable[common_pb2.TaskSpec]) -> list[common_pb2.Task]:
        return self._run(self._client.submit_many(specs))

    def wait_many(self, task_ids: Iterable[str]) -> Iterator[common_pb2.Task]:
        return self._iterate(self._client.wait_many(task_ids))

    def get(self, task_id: str) -> common_pb2.Task:
        return self._run(self._client.get(task_id))

    def cancel(self, task_id: str, *, reason: str = "") -> common_pb2.Task:
        return self._run(self._client.cancel(task_id, reason=reason))

    def list_tasks(
        self,
        *,
        states: Iterable[int | str] | None = None,
        node_id: str | None = None,
        labels: Pairs | None = None,
        limit: int = 100,
    ) -> list[common_pb2.Task]:
        return self._run(
            self._client.list_tasks(states=states, node_id=node_id, labels=labels, limit=limit)
        )

    def iter_tasks(
        self,
        *,
        states: Iterable[int | str] | None = None,
        node_id: str | None = None,
        labels: Pairs | None = None,
        page_size: int = 100,
    ) -> Iterator[common_pb2.Task]:
        return self._iterate(
            self._client.iter_tasks(
                states=states, node_id=node_id, labels=labels, page_size=page_size
            )
        )

    def watch(
        self,
        task_id: str,
        *,
        after_seq: int = 0,
        follow: bool = True,
        reconnect_timeout: float | None = None,
    ) -> Iterator[common_pb2.TaskEvent]:
        return self._iterate(
            self._client.watch(
                task_id, after_seq=after_seq, follow=follow, reconnect_timeout=reconnect_timeout
            )
        )

    def wait(self, task_id: str) -> common_pb2.Task:
        return self._run(self._client.wait(task_id))

    def run(
        self,
        spec: common_pb2.TaskSpec | None = None,
        /,
        *,
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        """As `Client.run`; Ctrl-C cancels the task on the hub, then raises KeyboardInterrupt."""
        return self._run(self._client.run(spec, stdout=stdout, stderr=stderr, **options))

    def attach(self, task_id: str, *, after_seq: int = 0) -> SyncAttachment:
        return SyncAttachment(self, self._client.attach(task_id, after_seq=after_seq))

    def list_nodes(
        self,
        *,
        labels: Pairs | None = None,
        skill: str | None = None,
        states: Iterable[int | str] | None = None,
    ) -> list[common_pb2.Node]:
        return self._run(self._client.list_nodes(labels=labels, skill=skill, states=states))

    def create_join_token(
        self, *, ttl: float | str = 3600.0, labels: Pairs | None = None, pool: str = ""
    ) -> JoinToken:
        return self._run(self._client.create_join_token(ttl=ttl, labels=labels, pool=pool))

    @property
    def admin(self) -> SyncAdmin:
        """Blocking twin of `Client.admin`."""
        return SyncAdmin(self._run, self._client.admin)

    # -- artifacts (see Client.upload_artifact & co.) ---------------------------------------
    def upload_artifact(self, path: str | Path, *, task_id: str = "", name: str = "",
                        media_type: str = "", ttl_s: float = 0.0,
                        progress: Progress | None = None) -> common_pb2.File:
        return self._run(self._client.upload_artifact(
            path, task_id=task_id, name=name, media_type=media_type, ttl_s=ttl_s,
            progress=progress))

    def download_artifact(self, artifact: common_pb2.File | str, dest: str | Path, *,
                          progress: Progress | None = None, resume: bool = True) -> Path:
        return self._run(self._client.download_artifact(artifact, dest, progress=progress,
                                                        resume=resume))

    def stat_artifact(self, artifact_id: str) -> common_pb2.File:
        return self._run(self._client.stat_artifact(artifact_id))

    def list_artifacts(self, task_id: str = "") -> list[common_pb2.File]:
        return self._run(self._client.list_artifacts(task_id))

    def delete_artifact(self, artifact_id: str) -> None:
        self._run(self._client.delete_artifact(artifact_id))

    def revoke_node(self, node_id: str, *, reason: str = "") -> pki_pb2.RevokeNodeResponse:
        return self._run(self._client.revoke_node(node_id, reason=reason))

    def ca_status(self) -> pki_pb2.CaStatusResponse:
        return self._run(self._client.ca_status())

    def rotate_ca(self, *, root: bool = False) -> pki_pb2.CaStatusResponse:
        return self._run(self._client.rotate_ca(root=root))

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("this SyncClient is closed; create a new one")
        return self._loop.run(coro)

    def _iterate(self, iterator: AsyncIterator[_T]) -> Iterator[_T]:
        try:
            while True:
                more, item = self._run(_next(iterator))
                if not more:
                    return
                yield cast(_T, item)  # more=True: item is a _T
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and self._loop is not None:
                self._run(aclose())


class SyncAttachment:
    """Blocking twin of `Attachment`; ``with client.attach(task_id) as att:``.

    Its methods may be called from several threads, e.g. one reading `events` while
    another sends stdin.
    """

    def __init__(self, client: SyncClient, attachment: Attachment) -> None:
        self._client = client
        self._attachment = attachment
        self.task_id = attachment.task_id

    def __enter__(self) -> Self:
        self._client._run(self._attachment.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client._run(self._attachment.aclose())

    def send_stdin(self, data: bytes) -> None:
        self._client._run(self._attachment.send_stdin(data))

    def close_stdin(self) -> None:
        self._client._run(self._attachment.close_stdin())

    def resize(self, rows: int, cols: int) -> None:
        self._client._run(self._attachment.resize(rows, cols))

    def events(self) -> Iterator[common_pb2.TaskEvent]:
        return self._client._iterate(self._attachment.events())
