"""CortexError -> gRPC status, in one place, for every handler of the hub."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cortex import errors

log = logging.getLogger("cortex.hub")

_CODES: tuple[tuple[type[errors.CortexError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)

R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]


def status_for(exc: errors.CortexError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await fn(self, request, context)
        except errors.CortexError as exc:
            await context.abort(status_for(exc), str(exc))
            raise  # unreachable: abort raises

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except errors.CortexError as exc:
            await context.abort(status_for(exc), str(exc))
        except ExceptionGroup as group:  # from a handler's TaskGroup: report the first cause
            first = _first_cortex_error(group)
            if first is None:
                raise
            await context.abort(status_for(first), str(first))

    return wrapper


def _first_cortex_error(group: BaseExceptionGroup[BaseException]) -> errors.CortexError | None:
    for exc in group.exceptions:
        if isinstance(exc, errors.CortexError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_cortex_error(exc)
            if found is not None:
                return found
    return None
